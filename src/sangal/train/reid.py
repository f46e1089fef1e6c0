"""Re-ID training (paper §3.1, §4.1.2–4.1.3): modes id / id+attr / san-gal, heat maps offline or online.

:class:`ReIDTask` is the Re-ID step on the one training loop (:mod:`sangal.train.engine`): P×K batches,
their heat maps (:mod:`sangal.train.maps`), image and maps flipped together, and the named losses of
:func:`sangal.train.losses.reid_losses`. :func:`step_losses` is the per-batch loss the DDP test calls directly.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn

from sangal.config import Config, LossConfig, dump_yaml, parse_pretrained, to_dict
from sangal.data import setup
from sangal.errors import CheckpointError, ConfigError
from sangal.evaluate.embedding import EmbedSpec
from sangal.models.arch import arch_for, build_model
from sangal.runtime.distributed import DistInfo, cleanup, gather_plain, gather_with_grad, init_distributed
from sangal.runtime.precision import channels_last
from sangal.store.paths import default_paths
from sangal.store.runs import check_resume_config
from sangal.train.ema import WeightEMA, ema_applied
from sangal.train.engine import LoopSettings, Schedule, Task, saved_optimizer, step_schedule
from sangal.train.hooks import PeriodicEvaluation
from sangal.train.lifecycle import RunOptions, run_training
from sangal.train.maps import AAHSource, uses_training_maps
from sangal.train.run_parts import Position, make_optimizer, resume_from

log = logging.getLogger(__name__)

AAH = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def step_losses(model: nn.Module, images: torch.Tensor, pids: torch.Tensor, attrs: torch.Tensor | None,
                aah: AAH | None, loss_cfg: LossConfig) -> dict[str, torch.Tensor]:
    """Named loss terms for one batch; triplet mining runs over the global batch under DDP. ``aah``: the batch's
    training maps, which ASAM takes (san-gal) and the attention-guidance term pulls toward (``loss.guide``)."""
    from sangal.train.losses import reid_losses

    guided = loss_cfg.guide > 0 and aah is not None  # maps as a training target (loss.guide), any mode
    attends = aah is not None and (model.module if hasattr(model, "module") else model).mode == "san-gal"
    out = model(images, aah if attends else None, attention=guided)
    weights = {"id": loss_cfg.id, "triplet": loss_cfg.triplet, "attr": loss_cfg.attr, "guide": loss_cfg.guide}
    return reid_losses(out, pids, attrs, weights, epsilon=loss_cfg.label_smoothing, margin=loss_cfg.margin,
                       triplet_features=gather_with_grad(out.global_features), triplet_pids=gather_plain(pids),
                       guide_maps=aah if guided else None)


def step_seed(seed: int, epoch: int, step: int) -> int:
    """Seed of the per-step generator (flip draws): a pure function of the schedule position."""
    return (seed * 1_000_003 + epoch * 100_003 + step) % (2**31 - 1)


def flip_batch(images: torch.Tensor, aah: AAH | None, p: float, generator: torch.Generator,
               global_batch: int, rank_slice: slice) -> tuple[torch.Tensor, AAH | None]:
    """Mirror images and their heat maps together (cached maps stay aligned with the image).

    Draws are made for the whole global batch and sliced, so DDP ranks flip exactly the
    samples a single process would.
    """
    draws = torch.rand(global_batch, generator=generator)
    mask = (draws[rank_slice] < p).to(images.device)  # (B,)
    if not mask.any():
        return images, aah
    images = torch.where(mask[:, None, None, None], images.flip(-1), images)
    if aah is not None:
        aah = tuple(torch.where(mask[:, None, None, None].to(a.device), a.flip(-1), a) for a in aah)
    return images, aah


def param_groups(model: nn.Module, aah_source: AAHSource | None, head_lr_scale: float) -> list[dict]:
    """Backbone (+ online attribute branch) parameters at the schedule's lr; the Re-ID net's new layers (BN neck,
    ID classifier, attribute heads) at ``head_lr_scale`` times it (``loop.set_lr`` honours ``lr_scale``)."""
    extra = aah_source.parameters() if aah_source else []
    if head_lr_scale == 1.0:  # one group, in the order checkpoints of earlier versions recorded
        return [{"params": list(model.parameters()) + extra}]
    backbone = [p for name, p in model.named_parameters() if name.startswith("backbone.")]
    heads = [p for name, p in model.named_parameters() if not name.startswith("backbone.")]
    return [{"params": backbone + extra, "lr_scale": 1.0}, {"params": heads, "lr_scale": float(head_lr_scale)}]


class ReIDTask(Task):
    """One Re-ID variant into ``<out>/reid/<mode>/``: model, heat maps, P×K loader, checkpoints, evaluation."""

    def __init__(self, cfg: Config, info: DistInfo, resume: bool,
                 before_evaluation: Callable[[], None] | None = None) -> None:
        self.cfg, self.info, self.paths = cfg, info, default_paths(cfg)
        self.before_evaluation = before_evaluation  # e.g. a study's wait for its test maps
        self.name, self.run_dir = cfg.model.mode, self.paths["reid_run"]
        torch.manual_seed(cfg.train.seed)
        self.dataset = setup.load_reid_dataset(cfg)
        maps = uses_training_maps(cfg)
        table = setup.load_attributes(cfg, self.dataset) if cfg.model.mode != "id" or maps else None
        attrs = setup.attribute_targets(table, self.dataset.train, "train") if table is not None else None
        self.arch = arch_for(cfg, "reid", self.dataset.num_train_pids,
                             table.schema.num_classes if table and cfg.model.mode != "id" else None)
        model = build_model(self.arch, parse_pretrained(cfg.model.pretrained) if not resume else False)
        model = model.to(info.device)
        self.init_digest = shared_init_digest(model)  # paired seeds: equal across variants (`sangal study`)
        self.model = channels_last(model, cfg.train.channels_last)
        self.aah_source = AAHSource(cfg, self.dataset.train, attrs, info.device, self.paths) if maps else None
        oc = cfg.optim
        self.optimizer = make_optimizer(param_groups(self.model, self.aah_source, oc.head_lr_scale), oc.optimizer,
                                        oc.warmup_start_lr, oc.weight_decay, oc.momentum, oc.nesterov)
        self.ema = WeightEMA(self.model, cfg.train.ema) if cfg.train.ema > 0 else None  # evaluation weights
        self.position = self._resume() if resume else Position()
        self.batch_digest = self.position.extra.get("batch_digest", "")  # chained hash of every batch seen
        self.net = self._wrap()
        self.sampler, self.loader = _loader(cfg, self.dataset.train, attrs, info)
        self.steps = _steps(self.sampler.batches_per_epoch, cfg.train.max_steps_per_epoch)
        local = cfg.data.p * cfg.data.k // info.world_size
        self.rank_slice = slice(info.rank * local, (info.rank + 1) * local)
        tc = cfg.train
        self.hooks = (*([self.ema] if self.ema else []),
                      PeriodicEvaluation(self.evaluate, tc.eval_every, tc.epochs, info.is_main))

    def schedule(self) -> Schedule:
        oc = self.cfg.optim
        return step_schedule(self.cfg.train.epochs, self.steps, oc.lr, oc.warmup_start_lr, oc.warmup_epochs,
                             oc.milestones, oc.milestone_lrs)

    def loop_settings(self) -> LoopSettings:
        tc = self.cfg.train
        return LoopSettings(self.info.device, tc.amp, tc.checkpoint_every, tc.log_every, self.info.is_main)

    def config_yaml(self) -> str:
        return dump_yaml(self.cfg)

    def _resume(self) -> Position:
        last_dir = self.run_dir / "checkpoints" / "last"
        ckpt, position = resume_from(last_dir, self.model, self.optimizer, self.arch, "reid")
        check_resume_config(position.extra.get("config"), to_dict(self.cfg), last_dir)
        if self.ema is not None:
            self.ema.load(ckpt.extra_tensors, ckpt.state.get("ema"), where=str(last_dir))
        if self.aah_source is not None and self.aah_source.attr_net is not None:
            _restore_attr_branch(self.aah_source.attr_net, last_dir, position.global_step)
        return position

    def _wrap(self) -> nn.Module:
        """BatchNorm frozen on request; under torchrun, (SyncBN +) DistributedDataParallel."""
        if self.cfg.train.freeze_bn:
            _freeze_bn(self.model)
        net: nn.Module = self.model
        if self.info.distributed:
            if self.info.device.type == "cuda" and self.cfg.train.sync_bn:
                net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
            device_ids = [self.info.device] if self.info.device.type == "cuda" else None
            net = nn.parallel.DistributedDataParallel(net, device_ids=device_ids)
        return net

    def batches(self, epoch: int, start: int):
        self.sampler.set_epoch(epoch, start_batch=start)
        self.net.train()
        if self.cfg.train.freeze_bn:
            _freeze_bn(self.model)
        return self.loader

    def step(self, batch, epoch: int, step: int) -> dict[str, torch.Tensor]:
        cfg, device = self.cfg, self.info.device
        self.batch_digest = chain_digest(self.batch_digest, batch)
        images = channels_last(batch["image"].to(device), cfg.train.channels_last)
        pids = batch["pid"].to(device)
        attrs = batch["attrs"].to(device) if "attrs" in batch else None
        seed = step_seed(cfg.train.seed, epoch, step)
        aah, extra = self.aah_source(batch, images, attrs, seed + 1) if self.aah_source else (None, {})
        gen = torch.Generator().manual_seed(seed)
        images, aah = flip_batch(images, aah, cfg.data.flip, gen, cfg.data.p * cfg.data.k, self.rank_slice)
        terms = step_losses(self.net, images, pids, attrs, aah, cfg.loss)
        for name, value in extra.items():  # the online attribute branch's loss: the dual trace's second backward
            terms[name] = value
            terms["total"] = terms["total"] + cfg.loss.attr * value
        return terms

    def save(self, position: Position, name: str = "last") -> None:
        from sangal.store.checkpoint import capture_rng_state, save_checkpoint

        if not self.info.is_main:
            return
        cfg, checkpoints = self.cfg, self.run_dir / "checkpoints"
        state = {"epoch": position.epoch, "step": position.step, "global_step": position.global_step,
                 "rng": capture_rng_state(), "batch_digest": self.batch_digest, "init_digest": self.init_digest,
                 "config": to_dict(cfg), "history": self.logger.history if self.logger else None,
                 "attr_checkpoint": str(self.paths["attr_checkpoint"]),
                 "embed_spec": EmbedSpec.from_config(cfg).to_dict()}  # what every test-time consumer embeds with
        if self.ema is not None:
            state["ema"] = self.ema.state()
        source = self.aah_source
        if source is not None and source.cache is not None:  # the weights the cached maps came from
            state["attr_checkpoint_sha256"] = source.cache.manifest["checkpoint_sha256"]
        if source is not None and source.attr_net is not None:  # online: the jointly trained branch
            attr_arch = arch_for(cfg, "attribute", attr_classes=self.arch["attr_classes"])
            save_checkpoint(checkpoints / f"{name}_attr_branch", source.attr_net, attr_arch,
                            {"global_step": position.global_step, "config": to_dict(cfg)})
        save_checkpoint(checkpoints / name, self.model, self.arch, state,
                        optimizer=saved_optimizer(self.optimizer, name),
                        extra=self.ema.tensors() if self.ema is not None else None)

    def log_values(self) -> dict[str, float]:
        """The learned ASAM gates (forms gated and mixed): how much guidance training takes."""
        return self.model.asam_gates()

    def final_weights(self):
        """With train.ema, the final checkpoint holds the averaged weights (those evaluated)."""
        return ema_applied(self.ema, self.model)

    def final_evaluation(self, position: Position) -> dict:
        """Scores after the last epoch and the pairing hashes (`sangal study`); {} off the main rank."""
        if not self.info.is_main:
            return {}
        metrics = self.evaluate(self.cfg.train.epochs)
        metrics["pairing"] = {"init_sha256": self.init_digest, "batches_sha256": self.batch_digest}
        return metrics

    def evaluate(self, epoch: int) -> dict:
        """Query/gallery scores of the model now (its weight EMA with train.ema), in metrics.json and TensorBoard."""
        from sangal.evaluate.reid import evaluate_predictor, training_predictor

        if self.before_evaluation is not None:
            self.before_evaluation()
        with ema_applied(self.ema, self.model):
            predictor = training_predictor(self.model, self.cfg, self.paths["attr_checkpoint"])
            metrics = evaluate_predictor(predictor, self.dataset, self.cfg, cache_root=self.paths["aah"])
        assert self.logger is not None
        self.logger.scalars("eval", {k: v for k, v in metrics.items() if isinstance(v, float)}, epoch)
        self.logger.record("eval", {"epoch": epoch, **metrics})
        return metrics


def train_reid(cfg: Config, resume: bool = False, stop_after_steps: int | None = None,
               overwrite: bool = False, before_evaluation: Callable[[], None] | None = None) -> dict:
    """Train one Re-ID variant into `<out>/reid/<mode>/`; returns the final evaluation metrics.

    The run folder, resume rule and stop are :func:`sangal.train.lifecycle.run_training`'s;
    ``before_evaluation`` is called before each evaluation (a study's runs wait there for their test maps)."""
    info = init_distributed(cfg.train.device)
    try:
        if cfg.train.aah == "online" and info.distributed:
            raise ConfigError("train.aah=online is not supported under torchrun; build the cache (sangal aah) "
                              "and use train.aah=offline")
        return run_training(lambda resume: ReIDTask(cfg, info, resume, before_evaluation),
                            default_paths(cfg)["reid_run"], RunOptions(resume, overwrite, stop_after_steps),
                            is_main=info.is_main)
    finally:
        cleanup(info)


def _loader(cfg: Config, records, attrs, info: DistInfo):
    """The identity-balanced P×K sampler (sharded under DDP) and its loader; flips are drawn per step instead."""
    from sangal.data import IdentitySampler, ImageDataset, build_transforms

    sampler = IdentitySampler([r.pid for r in records], cfg.data.p, cfg.data.k, seed=cfg.train.seed,
                              rank=info.rank, world_size=info.world_size)
    transform = build_transforms(cfg.data.height, cfg.data.width, train=True, flip_p=0.0, pad=cfg.data.pad,
                                 erasing_p=cfg.data.erasing)
    loader = torch.utils.data.DataLoader(ImageDataset(records, transform, attrs), batch_sampler=sampler,
                                         num_workers=cfg.data.num_workers)
    return sampler, loader


def _steps(per_epoch: int, cap: int) -> int:
    """Steps per epoch: the sampler's full epoch, or at most ``cap`` (> 0) of them."""
    return per_epoch if cap <= 0 else min(per_epoch, cap)


def shared_init_digest(model: nn.Module) -> str:
    """sha256 of the initial weights every mode shares (backbone, BN neck, ID classifier)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if name.startswith(("backbone.", "bottleneck.", "classifier.")):
            digest.update(name.encode() + tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def chain_digest(previous: str, batch: dict) -> str:
    """Extend the hash chain of the batch order with this batch (sample indices, crops, labels)."""
    digest = hashlib.sha256(previous.encode())
    for key in ("index", "shift", "pid"):
        if key in batch:
            digest.update(key.encode() + batch[key].cpu().numpy().tobytes())
    return digest.hexdigest()


def _restore_attr_branch(attr_net: nn.Module, last_dir: Path, global_step: int) -> None:
    """Online mode: the attribute branch is saved beside the Re-ID checkpoint, same step."""
    from sangal.store.checkpoint import load_checkpoint

    branch_dir = last_dir.parent / f"{last_dir.name}_attr_branch"
    branch = load_checkpoint(branch_dir, expected_kind="attribute")
    if branch.state.get("global_step") != global_step:
        raise CheckpointError(f"{branch_dir} is at step {branch.state.get('global_step')} but {last_dir} is at "
                              f"step {global_step}: the run was killed between the two writes; restart it")
    attr_net.load_state_dict(branch.weights)


def _freeze_bn(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
