"""`sangal distill`: fit the layer2/layer3 map predictor of ``eval.aah=fast`` to the exact AAH cache.

The predictor (:class:`~sangal.models.fast_map_net.FastMapNet`) learns the per-class logit Grad-CAM
maps of layer2 and layer3 from the frozen attribute net's activations; :mod:`sangal.aah.fast` turns them
into AAH with the exact probabilities and target classes. Targets are the exact label-guided maps read off the
train split's cache of every class's map (``sangal aah``; the one exact pass the Re-ID training maps come from
too, :mod:`sangal.aah.classes`). A held-out ``distill.val_fraction``
of the training images measures agreement with the exact maps (Pearson r, same-argmax-cell rate).

:class:`DistillTask` runs on the one training loop (:mod:`sangal.train.engine`) inside the one run lifecycle
(:func:`sangal.train.lifecycle.run_training`, whose resume rule it follows): checkpoints in
``<out>/distill/<fit>`` resume a killed fit, and with ``distill.patience`` > 0 an
:class:`~sangal.train.hooks.EarlyStopping` hook stops the fit once the held-out agreement has not improved for
that many epochs, keeping the best epoch's weights. The predictor is saved INTO the attribute checkpoint
directory (:mod:`sangal.aah.fast_map_files`); ``model.safetensors`` is untouched.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sangal.aah.fast import combine_logit_maps, layer4_logit_maps
from sangal.aah.gradcam import normalize_heatmaps, target_classes
from sangal.config import DistillConfig
from sangal.errors import ConfigError
from sangal.models.arch import build_model
from sangal.models.attribute_net import AttributeNet
from sangal.models.fast_map_net import FastMapNet
from sangal.train.engine import LoopSettings, Schedule, Task, saved_optimizer
from sangal.train.hooks import EarlyStopping
from sangal.train.lifecycle import RunOptions, run_training
from sangal.train.run_parts import Position, make_optimizer, resume_from

__all__ = ["DistillTask", "distill_loss", "fit_fast_map_net", "map_agreement"]

log = logging.getLogger(__name__)

#: Stage activations of the training images are kept in memory below this size; else recomputed per epoch.
ACTIVATION_BUDGET_BYTES = 1 << 30


def map_agreement(pred: Tensor, exact: Tensor) -> dict[str, float]:
    """Agreement of (N, K, h, w) maps with exact ones, per (image, attribute) map.

    ``pearson``: mean Pearson r over maps where both vary; ``argmax``: share of
    non-zero exact maps whose peak cell is also the predicted map's peak cell.
    """
    p = pred.flatten(2).double()
    e = exact.flatten(2).double()  # (N, K, hw)
    pc, ec = p - p.mean(-1, keepdim=True), e - e.mean(-1, keepdim=True)
    denom = pc.norm(dim=-1) * ec.norm(dim=-1)
    valid = denom > 1e-12
    r = (pc * ec).sum(-1)[valid] / denom[valid]
    nonzero = e.amax(-1) > 0
    same = p.argmax(-1) == e.argmax(-1)
    return {"pearson": float(r.mean()) if r.numel() else float("nan"),
            "argmax": float(same[nonzero].double().mean()) if bool(nonzero.any()) else float("nan"),
            "maps": int(valid.sum())}


def distill_loss(signed: Tensor, exact: Tensor) -> Tensor:
    """Scale-free distillation loss of one stage: signed (B, K, h, w) prediction, exact normalised maps.

    MSE between the max-normalised ReLU of the prediction and the exact map,
    plus a hinge that raises the prediction wherever the exact map is positive
    (it keeps a map whose ReLU is all zero from losing its gradient).
    """
    mse = (normalize_heatmaps(torch.relu(signed), "max") - exact).pow(2).mean()
    scale = signed.detach().abs().amax(dim=(-2, -1), keepdim=True).clamp_min(1e-12)  # (B, K, 1, 1)
    hinge = (torch.relu(-signed / scale) * exact).mean()
    return mse + hinge


def _signed_maps(net: AttributeNet, predictor: FastMapNet, stages: Sequence[Tensor], logits: list[Tensor],
                 classes: Tensor) -> tuple[Tensor, Tensor]:
    """Pre-ReLU layer2/layer3 maps ``y_c (P_c - sum_j y_j P_j)`` of the predictor, (B, K, h_s, w_s) each.
    ``stages``: the frozen net's layer2 and layer3 activations and its exact layer4 logit maps ``Z``."""
    a2, a3, z4 = stages
    probs = torch.cat([torch.softmax(z.float(), dim=1) for z in logits], dim=1)  # (B, sum C)
    p2, p3 = predictor(a2, a3, z4)
    signed2, signed3 = (combine_logit_maps(p, probs, classes, net.num_classes, relu=False) for p in (p2, p3))
    return signed2, signed3


