"""The typed configuration tree: one dataclass per section, with its defaults: the paper's schedule, losses and
sizes (§4.1), except where the real-crop study set otherwise (mode id+attr; for san-gal, agnostic training maps
and the residual ASAM form; README "What the study says"). configs/market1501 and configs/dukemtmc pin the
paper's own values."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

MAX_DEFAULT_WORKERS = 4


def available_cores() -> int:
    """The CPU cores this process may use: the one core counter (DataLoader workers, image checks, a study's
    workers and their threads)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_num_workers() -> int:
    """``data.num_workers``'s default: the cores, capped at 4 (more workers than cores only thrash; more than 4
    rarely helps, and fewer avoids torch's warning)."""
    return max(1, min(MAX_DEFAULT_WORKERS, available_cores()))


@dataclass
class DataConfig:
    """Dataset, attribute labels, input size, augmentation and P×K sampling."""

    dataset: str = "market1501"  # market1501 | dukemtmc | msmt17 | cuhk03np_detected | cuhk03np_labeled | csv | folder | synthetic
    root: str = "data/market1501"  # the dataset folder or its parent (csv: the CSV file)
    attributes: str | None = None  # Lin et al. .mat; None -> <root>/<dataset>_attribute.mat style lookup
    colour_mode: str = "binary"  # binary: one head per .mat field (paper, K=27/23); merged: one colour head per body part
    height: int = 256
    width: int = 128
    flip: float = 0.5  # horizontal flip probability (image and heat maps flipped together)
    pad: int = 10  # pad-and-random-crop ("image expansion", §4.1.3)
    erasing: float = 0.5  # random erasing probability
    p: int = 16  # identities per batch
    k: int = 4  # images per identity
    num_workers: int = field(default_factory=default_num_workers)  # DataLoader workers
    test_batch_size: int = 128
    on_bad_image: str = "error"  # every image is checked once per load: error (stop, naming it) | skip (drop, list in <out>)


@dataclass
class ModelConfig:
    """Backbones and the SAN-GAL variant (paper Table 1: id, id+attr, san-gal)."""

    backbone: str = "resnet50"  # resnet18 | resnet34 | resnet50 | resnet101 | mobilenet_v2
    pretrained: str = "true"  # true (ImageNet: `sangal weights` cache, else torchvision) | false | path to .safetensors/.pth
    attr_backbone: str = ""  # the attribute net's backbone; "" = model.backbone (the paper: same structure)
    attr_pretrained: str = ""  # the attribute net's weights; "" = model.pretrained
    last_stride: int = 1
    mode: str = "id+attr"  # id | id+attr | san-gal. The default follows the real-crop study's rule
    # (docs/experiments/real/rule.json: no row beat id there; id+attr tied it). SAN-GAL: model.mode=san-gal
    extra_sigmoid: bool = False  # the second sigmoid the paper's text mentions after eq. 4
    aah_normalize: str = "max"  # per-map normalisation of heat maps before ASAM: max | minmax | none
    asam_stages: list[int] = field(default_factory=lambda: [2, 3, 4])  # ResNet stages followed by ASAM (paper: 2, 3, 4)
    asam_gain: float = 1.0  # alpha = sigmoid(gain * beta * AAH); 1 is eq. 4 (alpha in [0.5, 0.73])
    asam_form: str = "residual"  # how alpha multiplies x2 in mode san-gal: residual ((1 + alpha) / (1 + its
    # spatial mean): the real-crop study's san-gal default) | paper (eqs. 3-4) | mean1 (alpha / its spatial mean) |
    # gated | mixed (sangal.models.asam; gated/mixed start as the identity and learn how much guidance to take)

    attr_pool: bool = False  # san-gal only: pool layer4 also under the mean attribute map and append it to the
    # global feature (attribute-guided pooling after AANet, Tay et al. 2019; the embedding doubles)

    def attribute_backbone(self) -> str:
        """The attribute net's backbone: ``attr_backbone``, or ``backbone`` when that is empty."""
        return self.attr_backbone or self.backbone

    def attribute_pretrained(self) -> str:
        """The attribute net's weights: ``attr_pretrained``, or ``pretrained`` when that is empty."""
        return self.attr_pretrained or self.pretrained


@dataclass
class OptimConfig:
    """SGD with the paper's schedule (§4.1.3): warmup 3e-5 -> 1e-3, steps at epochs 5/7/15; or Adam."""

    optimizer: str = "sgd"  # sgd (the paper) | adam (Adam with L2 weight decay, as BoT/fast-reid fine-tune)
    lr: float = 1e-3
    warmup_start_lr: float = 3e-5
    warmup_epochs: float = 2.0
    milestones: list[int] = field(default_factory=lambda: [5, 7, 15])
    milestone_lrs: list[float] = field(default_factory=lambda: [5e-4, 1e-4, 3e-5])
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    head_lr_scale: float = 1.0  # lr of the layers an ImageNet backbone lacks (BN neck, ID classifier, attribute
    # heads) relative to the backbone's: new layers start from scratch, so fine-tuning usually wants them faster


