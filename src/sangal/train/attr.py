"""Attribute-network pretraining (the paper's offline mode: trained before the Re-ID net)."""

from __future__ import annotations

import logging

import numpy as np
import torch

from sangal.config import Config, dump_yaml, parse_pretrained, to_dict
from sangal.data import setup
from sangal.models.arch import arch_for
from sangal.runtime.distributed import resolve_device
from sangal.runtime.precision import autocast, channels_last
from sangal.store.paths import default_paths
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


class ShuffleBatchSampler:
    """Shuffled batches whose order and per-sample seeds depend only on (seed, epoch): resumable."""

    def __init__(self, n: int, batch_size: int, seed: int = 0) -> None:
        if n < batch_size:
            raise ValueError(f"{n} training images is fewer than one batch of {batch_size}")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        return self.n // self.batch_size

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 7919 + self.epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        seeds = torch.randint(0, 2**31 - 1, (self.n,), generator=g).tolist()
        for b in range(self.start_batch, len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            yield [(i, seeds[i]) for i in idx]


def train_attribute_net(cfg: Config, resume: bool = False) -> dict:
    """Train the attribute network on the train split; checkpoints in `<out>/attr/checkpoints/`."""
    from tqdm import tqdm

    from sangal.data import ImageDataset, build_transforms
    from sangal.models.attribute_net import AttributeNet
    from sangal.store.checkpoint import capture_rng_state, save_checkpoint
    from sangal.train.losses import attribute_ce, attribute_class_weights

    device = resolve_device(cfg.train.device)
    torch.manual_seed(cfg.train.seed)
    paths = default_paths(cfg)
    run_dir = paths["attr_run"]
    dataset = setup.load_reid_dataset(cfg)
    table = setup.load_attributes(cfg, dataset)
    records, targets = attribute_training_set(cfg, dataset, table)
    classes = table.schema.num_classes
    class_weights, loss_record = attribute_class_weights(cfg.attr_train.loss, targets, classes)  # from the labels
    model = AttributeNet(classes, backbone=cfg.model.attribute_backbone(),
                         pretrained=parse_pretrained(cfg.model.attribute_pretrained()) if not resume else False,
                         last_stride=cfg.model.last_stride).to(device)
    arch = arch_for(cfg, "attribute", attr_classes=classes)
    model = channels_last(model, cfg.train.channels_last)
    tc = cfg.attr_train
    optimizer = make_optimizer(list(model.parameters()), tc.optimizer, tc.lr, tc.weight_decay)
    last_dir = run_dir / "checkpoints" / "last"
    pos = resume_from(last_dir, model, optimizer, arch, "attribute")[1] if resume else Position()
    start_epoch, start_step, global_step, history = pos.epoch, pos.step, pos.global_step, pos.history
    batch_size = min(tc.batch_size, len(records))
    if batch_size < tc.batch_size:
        log.warning("only %d training images: attribute batches of %d instead of %d", len(records),
                    batch_size, tc.batch_size)
    sampler = ShuffleBatchSampler(len(records), batch_size, seed=cfg.train.seed)
    transform = build_transforms(cfg.data.height, cfg.data.width, train=True, flip_p=cfg.data.flip,
                                 pad=cfg.data.pad, erasing_p=0.0)  # erasing can delete the attribute's evidence
    loader = torch.utils.data.DataLoader(ImageDataset(records, transform, targets), batch_sampler=sampler,
                                         num_workers=cfg.data.num_workers)
    cap = tc.max_steps_per_epoch
    steps = len(sampler) if cap <= 0 else min(len(sampler), cap)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(dump_yaml(cfg))
    logger = RunLogger(run_dir, history=history)
    milestone_lrs = [tc.lr * tc.gamma ** (i + 1) for i in range(len(tc.milestones))]

    def save(epoch: int, step: int, name: str = "last") -> None:
        state = {"epoch": epoch, "step": step, "global_step": global_step, "rng": capture_rng_state(),
                 "config": to_dict(cfg), "history": logger.history, "attr_loss": loss_record}
        save_checkpoint(run_dir / "checkpoints" / name, model, arch, state, optimizer=optimizer)

    with StopSignal() as stop:
        for epoch in range(start_epoch, tc.epochs):
            sampler.set_epoch(epoch, start_batch=start_step)
            model.train()
            bar = tqdm(total=steps, initial=start_step, desc=f"attributes epoch {epoch + 1}/{tc.epochs}",
                       leave=False, dynamic_ncols=True)
            for step, batch in zip(range(start_step, steps), loader):
                set_lr(optimizer, warmup_step_lr(epoch + step / steps, tc.lr, tc.lr * 0.1, tc.warmup_epochs,
                                                 tc.milestones, milestone_lrs))
                with autocast(device, cfg.train.amp):
                    out = model(channels_last(batch["image"].to(device), cfg.train.channels_last))
                    loss = attribute_ce(out.logits, batch["attrs"].to(device), class_weights)
                check_finite({"attr": loss}, epoch, step)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                global_step += 1
                bar.update(1)
                bar.set_postfix(attr=f"{loss.item():.3f}")
                if global_step % max(cfg.train.log_every, 1) == 0 or step == steps - 1:
                    logger.scalars("train", {"attr": loss.item()}, global_step)
                    logger.record("train", {"epoch": epoch, "step": step, "attr": loss.item()})
                if stop.stop:
                    save(epoch, step + 1)
                    bar.close()
                    logger.close()
                    raise KeyboardInterrupt(f"stopped by signal; resume with --resume ({last_dir})")
                if cfg.train.checkpoint_every > 0 and global_step % cfg.train.checkpoint_every == 0:
                    save(epoch, step + 1)
            bar.close()
            start_step = 0
            save(epoch + 1, 0)
    save(tc.epochs, 0, name="final")
    metrics = evaluate_attribute_net(model, dataset, table, cfg, device)
    logger.record("eval", metrics)
    logger.close()
    return metrics


def attribute_training_set(cfg: Config, dataset, table) -> tuple[list, np.ndarray]:
    """Train images and (N, K) labels: the dataset's train split plus every labelled identity of
    ``attr_train.extra_roots`` (other sets in the same format and attribute schema)."""
    from sangal.config import with_overrides
    from sangal.errors import AttributeFileError

    records = list(dataset.train)
    targets = [setup.attribute_targets(table, dataset.train, "train")]
    for root in cfg.attr_train.extra_roots:
        extra_cfg = with_overrides(cfg, [f"data.root={root}", "data.attributes=null"])
        extra = setup.load_reid_dataset(extra_cfg)
        extra_table = setup.load_attributes(extra_cfg, extra)
        if extra_table.schema.names != table.schema.names:
            raise AttributeFileError(f"attr_train.extra_roots: {root} has attributes {extra_table.schema.names[:3]}"
                                     f"... but {cfg.data.root} has {table.schema.names[:3]}...; they must match")
        test = [r for r in list(extra.query) + list(extra.gallery) if r.raw_pid > 0]
        records += list(extra.train) + test
        targets += [setup.attribute_targets(extra_table, extra.train, "train"),
                    setup.attribute_targets(extra_table, test, "test")]
        log.info("attribute net: %d more images from %s", len(extra.train) + len(test), root)
    return records, np.concatenate(targets)


@torch.no_grad()
def evaluate_attribute_net(model, dataset, table, cfg: Config, device) -> dict:
    """mA (Lin et al.) and per-attribute accuracy on the test identities' images."""
    from sangal.metrics.attributes import mean_accuracy

    records = [r for r in list(dataset.query) + list(dataset.gallery) if r.raw_pid > 0]
    targets = setup.attribute_targets(table, records, "test")
    model.eval()
    preds = []
    for batch in setup.test_loader(records, cfg):
        _, labels = model.predict(batch["image"].to(device))
        preds.append(labels.cpu().numpy())
    pred = np.concatenate(preds)
    res = mean_accuracy(pred, targets, table.schema.num_classes)
    names = table.schema.names
    log.info("attribute net: mA %.1f%% over %d test images", 100 * res["mA"], len(records))
    return {"mA": float(res["mA"]), "accuracy": float(res["accuracy"]),
            "per_attribute": {n: {"mA": float(m), "accuracy": float(a)} for n, m, a in
                              zip(names, res["per_attribute_mA"], res["per_attribute_accuracy"])}}
