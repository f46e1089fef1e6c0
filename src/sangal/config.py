"""Typed configuration: a dataclass tree loaded from YAML with dotted CLI overrides.

This is the only module that parses configuration. The library takes explicit
arguments; `cli.py` resolves a `Config` once and passes its parts down.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sangal.errors import ConfigError


def _available_cores(cap: int) -> int:
    """CPU cores this process may use, at most ``cap`` (more workers than cores only thrash)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cap, cores))


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
    num_workers: int = field(default_factory=lambda: _available_cores(cap=4))  # DataLoader workers
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
    mode: str = "san-gal"  # id | id+attr | san-gal
    extra_sigmoid: bool = False  # the second sigmoid the paper's text mentions after eq. 4
    aah_normalize: str = "max"  # per-map normalisation of heat maps before ASAM: max | minmax | none
    asam_stages: list[int] = field(default_factory=lambda: [2, 3, 4])  # ResNet stages followed by ASAM (paper: 2, 3, 4)
    asam_gain: float = 1.0  # alpha = sigmoid(gain * beta * AAH); 1 is eq. 4 (alpha in [0.5, 0.73])

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


@dataclass
class TrainConfig:
    """Re-ID training run."""

    epochs: int = 20
    aah: str = "offline"  # offline (cached heat maps from a pretrained attribute net) | online (dual-trace)
    aah_targets: str = "labels"  # Grad-CAM class of the training maps: labels (the paper; default, the better one
    # from ImageNet) | predicted (as at test time; better with a weak attribute net) | agnostic (|S|; sangal.aah.modes).
    # README "What the study says"
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
    milestones: list[int] = field(default_factory=lambda: [6, 9])
    gamma: float = 0.1
    weight_decay: float = 5e-4
    max_steps_per_epoch: int = 0  # 0 = full epochs (independent of train.max_steps_per_epoch)
    extra_roots: list[str] = field(default_factory=list)  # more labelled sets of data.dataset's format: all their
    # identities join the attribute net's training images (never the Re-ID net's); e.g. a larger synthetic set


@dataclass
class EvalConfig:
    """Retrieval evaluation."""

    metric: str = "cosine"  # cosine | euclidean
    flip: bool = True  # average the features of each image and its mirror
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


@dataclass
class Config:
    """Root of the configuration tree."""

    name: str = "run"
    out: str = "runs/run"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    attr_train: AttrTrainConfig = field(default_factory=AttrTrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)


#: Valid backbone names (the table sangal.models.backbone.BACKBONES; checked equal by its tests).
BACKBONE_CHOICES = ("resnet18", "resnet34", "resnet50", "resnet101", "mobilenet_v2")

CHOICES: dict[str, tuple[str, ...]] = {
    "data.dataset": ("market1501", "dukemtmc", "msmt17", "cuhk03np_detected", "cuhk03np_labeled", "csv", "folder",
                     "synthetic"),
    "data.on_bad_image": ("error", "skip"),
    "data.colour_mode": ("binary", "merged"),
    "model.backbone": BACKBONE_CHOICES,
    "model.attr_backbone": ("", *BACKBONE_CHOICES),
    "model.mode": ("id", "id+attr", "san-gal"),
    "optim.optimizer": ("sgd", "adam"),
    "attr_train.optimizer": ("sgd", "adam"),
    "model.aah_normalize": ("max", "minmax", "none"),
    "train.aah": ("offline", "online"),
    "train.aah_targets": ("labels", "predicted", "agnostic"),
    "eval.metric": ("cosine", "euclidean"),
    "eval.aah": ("exact", "fast"),
    "eval.same_camera": ("auto", "exclude", "keep"),
}


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML/CLI value to the annotated type, or raise ConfigError naming the key."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin is list:
        if isinstance(value, str):
            value = yaml.safe_load(value) if value.strip().startswith("[") else value.split(",")
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, args[0], key) for v in value]
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("true", "yes", "1", "on"):
                return True
            if text in ("false", "no", "0", "off"):
                return False
            raise ValueError(value)
        if tp is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if tp is float:
            return float(value)
        if tp is str:
            return str(value).lower() if isinstance(value, bool) else str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: expected {getattr(tp, '__name__', tp)}, got {value!r}") from None
    return value


