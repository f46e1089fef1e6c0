"""Re-ID training (paper §3.1, §4.1.2–4.1.3): modes id / id+attr / san-gal, AAH offline or online.

One screen of loop in `train_reid`; the per-step loss lives in `step_losses` so the
DDP test can call it directly.
"""

from __future__ import annotations

import hashlib
import logging
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn as nn

from sangal.aah.job import aah_cache_dir
from sangal.config import Config, LossConfig, dump_yaml, parse_pretrained, to_dict
from sangal.data import setup
from sangal.errors import CheckpointError, ConfigError
from sangal.models.arch import arch_for
from sangal.runtime.distributed import DistInfo, cleanup, gather_plain, gather_with_grad, init_distributed
from sangal.runtime.precision import channels_last
from sangal.store.paths import default_paths
from sangal.train.ema import WeightEMA, ema_applied
from sangal.train.loop import (
    Position,
    RunLogger,
    StopSignal,
    check_finite,
    make_optimizer,
    resume_from,
    set_lr,
    warmup_step_lr,
)

log = logging.getLogger(__name__)

AAH = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def step_losses(model: nn.Module, images: torch.Tensor, pids: torch.Tensor, attrs: torch.Tensor | None,
                aah: AAH | None, loss_cfg: LossConfig) -> dict[str, torch.Tensor]:
    """Named loss terms for one batch; triplet mining runs over the global batch under DDP."""
    from sangal.train.losses import attribute_ce, batch_hard_triplet, cross_entropy_ls

    out = model(images, aah)
    feats = gather_with_grad(out.global_features)  # (B_global, D)
    all_pids = gather_plain(pids)
    terms = {
        "id": cross_entropy_ls(out.logits, pids, loss_cfg.label_smoothing),
        "triplet": batch_hard_triplet(feats, all_pids, loss_cfg.margin),
    }
    weights = {"id": loss_cfg.id, "triplet": loss_cfg.triplet}
    if out.attr_logits is not None and attrs is not None:
        terms["attr"] = attribute_ce(out.attr_logits, attrs)
        weights["attr"] = loss_cfg.attr
    terms["total"] = sum(weights[k] * v for k, v in terms.items())
    return terms


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


class AAHSource:
    """Heat maps for a training batch: read from the offline cache or computed online (dual trace)."""

    def __init__(self, cfg: Config, records, targets, device: torch.device, paths: dict):
        self.mode = cfg.train.aah
        self.device = device
        self.attr_net = None
        self.cache = None
        self.normalize = cfg.model.aah_normalize
        self.targets_mode = cfg.train.aah_targets  # labels | predicted | agnostic (sangal.aah.modes)
        self.align = cfg.train.aah_align
        self.image_size = (cfg.data.height, cfg.data.width)
        if self.mode == "offline":
            from sangal.aah.cache import AAHCache

            self.cache = AAHCache.open(aah_cache_dir(cfg, "train"), attr_ckpt_dir=paths["attr_checkpoint"],
                                       records=records, height=cfg.data.height, width=cfg.data.width,
                                       targets=targets if self.targets_mode == "labels" else self.targets_mode,
                                       normalize=cfg.model.aah_normalize)
        else:
            from sangal.store.checkpoint import load_model

            ckpt_dir = paths["attr_checkpoint"]
            if Path(ckpt_dir).exists():
                self.attr_net, _ = load_model(ckpt_dir, expected_kind="attribute", device=str(device))
            else:
                from sangal.models.attribute_net import AttributeNet

                log.warning("no attribute checkpoint at %s: the online attribute branch starts from %s",
                            ckpt_dir, "ImageNet weights" if parse_pretrained(cfg.model.attribute_pretrained())
                            else "scratch")
                table_classes = targets_classes(cfg)
                self.attr_net = AttributeNet(table_classes, backbone=cfg.model.attribute_backbone(),
                                             pretrained=parse_pretrained(cfg.model.attribute_pretrained()),
                                             last_stride=cfg.model.last_stride).to(device)
            self.attr_net.train()

    def parameters(self):
        return list(self.attr_net.parameters()) if self.attr_net is not None else []

    def __call__(self, batch: dict, images: torch.Tensor, attrs: torch.Tensor):
        """Return (aah, extra loss terms). Online: the attribute loss is the second backward pass."""
        if self.cache is not None:
            maps = self.cache.get(batch["index"].tolist())  # computed on the un-augmented image
            if self.align and "shift" in batch:
                from sangal.aah.align import align_heatmaps

                maps = align_heatmaps(maps, batch["shift"], self.image_size)  # follow the pad-and-crop
            return tuple(m.to(self.device) for m in maps), {}
        from sangal.aah.gradcam import attribute_heatmaps_from_output
        from sangal.train.losses import attribute_ce

        out = self.attr_net(images)  # on the augmented image itself: no alignment needed
        if self.targets_mode == "agnostic":
            from sangal.aah.modes import class_agnostic_heatmaps

            maps = class_agnostic_heatmaps(
                lambda t: attribute_heatmaps_from_output(out, targets=t, normalize="none", retain_graph=True),
                self.attr_net.num_classes, images.shape[0], images.device, self.normalize)
        else:
            maps = attribute_heatmaps_from_output(out, targets=attrs if self.targets_mode == "labels" else None,
                                                  normalize=self.normalize, retain_graph=True)  # 1st backward
        return maps, {"attr_branch": attribute_ce(out.logits, attrs)}  # second backward: the loss