@torch.no_grad()
def _forward(net: AttributeNet, images: Tensor, classes: Tensor | None) -> tuple[list[Tensor], list[Tensor], Tensor]:
    """Frozen attribute net: (a2, a3, Z4) -- layer4 enters only through its logit maps, 1/20 of its size for
    MobileNetV2, which is what lets a whole training set's inputs stay in memory --, logits, classes (B, K)."""
    a2, a3, a4 = net.forward_stages(images)
    logits = net.head_from_stage4(a4)
    return [a2, a3, layer4_logit_maps(net, a4)], logits, target_classes(logits, classes)


class _Examples:
    """Per batch of record indices: the frozen net's stages, logits and target classes, and the exact layer2/layer3
    maps of those classes, read off the cache of every class's map. The net runs once per image for the whole fit
    when its activations fit in memory."""

    def __init__(self, net: AttributeNet, loader_factory, cache, classes: np.ndarray | None, batch_size: int,
                 device: str | torch.device, probe: Sequence[Tensor], normalize: str = "max") -> None:
        self.net, self.loader_factory, self.cache, self.batch_size, self.device = \
            net, loader_factory, cache, batch_size, device
        self.normalize = normalize
        self.classes = None if classes is None else torch.as_tensor(np.asarray(classes), dtype=torch.long)
        self.memo: dict[str, Tensor] = {}
        n = len(cache)
        a2, a3, a4 = probe
        per_image = a2[0].numel() + a3[0].numel() + sum(net.num_classes) * a4[0, 0].numel()  # float32 each
        if per_image * 4 * n <= ACTIVATION_BUDGET_BYTES:
            parts: dict[str, list[Tensor]] = {}
            for batch in loader_factory(list(range(n))):
                stages, logits, _ = _forward(net, batch["image"].to(device), None)
                for key, value in zip(("a2", "a3", "z4", "logits"), (*stages, torch.cat(logits, dim=1))):
                    parts.setdefault(key, []).append(value)
            self.memo = {k: torch.cat(v) for k, v in parts.items()}

    def batches(self, order: list[int], skip: int = 0):
        """(stages, logits, classes, exact maps) per ``batch_size`` group of ``order``, from group ``skip`` on."""
        net, device = self.net, self.device
        if not self.memo:
            for batch in self.loader_factory(order[skip * self.batch_size:]):
                idx = [int(i) for i in batch["index"]]
                given = None if self.classes is None else self.classes[idx].to(device)
                stages, logits, classes = _forward(net, batch["image"].to(device), given)
                yield stages, logits, classes, self._exact(idx, classes)
            return
        for start in range(skip * self.batch_size, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            rows = torch.tensor(idx, device=device)
            logits = list(self.memo["logits"][rows].split(net.num_classes, dim=1))
            given = None if self.classes is None else self.classes[idx].to(device)
            stages = [self.memo[k][rows] for k in ("a2", "a3", "z4")]
            classes = target_classes(logits, given)  # (B, K)
            yield stages, logits, classes, self._exact(idx, classes)

    def _exact(self, idx: list[int], classes: Tensor) -> list[Tensor]:
        """The exact layer2/layer3 maps of ``classes`` (B, K) for records ``idx``, read off every class's map."""
        from sangal.aah.classes import maps_for_mode

        maps = maps_for_mode(self.cache.class_maps(idx), "select", classes.cpu(), normalize=self.normalize)
        return [m.to(self.device) for m in maps[:2]]

    def agreement(self, predictor: FastMapNet, indices: list[int], normalize: str) -> dict[str, dict]:
        """Held-out agreement of the predictor's layer2/layer3 maps with the exact ones (:func:`map_agreement`)."""
        preds: list[list[Tensor]] = [[], []]
        exacts: list[list[Tensor]] = [[], []]
        with torch.no_grad():
            for stages, logits, classes, exact in self.batches(indices):
                for s, (sig, e) in enumerate(zip(_signed_maps(self.net, predictor, stages, logits, classes), exact)):
                    preds[s].append(normalize_heatmaps(torch.relu(sig), normalize).cpu())
                    exacts[s].append(e.cpu())
        return {name: map_agreement(torch.cat(p), torch.cat(e))
                for name, p, e in zip(("layer2", "layer3"), preds, exacts)}


class DistillTask(Task):
    """Fit a :class:`FastMapNet` to exact maps on the one loop; checkpoints in ``run_dir`` (None: none)."""

    name = "distill"

    def __init__(self, examples: _Examples, predictor: FastMapNet, train: list[int], val: list[int],
                 dc: DistillConfig, normalize: str, seed: int, run_dir: Path | None, device: torch.device) -> None:
        self.examples, self.predictor, self.train, self.val = examples, predictor, train, val
        self.dc, self.normalize, self.run_dir, self.device = dc, normalize, run_dir, device
        self.gen = torch.Generator().manual_seed(seed)
        self.epoch_gen_state = self.gen.get_state()
        self.optimizer = make_optimizer(list(predictor.parameters()), "adam", dc.lr, 0.0)
        self.sums = [0.0, 0]
        self.history: list[float] = []
        self.early = EarlyStopping(predictor, self._val_score, dc.patience, dc.min_delta) if dc.patience > 0 and val \
            else None
        self.hooks, self.position = ((self.early,) if self.early else ()), Position()

    @property
    def best(self) -> dict[str, Any]:
        """The best epoch so far (score, epoch, weights): early stopping's, else none."""
        return self.early.best if self.early else {"score": -math.inf, "epoch": 0, "weights": None}

    def schedule(self) -> Schedule:
        return Schedule(self.dc.epochs, math.ceil(len(self.train) / self.dc.batch_size), lambda progress: self.dc.lr)

    def loop_settings(self) -> LoopSettings:
        return LoopSettings(self.device)

    def batches(self, epoch: int, start: int):
        self.epoch_gen_state = self.gen.get_state()  # a fit resumed mid-epoch redraws the same order
        self.predictor.train()
        order = [self.train[i] for i in torch.randperm(len(self.train), generator=self.gen).tolist()]
        return self.examples.batches(order, skip=start)

    def step(self, batch, epoch: int, step: int) -> dict[str, Tensor]:
        stages, logits, classes, exact = batch
        signed = _signed_maps(self.examples.net, self.predictor, stages, logits, classes)
        loss = sum(distill_loss(s, e) for s, e in zip(signed, exact))
        self.sums = [self.sums[0] + float(loss.detach()) * len(classes), self.sums[1] + len(classes)]
        return {"distill": loss, "total": loss}

    def end_epoch(self, position: Position) -> None:
        """Record the epoch's mean loss."""
        self.history, self.sums = [*self.history, self.sums[0] / max(self.sums[1], 1)], [0.0, 0]
        log.info("distill epoch %d/%d: loss %.4f", position.epoch, self.dc.epochs, self.history[-1])

    def _val_score(self) -> float:
        """Held-out agreement: the mean Pearson r of the layer2 and layer3 maps."""
        val = self.examples.agreement(self.predictor.eval(), self.val, self.normalize)
        return float(np.mean([v["pearson"] for v in val.values()]))

    def save(self, position: Position, name: str = "last") -> None:
        from sangal.store.checkpoint import capture_rng_state, save_checkpoint

        if self.run_dir is None:
            return
        checkpoints, arch = self.run_dir / "checkpoints", {"kind": "map_predictor", **self.predictor.config()}
        best = self.best
        if name == "last" and best["weights"] is not None and (position.epoch, position.step) == (best["epoch"], 0):
            kept = copy.deepcopy(self.predictor)
            kept.load_state_dict(best["weights"])
            save_checkpoint(checkpoints / "best", kept, arch, {k: best[k] for k in ("epoch", "score")})
        gen = self.gen.get_state() if position.step == 0 else self.epoch_gen_state
        state = {"epoch": position.epoch, "step": position.step, "global_step": position.global_step,
                 "rng": capture_rng_state(), "generator": gen, "history": self.history, "sums": self.sums,
                 "best_score": best["score"] if math.isfinite(best["score"]) else None,
                 "best_epoch": best["epoch"]}
        save_checkpoint(checkpoints / name, self.predictor, arch, state,
                        optimizer=saved_optimizer(self.optimizer, name))

    def restore(self) -> Position:
        """Continue a fit from ``run_dir/checkpoints/last``: weights, optimizer, RNGs, shuffles and history."""
        from sangal.store.checkpoint import load_checkpoint

        arch = {"kind": "map_predictor", **self.predictor.config()}
        ckpt, position = resume_from(self.run_dir / "checkpoints" / "last", self.predictor, self.optimizer, arch,
                                     "map_predictor")
        self.gen.set_state(ckpt.state["generator"])
        self.history, self.sums = list(ckpt.state["history"]), list(ckpt.state["sums"])
        position.history = None  # its "history" is the loss per epoch, not a run log's
        if self.early is not None:
            score = ckpt.state["best_score"]
            self.early.best.update(score=-math.inf if score is None else score, epoch=ckpt.state["best_epoch"])
            if self.early.best["epoch"] > 0:
                self.early.best["weights"] = load_checkpoint(self.run_dir / "checkpoints" / "best").weights
        return position

    def final_weights(self):
        """The best epoch's weights with early stopping (kept in the predictor after the final save)."""
        if self.best["weights"] is not None:
            self.predictor.load_state_dict(self.best["weights"])
        self.predictor.eval()
        return super().final_weights()

    def final_evaluation(self, position: Position) -> dict:
        """Epochs, the loss per epoch and the held-out agreement of the final weights."""
        metrics: dict[str, Any] = {"epochs": len(self.history), "best_epoch": self.best["epoch"] or len(self.history),
                                   "train_loss": self.history, "train_images": len(self.train),
                                   "val_images": len(self.val)}
        if self.val:
            metrics["val"] = self.examples.agreement(self.predictor, self.val, self.normalize)
            log.info("held-out map agreement: %s", metrics["val"])
        return metrics


def fit_fast_map_net(net: AttributeNet, loader_factory, cache, classes: np.ndarray | None, dc: DistillConfig,
                      val_indices: Sequence[int] = (), device: str | torch.device = "cpu", normalize: str = "max",
                      seed: int = 0, run_dir: Path | None = None,
                      options: RunOptions = RunOptions()) -> tuple[FastMapNet, dict]:
    """Train a :class:`FastMapNet` on the exact maps read off ``cache`` (every class's maps of the same records).

    Args:
        net: the attribute network (frozen, eval mode).
        loader_factory: ``fn(indices) -> DataLoader`` yielding test-transform batches (``image``, ``index``)
            of those record indices in that order; the records are the cache's, in its order.
        classes: (N, K) class of each head the maps follow (``IGNORE_INDEX`` entries or None: the predicted one).
        dc: epochs, lr, batch size, width, early stopping (``patience``, ``min_delta``).
        val_indices: records held out of training; agreement is measured on them.
        run_dir: the fit's run folder (None: no checkpoints); ``options`` as for every run (resume, overwrite,
            ``stop_after_steps``: raise :class:`~sangal.train.engine.Stopped` after that many steps, as a kill would).

    Returns:
        The predictor (eval mode; with early stopping, the best epoch's) and ``{"epochs", "train_loss",
        "train_images", "val_images", "val": {"layer2": {...}, "layer3": {...}}}``.
    """
    if normalize == "none":
        raise ConfigError("fast heat maps are defined up to scale only: distill needs model.aah_normalize=max|minmax")
    torch.manual_seed(seed)  # the predictor's initial weights
    net = net.to(device).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    held = set(int(i) for i in val_indices)
    train, val = [i for i in range(len(cache)) if i not in held], sorted(held)
    height, width = int(cache.manifest["height"]), int(cache.manifest["width"])
    with torch.no_grad():
        probe = net.forward_stages(torch.zeros(1, 3, height, width, device=device))
    arch = {"kind": "map_predictor", "stage_channels": [probe[0].shape[1], probe[1].shape[1]],
            "num_logits": sum(net.num_classes), "hidden": dc.hidden}
    predictor = build_model(arch).to(device)
    examples = _Examples(net, loader_factory, cache, classes, dc.batch_size, device, probe, normalize)

    def make_task(resume: bool) -> DistillTask:
        task = DistillTask(examples, predictor, train, val, dc, normalize, seed, run_dir, torch.device(device))
        task.position = task.restore() if resume else Position()
        return task

    return predictor, run_training(make_task, run_dir, options)


def distill(cfg, resume: bool | None = False, overwrite: bool = False, stop_after_steps: int | None = None) -> dict:
    """`sangal distill`: fit the predictor to the train split's AAH cache and save it with the attribute checkpoint.

    The fit's folder follows the one resume rule (:mod:`sangal.train.lifecycle`): ``resume`` continues it,
    ``overwrite`` replaces it; None (the unattended drivers) continues it when it holds a ``last`` checkpoint.
    ``stop_after_steps`` stops after that many steps as a kill would (:class:`~sangal.train.engine.Stopped`).
    """
    from sangal.aah.cache import AAHCache
    from sangal.aah.fast_map_files import save_fast_map_net
    from sangal.aah.job import build_caches
    from sangal.aah.spec import MapSpec
    from sangal.data import ImageDataset, build_transforms, setup
    from sangal.errors import CheckpointError
    from sangal.runtime.distributed import resolve_device
    from sangal.store.checkpoint import load_model
    from sangal.store.files import file_sha256
    from sangal.store.paths import default_paths

    paths = default_paths(cfg)
    ckpt = Path(paths["attr_checkpoint"])
    if not ckpt.exists():
        raise CheckpointError(f"no attribute checkpoint at {ckpt}: run `sangal train-attr` and `sangal aah` first")
    # The predictor learns every class's map; it is fitted to the label-guided train maps, read off the train
    # split's cache of every class's map -- the cache the Re-ID training maps come from (built here if missing).
    build_caches(cfg, splits=["train"])
    device = resolve_device(cfg.train.device)
    dataset = setup.load_reid_dataset(cfg)
    records = dataset.train
    spec = MapSpec.from_config(cfg)
    # the classes the exact maps follow, as the one-class caches did: the labels, the predictions for predicted maps
    labels = None if spec.targets == "predicted" else \
        setup.attribute_targets(setup.load_attributes(cfg, dataset), records, "train")  # (N, K)
    cache = AAHCache.open(paths["aah"], spec, "train", attr_checkpoint=ckpt, records=records,
                          size=(cfg.data.height, cfg.data.width))
    net, _ = load_model(ckpt, expected_kind="attribute", device=str(device))
    dset = ImageDataset(records, build_transforms(cfg.data.height, cfg.data.width, train=False))
    dc = cfg.distill

    def loader_factory(indices: list[int]):
        batches = [indices[i:i + dc.batch_size] for i in range(0, len(indices), dc.batch_size)]
        return torch.utils.data.DataLoader(dset, batch_sampler=batches, num_workers=cfg.data.num_workers)

    n_val = int(round(len(records) * dc.val_fraction))
    val = torch.randperm(len(records), generator=torch.Generator().manual_seed(cfg.train.seed))[:n_val].tolist()
    run_dir = paths["out"] / "distill" / _fit_key(file_sha256(ckpt / "model.safetensors"), cache, labels, dc,
                                                  cfg.train.seed)
    if resume is None:
        resume = (run_dir / "checkpoints" / "last").is_dir()
    predictor, metrics = fit_fast_map_net(net, loader_factory, cache, labels, dc, val, device,
                                           spec.normalize, cfg.train.seed, run_dir,
                                           RunOptions(resume, overwrite, stop_after_steps))
    path = save_fast_map_net(ckpt, predictor, {"normalize": spec.normalize, "metrics": metrics,
                                                "cache": str(cache.path)})
    log.info("map predictor saved to %s", path)
    return {"path": str(path), **metrics}


def ensure_distilled(cfg) -> dict:
    """The map predictor of the config's attribute checkpoint: kept when one fitted to these weights exists
    (its recorded figures are returned, ``reused``: true), else fitted with :func:`distill`."""
    from sangal.aah.fast_map_files import FAST_MAP_NET_FILE, load_fast_map_net
    from sangal.errors import CheckpointError
    from sangal.store.paths import default_paths

    ckpt = Path(default_paths(cfg)["attr_checkpoint"])
    try:
        meta = load_fast_map_net(ckpt).meta  # refuses a predictor fitted to other attribute weights
    except CheckpointError as exc:
        log.info("distilling: %s", exc)
        return {**distill(cfg, resume=None), "reused": False}
    return {"path": str(ckpt / FAST_MAP_NET_FILE), **meta["metrics"], "reused": True}


def _fit_key(attr_sha256: str, cache, classes: np.ndarray | None, dc: DistillConfig, seed: int) -> str:
    """Folder name of one fit's checkpoints: a resumed fit has the same weights, cache, classes, settings and seed."""
    import dataclasses
    import hashlib
    import json

    from sangal.aah.manifest import targets_entry
    from sangal.aah.spec import Targets

    followed = targets_entry(Targets("predicted") if classes is None else Targets("labels", classes))
    what = {"attr": attr_sha256, "cache": cache.path.name, "images": cache.manifest["images_sha256"],
            "targets": followed, "distill": dataclasses.asdict(dc), "seed": seed}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]
