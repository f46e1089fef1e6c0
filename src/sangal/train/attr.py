"""Attribute-network pretraining (the paper's offline mode: trained before the Re-ID net), on the one loop."""

from __future__ import annotations

import logging

import numpy as np
import torch

from sangal.config import Config, dump_yaml, parse_pretrained, to_dict
from sangal.data import setup
from sangal.models.arch import arch_for, build_model
from sangal.runtime.distributed import resolve_device
from sangal.runtime.precision import channels_last
from sangal.store.paths import default_paths
from sangal.store.runs import check_resume_config
from sangal.train.engine import LoopSettings, Schedule, Task, saved_optimizer, step_schedule
from sangal.train.lifecycle import RunOptions, run_training
from sangal.train.losses import attribute_class_weights
from sangal.train.run_parts import Position, make_optimizer, resume_from

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


class AttrTask(Task):
    """Attribute-network pretraining into ``<out>/attr/``: shuffled batches, one cross-entropy per attribute."""

    name = "attributes"

    def __init__(self, cfg: Config, device: torch.device, resume: bool) -> None:
        from sangal.data import ImageDataset, build_transforms

        self.cfg, self.device = cfg, device
        torch.manual_seed(cfg.train.seed)
        self.run_dir = default_paths(cfg)["attr_run"]
        self.dataset = setup.load_reid_dataset(cfg)
        self.table = setup.load_attributes(cfg, self.dataset)
        records, targets, identities = attribute_training_set(cfg, self.dataset, self.table)
        held = hold_out(identities, cfg.attr_train.holdout, cfg.train.seed)
        self.held = ([r for r, h in zip(records, held) if h], targets[held])
        records, targets = [r for r, h in zip(records, held) if not h], targets[~held]
        # the loss's class weights (attr_train.loss) from the labels actually trained on
        self.class_weights, self.loss_record = attribute_class_weights(cfg.attr_train.loss, targets,
                                                                       self.table.schema.num_classes)
        self.arch = arch_for(cfg, "attribute", attr_classes=self.table.schema.num_classes)
        model = build_model(self.arch, parse_pretrained(cfg.model.attribute_pretrained()) if not resume else False)
        self.model = channels_last(model.to(device), cfg.train.channels_last)
        tc = cfg.attr_train
        self.optimizer = make_optimizer(list(self.model.parameters()), tc.optimizer, tc.lr, tc.weight_decay)
        last = self.run_dir / "checkpoints" / "last"
        self.position = resume_from(last, self.model, self.optimizer, self.arch, "attribute")[1] if resume \
            else Position()
        if resume:
            check_resume_config(self.position.extra.get("config"), to_dict(cfg), last)
        batch_size = min(tc.batch_size, len(records))
        if batch_size < tc.batch_size:
            log.warning("only %d training images: attribute batches of %d instead of %d", len(records),
                        batch_size, tc.batch_size)
        self.sampler = ShuffleBatchSampler(len(records), batch_size, seed=cfg.train.seed)
        transform = build_transforms(cfg.data.height, cfg.data.width, train=True, flip_p=cfg.data.flip,
                                     pad=cfg.data.pad, erasing_p=0.0)  # erasing can delete the attribute's evidence
        self.loader = torch.utils.data.DataLoader(ImageDataset(records, transform, targets),
                                                  batch_sampler=self.sampler, num_workers=cfg.data.num_workers)
        cap = tc.max_steps_per_epoch
        self.steps = len(self.sampler) if cap <= 0 else min(len(self.sampler), cap)

    def loop_settings(self) -> LoopSettings:
        tc = self.cfg.train
        return LoopSettings(self.device, tc.amp, tc.checkpoint_every, tc.log_every)

    def config_yaml(self) -> str:
        return dump_yaml(self.cfg)

    def schedule(self) -> Schedule:
        """Warmup from ``warmup_start_factor`` x lr, then lr x gamma^i from the i-th milestone."""
        tc = self.cfg.attr_train
        milestone_lrs = [tc.lr * tc.gamma ** (i + 1) for i in range(len(tc.milestones))]
        return step_schedule(tc.epochs, self.steps, tc.lr, tc.lr * tc.warmup_start_factor, tc.warmup_epochs,
                             tc.milestones, milestone_lrs)

    def batches(self, epoch: int, start: int):
        self.sampler.set_epoch(epoch, start_batch=start)
        self.model.train()
        return self.loader

    def step(self, batch, epoch: int, step: int) -> dict[str, torch.Tensor]:
        from sangal.train.losses import attribute_ce

        out = self.model(channels_last(batch["image"].to(self.device), self.cfg.train.channels_last))
        loss = attribute_ce(out.logits, batch["attrs"].to(self.device), self.class_weights)
        return {"attr": loss, "total": loss}

    def save(self, position: Position, name: str = "last") -> None:
        """The checkpoint; ``final`` also records the held-out confusion (:func:`held_out`)."""
        from sangal.store.checkpoint import capture_rng_state, save_checkpoint

        extra = held_out(self, self.cfg, self.device) if name == "final" else {}  # draws RNG: before the capture
        state = {"epoch": position.epoch, "step": position.step, "global_step": position.global_step,
                 "rng": capture_rng_state(), "config": to_dict(self.cfg),
                 "history": self.logger.history if self.logger else None, "attr_loss": self.loss_record, **extra}
        save_checkpoint(self.run_dir / "checkpoints" / name, self.model, self.arch, state,
                        optimizer=saved_optimizer(self.optimizer, name))

    def final_evaluation(self, position: Position) -> dict:
        metrics = evaluate_attribute_net(self.model, self.dataset, self.table, self.cfg, self.device)
        assert self.logger is not None
        self.logger.record("eval", metrics)
        return metrics