def targets_classes(cfg: Config) -> list[int]:
    from sangal.data.attributes import get_schema

    return get_schema("dukemtmc" if cfg.data.dataset == "dukemtmc" else "market1501", cfg.data.colour_mode).num_classes


def param_groups(model: nn.Module, aah_source: AAHSource | None, head_lr_scale: float) -> list[dict]:
    """Backbone (+ online attribute branch) parameters at the schedule's lr; the Re-ID net's new layers (BN neck,
    ID classifier, attribute heads) at ``head_lr_scale`` times it (``loop.set_lr`` honours ``lr_scale``)."""
    extra = aah_source.parameters() if aah_source else []
    if head_lr_scale == 1.0:  # one group, in the order checkpoints of earlier versions recorded
        return [{"params": list(model.parameters()) + extra}]
    backbone = [p for name, p in model.named_parameters() if name.startswith("backbone.")]
    heads = [p for name, p in model.named_parameters() if not name.startswith("backbone.")]
    return [{"params": backbone + extra, "lr_scale": 1.0}, {"params": heads, "lr_scale": float(head_lr_scale)}]


def train_reid(cfg: Config, resume: bool = False, stop_after_steps: int | None = None) -> dict:
    """Train one Re-ID variant into `<out>/reid/<mode>/`; returns the final evaluation metrics."""
    from sangal.data import IdentitySampler, ImageDataset, build_transforms
    from sangal.models.reid_net import ReIDNet
    from sangal.store.checkpoint import capture_rng_state, save_checkpoint

    info = init_distributed(cfg.train.device)
    paths = default_paths(cfg)
    run_dir = paths["reid_run"]
    torch.manual_seed(cfg.train.seed)
    mode = cfg.model.mode
    if cfg.train.aah == "online" and info.distributed:
        raise ConfigError("train.aah=online is not supported under torchrun; build the cache (sangal aah) "
                          "and use train.aah=offline")
    dataset = setup.load_reid_dataset(cfg)
    table, train_attrs = None, None
    if mode != "id":
        table = setup.load_attributes(cfg, dataset)
        train_attrs = setup.attribute_targets(table, dataset.train, "train")
    attr_classes = table.schema.num_classes if table is not None else None
    model = ReIDNet(dataset.num_train_pids, attr_classes, mode=mode, backbone=cfg.model.backbone,
                    pretrained=parse_pretrained(cfg.model.pretrained) if not resume else False,
                    last_stride=cfg.model.last_stride, extra_sigmoid=cfg.model.extra_sigmoid,
                    asam_stages=cfg.model.asam_stages, asam_gain=cfg.model.asam_gain).to(info.device)
    init_digest = shared_init_digest(model)  # paired seeds: equal across variants (checked by `sangal study`)
    model = channels_last(model, cfg.train.channels_last)
    arch = arch_for(cfg, "reid", dataset.num_train_pids, attr_classes)
    aah_source = AAHSource(cfg, dataset.train, train_attrs, info.device, paths) if mode == "san-gal" else None
    oc = cfg.optim
    optimizer = make_optimizer(param_groups(model, aah_source, oc.head_lr_scale), oc.optimizer, oc.warmup_start_lr,
                               oc.weight_decay, oc.momentum, oc.nesterov)

    ema = WeightEMA(model, cfg.train.ema) if cfg.train.ema > 0 else None  # evaluation weights (train.ema)
    last_dir = run_dir / "checkpoints" / "last"
    ckpt, pos = resume_from(last_dir, model, optimizer, arch, "reid") if resume else (None, Position())
    if ema is not None and ckpt is not None:
        ema.load(ckpt.extra_tensors, ckpt.state.get("ema"), where=str(last_dir))
    if resume and aah_source is not None and aah_source.attr_net is not None:
        _restore_attr_branch(aah_source.attr_net, last_dir, pos.global_step)
    start_epoch, start_step, global_step, history = pos.epoch, pos.step, pos.global_step, pos.history
    batch_digest = pos.extra.get("batch_digest", "") if resume else ""  # chained hash of every batch seen
    if cfg.train.freeze_bn:
        _freeze_bn(model)
    net: nn.Module = model
    if info.distributed:
        if info.device.type == "cuda" and cfg.train.sync_bn:
            net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
        net = nn.parallel.DistributedDataParallel(net, device_ids=[info.device] if info.device.type == "cuda" else None)

    sampler = IdentitySampler([r.pid for r in dataset.train], cfg.data.p, cfg.data.k, seed=cfg.train.seed,
                              rank=info.rank, world_size=info.world_size)
    transform = build_transforms(cfg.data.height, cfg.data.width, train=True, flip_p=0.0, pad=cfg.data.pad,
                                 erasing_p=cfg.data.erasing)
    loader = torch.utils.data.DataLoader(ImageDataset(dataset.train, transform, train_attrs),
                                         batch_sampler=sampler, num_workers=cfg.data.num_workers)
    total = sampler.batches_per_epoch
    steps = total if cfg.train.max_steps_per_epoch <= 0 else min(total, cfg.train.max_steps_per_epoch)
    logger = RunLogger(run_dir, enabled=info.is_main, history=history)
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(dump_yaml(cfg))
    local = cfg.data.p * cfg.data.k // info.world_size
    rank_slice = slice(info.rank * local, (info.rank + 1) * local)

    def save(epoch: int, step: int, name: str = "last") -> None:
        if not info.is_main:
            return
        state = {"epoch": epoch, "step": step, "global_step": global_step, "rng": capture_rng_state(),
                 "batch_digest": batch_digest, "init_digest": init_digest,
                 "config": to_dict(cfg), "history": logger.history, "attr_checkpoint": str(paths["attr_checkpoint"])}
        if aah_source is not None and aah_source.cache is not None:  # the weights the cached maps came from
            state["attr_checkpoint_sha256"] = aah_source.cache.manifest["checkpoint_sha256"]
        if ema is not None:
            state["ema"] = ema.state()
        if aah_source is not None and aah_source.attr_net is not None:  # online: the jointly trained branch
            attr_arch = arch_for(cfg, "attribute", attr_classes=attr_classes)
            save_checkpoint(run_dir / "checkpoints" / f"{name}_attr_branch", aah_source.attr_net, attr_arch,
                            {"global_step": global_step, "config": to_dict(cfg)})
        save_checkpoint(run_dir / "checkpoints" / name, model, arch, state, optimizer=optimizer,
                        extra=ema.tensors() if ema is not None else None)

    autocast = _autocast(cfg, info)
    scaler = torch.amp.GradScaler(info.device.type, enabled=cfg.train.amp and info.device.type == "cuda")
    stopped = False
    with StopSignal() as stop:
        for epoch in range(start_epoch, cfg.train.epochs):
            sampler.set_epoch(epoch, start_batch=start_step)
            net.train()
            if cfg.train.freeze_bn:
                _freeze_bn(model)
            from tqdm import tqdm

            bar = tqdm(total=steps, initial=start_step, desc=f"{mode} epoch {epoch + 1}/{cfg.train.epochs}",
                       disable=not info.is_main, leave=False, dynamic_ncols=True)
            for step, batch in zip(range(start_step, steps), loader):
                batch_digest = chain_digest(batch_digest, batch)
                set_lr(optimizer, warmup_step_lr(epoch + step / steps, cfg.optim.lr, cfg.optim.warmup_start_lr,
                                                 cfg.optim.warmup_epochs, cfg.optim.milestones, cfg.optim.milestone_lrs))
                images = channels_last(batch["image"].to(info.device), cfg.train.channels_last)
                pids = batch["pid"].to(info.device)
                attrs = batch["attrs"].to(info.device) if "attrs" in batch else None
                with autocast:
                    aah, extra = aah_source(batch, images, attrs) if aah_source else (None, {})
                    gen = torch.Generator().manual_seed(step_seed(cfg.train.seed, epoch, step))
                    images, aah = flip_batch(images, aah, cfg.data.flip, gen, cfg.data.p * cfg.data.k, rank_slice)
                    terms = step_losses(net, images, pids, attrs, aah, cfg.loss)
                    for name, value in extra.items():
                        terms[name] = value
                        terms["total"] = terms["total"] + cfg.loss.attr * value
                check_finite(terms, epoch, step)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(terms["total"]).backward()
                scaler.step(optimizer)
                scaler.update()
                if ema is not None:
                    ema.update(model)
                global_step += 1
                bar.update(1)
                if global_step % max(cfg.train.log_every, 1) == 0 or step == steps - 1:
                    values = {k: float(v.detach()) for k, v in terms.items()}
                    values["lr"] = optimizer.param_groups[0]["lr"]
                    logger.scalars("train", values, global_step)
                    logger.record("train", {"epoch": epoch, "step": step, "global_step": global_step, **values})
                    bar.set_postfix({k: f"{v:.3f}" for k, v in values.items() if k != "lr"})
                if stop.stop or (stop_after_steps is not None and global_step >= stop_after_steps):
                    save(epoch, step + 1)
                    stopped = True
                    break
                if cfg.train.checkpoint_every > 0 and global_step % cfg.train.checkpoint_every == 0:
                    save(epoch, step + 1)
            bar.close()
            if stopped:
                break
            start_step = 0
            save(epoch + 1, 0)
            if cfg.train.eval_every > 0 and (epoch + 1) % cfg.train.eval_every == 0 and epoch + 1 < cfg.train.epochs \
                    and info.is_main:
                with ema_applied(ema, model):
                    _evaluate_and_record(cfg, model, dataset, paths, info, logger, epoch + 1)
    if stopped:
        logger.close()
        cleanup(info)
        if stop.received is not None:
            raise KeyboardInterrupt(f"stopped by signal; resume with --resume ({last_dir})")
        return {}
    metrics = {}
    if info.is_main:
        with ema_applied(ema, model):  # with train.ema, the final checkpoint holds the weights evaluated
            save(cfg.train.epochs, 0, name="final")
            metrics = _evaluate_and_record(cfg, model, dataset, paths, info, logger, cfg.train.epochs)
        metrics["pairing"] = {"init_sha256": init_digest, "batches_sha256": batch_digest}
    logger.close()
    cleanup(info)
    return metrics


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


def _evaluate_and_record(cfg, model, dataset, paths, info: DistInfo, logger: RunLogger, epoch: int) -> dict:
    from sangal.evaluate.reid import evaluate_reid

    metrics = evaluate_reid(model, dataset, cfg, paths, info.device)
    logger.scalars("eval", {k: v for k, v in metrics.items() if isinstance(v, float)}, epoch)
    logger.record("eval", {"epoch": epoch, **metrics})
    return metrics


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


def _autocast(cfg: Config, info: DistInfo):
    if not cfg.train.amp:
        return nullcontext()
    dtype = torch.float16 if info.device.type == "cuda" else torch.bfloat16
    return torch.autocast(device_type=info.device.type, dtype=dtype)