@dataclass
class LossConfig:
    """Weights of the named loss terms (§4.1.2)."""

    id: float = 1.0
    triplet: float = 1.0
    attr: float = 1.0
    margin: float = 0.3
    label_smoothing: float = 0.0
    guide: float = 0.0  # beta of the attention-guidance loss (0 = off): the Re-ID net's own spatial attention at
    # stages 2-4 is pulled toward the training heat maps (attention transfer, sangal.train.losses.attention_guidance);
    # training time only, so any mode can use it and test time costs what the mode costs. 1000: Zagoruyko & Komodakis


@dataclass
class TrainConfig:
    """Re-ID training run."""

    epochs: int = 20
    aah: str = "offline"  # offline (cached heat maps from a pretrained attribute net) | online (dual-trace)
    aah_targets: str = "agnostic"  # Grad-CAM class of the training maps: agnostic (|S|, no class: no label shortcut;
    # the default, README "What the study says") | labels (the paper) | predicted (as at test time) | soft (every class weighted by its probability, as at test time) | noisy (labels with
    # classes drawn from the attribute net's held-out confusion; needs attr_train.holdout > 0). sangal.aah.modes
    aah_align: bool = True  # move cached maps with the pad-and-crop shift of their training image
    attr_checkpoint: str | None = None  # default: <out>/attr/checkpoints/final
    aah_cache: str | None = None  # default: <out>/aah
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = False  # autocast (bf16 on CPU, fp16 on CUDA); also the attribute net's training and AAH caches
    channels_last: bool = False  # channels-last tensors (fast bf16 convolutions on CPU)
    freeze_bn: bool = False  # BatchNorm in eval mode (exact DDP equivalence on CPU, where SyncBN is unavailable)
    sync_bn: bool = True  # SyncBatchNorm under DDP on CUDA
    checkpoint_every: int = 200  # steps between rolling checkpoints (also at every epoch end)
    log_every: int = 20
    eval_every: int = 0  # epochs between evaluations (0: only at the end)
    max_steps_per_epoch: int = 0  # 0 = full epochs; >0 caps steps (quick runs)
    ema: float = 0.0  # decay of a bias-corrected EMA of the Re-ID weights used for evaluation (0 = off;
    # window ~1/(1-decay) steps; sangal.train.ema). The final checkpoint holds the averaged weights.


@dataclass
class AttrTrainConfig:
    """Attribute-network pretraining (the paper's offline mode trains it first)."""

    optimizer: str = "sgd"  # sgd (momentum 0.9) | adam
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-2
    warmup_epochs: float = 1.0
    warmup_start_factor: float = 0.1  # the warmup starts at this fraction of lr
    milestones: list[int] = field(default_factory=lambda: [6, 9])
    gamma: float = 0.1
    weight_decay: float = 5e-4
    max_steps_per_epoch: int = 0  # 0 = full epochs (independent of train.max_steps_per_epoch)
    loss: str = "ce"  # ce (the paper's plain cross-entropy) | balanced (DeepMAR: class c weighs exp(1 - its ratio
    # in the training labels); sangal.train.losses.balanced_class_weights)
    holdout: float = 0.0  # identities kept out of training; their confusion is what train.aah_targets=noisy draws from
    extra_roots: list[str] = field(default_factory=list)  # more labelled sets of data.dataset's format: all their
    # identities join the attribute net's training images (never the Re-ID net's); e.g. a larger synthetic set


@dataclass
class EvalConfig:
    """Retrieval evaluation."""

    metric: str = "cosine"  # cosine | euclidean
    flip: bool = True  # average the features of each image and its mirror; recorded with the checkpoint, which every
    # test-time consumer then follows (sangal.evaluate.embedding)
    rerank: bool = False  # k-reciprocal re-ranking (Zhong et al. 2017)
    k1: int = 20
    k2: int = 6
    lambda_value: float = 0.3
    max_rank: int = 50
    # same-id gallery images from the query's camera: exclude (standard protocol) | keep |
    # auto (exclude, unless query and gallery share one single camera, where exclude would skip every query)
    same_camera: str = "auto"
    aah: str = "exact"  # test-time heat maps: exact (Grad-CAM backward) | fast (forward only; needs `sangal distill`)


@dataclass
class DistillConfig:
    """`sangal distill`: the layer2/layer3 map predictor of eval.aah=fast, fitted to the train AAH cache."""

    epochs: int = 15
    lr: float = 1e-3  # Adam
    batch_size: int = 64
    hidden: int = 64  # width of each stage head's 3x3 context branch
    val_fraction: float = 0.1  # training images held out to report map agreement
    patience: int = 2  # stop once held-out agreement has not improved for this many epochs, keep the best epoch's
    # weights (0: run every epoch; benchmarks/distill_cost.py)
    min_delta: float = 2e-3  # the least rise of held-out Pearson r that counts as an improvement


@dataclass
class StudyConfig:
    """`sangal study`: how its Re-ID runs are scheduled (never what they compute: a run's figures depend on its
    torch threads, which study.json's environment records)."""

    workers: int = 1  # runs side by side, each in a spawned process with cores // workers torch threads; 1: one at
    # a time in this process at its threads; 0: auto (min(2, cores) on CPU, 1 on CUDA; the demo's)


@dataclass
class Config:
    """Root of the configuration tree."""

    out: str = "runs/run"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    attr_train: AttrTrainConfig = field(default_factory=AttrTrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    study: StudyConfig = field(default_factory=StudyConfig)