def train_attribute_net(cfg: Config, resume: bool = False, stop_after_steps: int | None = None,
                        overwrite: bool = False) -> dict:
    """Train the attribute network on the train split; checkpoints in `<out>/attr/checkpoints/`; returns its mA.

    The run folder, resume rule and stop are :func:`sangal.train.lifecycle.run_training`'s."""
    device = resolve_device(cfg.train.device)
    return run_training(lambda resume: AttrTask(cfg, device, resume), default_paths(cfg)["attr_run"],
                        RunOptions(resume, overwrite, stop_after_steps))


def held_out(task: AttrTask, cfg: Config, device) -> dict:
    """The final checkpoint's record of the held-out identities: the confusion of each head on them."""
    records, targets = task.held
    if not records:
        return {}
    pred = predict_attributes(task.model, records, cfg, device)
    matrices = confusion_matrices(pred, targets, task.table.schema.num_classes)
    log.info("attribute net: confusion measured on %d held-out images", len(records))
    return {"confusion": {"matrices": matrices, "images": len(records), "prior": 0.5}}


def attribute_training_set(cfg: Config, dataset, table) -> tuple[list, np.ndarray, np.ndarray]:
    """Train images, (N, K) labels and (N,) identity codes: the dataset's train split plus every labelled
    identity of ``attr_train.extra_roots`` (other sets in the same format and attribute schema)."""
    from sangal.config import with_overrides
    from sangal.errors import AttributeFileError

    records = list(dataset.train)
    targets = [setup.attribute_targets(table, dataset.train, "train")]
    identities = [(0, r.raw_pid) for r in records]
    for source, root in enumerate(cfg.attr_train.extra_roots, start=1):
        extra_cfg = with_overrides(cfg, [f"data.root={root}", "data.attributes=null"])
        extra = setup.load_reid_dataset(extra_cfg)
        extra_table = setup.load_attributes(extra_cfg, extra)
        if extra_table.schema.names != table.schema.names:
            raise AttributeFileError(f"attr_train.extra_roots: {root} has attributes {extra_table.schema.names[:3]}"
                                     f"... but {cfg.data.root} has {table.schema.names[:3]}...; they must match")
        test = [r for r in list(extra.query) + list(extra.gallery) if r.raw_pid > 0]
        records += list(extra.train) + test
        identities += [(source, r.raw_pid) for r in list(extra.train) + test]  # a set's train and test ids differ
        targets += [setup.attribute_targets(extra_table, extra.train, "train"),
                    setup.attribute_targets(extra_table, test, "test")]
        log.info("attribute net: %d more images from %s", len(extra.train) + len(test), root)
    codes = {key: i for i, key in enumerate(dict.fromkeys(identities))}
    return records, np.concatenate(targets), np.array([codes[key] for key in identities], dtype=np.int64)


def hold_out(identities: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """(N,) bool: the images of a seeded ``fraction`` of the identities, kept out of the attribute net's training
    to measure the errors it makes on people it never saw (the confusion noisy training maps draw from)."""
    unique = np.unique(identities)
    count = int(round(fraction * len(unique)))
    held = np.random.default_rng(seed).choice(unique, size=count, replace=False) if count else unique[:0]
    return np.isin(identities, held)


@torch.no_grad()
def predict_attributes(model, records, cfg: Config, device) -> np.ndarray:
    """(N, K) predicted classes of ``records`` (test transform, eval mode)."""
    model.eval()
    preds = [model.predict(batch["image"].to(device))[1].cpu().numpy() for batch in setup.test_loader(records, cfg)]
    return np.concatenate(preds)


def confusion_matrices(pred: np.ndarray, targets: np.ndarray, num_classes: list[int], prior: float = 0.5) -> list:
    """Per head, P(prediction | true class) as a (C_k, C_k) row-stochastic list, from counts plus ``prior`` per cell
    (a class with few held-out images leans to uniform rather than to 0/1); unlabelled entries skipped."""
    out = []
    for k, size in enumerate(num_classes):
        known = targets[:, k] >= 0
        counts = np.full((size, size), prior)
        np.add.at(counts, (targets[known, k], pred[known, k]), 1.0)
        out.append((counts / counts.sum(axis=1, keepdims=True)).tolist())
    return out


@torch.no_grad()
def evaluate_attribute_net(model, dataset, table, cfg: Config, device) -> dict:
    """mA (Lin et al.) and per-attribute accuracy on the test identities' images."""
    from sangal.metrics.attributes import mean_accuracy

    records = [r for r in list(dataset.query) + list(dataset.gallery) if r.raw_pid > 0]
    targets = setup.attribute_targets(table, records, "test")
    res = mean_accuracy(predict_attributes(model, records, cfg, device), targets, table.schema.num_classes)
    names = table.schema.names
    log.info("attribute net: mA %.1f%% over %d test images", 100 * res["mA"], len(records))
    return {"mA": float(res["mA"]), "accuracy": float(res["accuracy"]),
            "per_attribute": {n: {"mA": float(m), "accuracy": float(a)} for n, m, a in
                              zip(names, res["per_attribute_mA"], res["per_attribute_accuracy"])}}