def _elsewhere(key: str, prefix: str) -> str:
    """' — did you mean optim.lr?' when ``key`` exists in another section (e.g. train.lr)."""
    if not prefix:
        return ""
    sections = {name: tp for name, tp in typing.get_type_hints(Config).items() if dataclasses.is_dataclass(tp)}
    found = [f"{name}.{key}" for name, tp in sections.items()
             if key in {f.name for f in dataclasses.fields(tp)}]
    return f" — did you mean {' or '.join(found)}?" if found else ""


def _apply(obj: Any, values: dict, prefix: str, source: str) -> None:
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            hint = _elsewhere(key, prefix)
            raise ConfigError(f"{source}: unknown key '{dotted}'{hint} "
                              f"(valid: {', '.join(sorted(prefix + n for n in names))})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: '{dotted}' is a section; give it keys, not {value!r}")
            _apply(current, value, dotted + ".", source)
        else:
            setattr(obj, key, _coerce(value, hints[key], dotted))


def validate(cfg: Config) -> Config:
    """Check choice-valued keys and simple ranges; raise ConfigError naming the key."""
    for dotted, allowed in CHOICES.items():
        section, key = dotted.split(".")
        value = getattr(getattr(cfg, section), key)
        if value not in allowed:
            raise ConfigError(f"{dotted}={value!r} is not one of: {', '.join(allowed)}")
    if cfg.data.p < 2 or cfg.data.k < 2:
        raise ConfigError("data.p and data.k must be >= 2 (triplet mining needs positives and negatives)")
    if len(cfg.optim.milestones) != len(cfg.optim.milestone_lrs):
        raise ConfigError("optim.milestones and optim.milestone_lrs must have the same length")
    if not cfg.model.asam_stages or any(s not in (2, 3, 4) for s in cfg.model.asam_stages) \
            or len(set(cfg.model.asam_stages)) != len(cfg.model.asam_stages):
        raise ConfigError(f"model.asam_stages={cfg.model.asam_stages} must list distinct stages among 2, 3, 4")
    if not 0.0 <= cfg.train.ema < 1.0:
        raise ConfigError(f"train.ema={cfg.train.ema} must be in [0, 1) (0 turns the weight EMA off)")
    if cfg.data.height < 32 or cfg.data.width < 16:
        raise ConfigError(f"data.height/width ({cfg.data.height}x{cfg.data.width}) must be at least 32x16")
    return cfg


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b=value`` into its key path and YAML-parsed value."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.key=value (e.g. optim.lr=1e-3)")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the YAML file (which may name a `base:` file), then dotted overrides."""
    cfg = Config()
    if path is not None:
        for layer_path, layer in _read_yaml_chain(Path(path)):
            _apply(cfg, layer, "", str(layer_path))
    _apply_overrides(cfg, overrides)
    return validate(cfg)


def with_overrides(cfg: Config, overrides: list[str] | tuple[str, ...]) -> Config:
    """A copy of ``cfg`` with dotted overrides applied (``cfg`` is left as it is)."""
    out = from_dict(to_dict(cfg))
    _apply_overrides(out, overrides)
    return validate(out)


def _apply_overrides(cfg: Config, overrides: list[str] | tuple[str, ...]) -> None:
    for text in overrides:
        keys, value = parse_override(text)
        nested: Any = value
        for key in reversed(keys):
            nested = {key: nested}
        _apply(cfg, nested, "", f"override '{text}'")


def _read_yaml_chain(path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[Path, dict]]:
    """Read a YAML file and the chain of `base:` files it extends (base first)."""
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    if path.resolve() in seen:
        raise ConfigError(f"config file {path} extends itself through 'base:'")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections")
    base = data.pop("base", None)
    chain: list[tuple[Path, dict]] = []
    if base:
        chain = _read_yaml_chain((path.parent / base), seen + (path.resolve(),))
    return chain + [(path, data)]


def to_dict(cfg: Config) -> dict:
    """The resolved configuration as plain data (saved next to every run and checkpoint)."""
    return dataclasses.asdict(cfg)


def from_dict(data: dict) -> Config:
    """Rebuild a Config from `to_dict` output (e.g. a checkpoint's state.json)."""
    cfg = Config()
    _apply(cfg, data, "", "saved config")
    return validate(cfg)


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def parse_pretrained(value: str) -> bool | str:
    """`true`/`false` or a local weights path (config strings are kept as written)."""
    text = str(value).strip()
    if text.lower() in ("true", "yes", "1"):
        return True
    if text.lower() in ("false", "no", "0", "none", ""):
        return False
    return text
