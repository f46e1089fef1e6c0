"""`sangal distill`: fit the layer2/layer3 map predictor of ``eval.aah=fast`` to the exact AAH cache.

The predictor (:class:`~sangal.models.map_predictor.MapPredictor`) learns the
per-class logit Grad-CAM maps of layer2 and layer3 from the frozen attribute
net's activations; :mod:`sangal.aah.fast` turns them into AAH with the exact
probabilities and target classes. Targets are the exact maps of the train
split's AAH cache (``sangal aah``), with the classes that cache was built for
(labels, or predictions with ``train.aah_targets=predicted``). A held-out
``distill.val_fraction`` of the training images measures agreement with the
exact maps (Pearson r, same-argmax-cell rate), stored beside the weights.

The predictor is saved INTO the attribute checkpoint directory as
``map_predictor.safetensors`` (metadata: its constructor arguments, the sha256
of the attribute weights it was fitted to, the agreement figures); the
checkpoint's ``model.safetensors`` is untouched, so AAH caches bound to it stay valid.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sangal.aah.cache import AAHCache
from sangal.aah.fast import combine_logit_maps, layer4_logit_maps
from sangal.aah.gradcam import normalize_heatmaps, target_classes
from sangal.aah.job import aah_cache_dir, build_caches
from sangal.aah.modes import aah_targets_for
from sangal.aah.predictor import PREDICTOR_FILE, load_map_predictor, save_map_predictor
from sangal.config import with_overrides
from sangal.data import ImageDataset, build_transforms, setup
from sangal.errors import CheckpointError, ConfigError
from sangal.models.attribute_net import AttributeNet
from sangal.models.map_predictor import MapPredictor
from sangal.runtime.distributed import resolve_device
from sangal.store.checkpoint import load_model
from sangal.store.paths import default_paths

__all__ = ["distill", "distill_loss", "ensure_distilled", "fit_map_predictor", "map_agreement"]

log = logging.getLogger(__name__)

#: Stage activations of the training images are kept in memory below this size; else recomputed per epoch.
ACTIVATION_BUDGET_BYTES = 1 << 30


# ------------------------------------------------------------------ agreement
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


# ------------------------------------------------------------------ fitting
def _signed_maps(net: AttributeNet, predictor: MapPredictor, stages: Sequence[Tensor], logits: list[Tensor],
                 classes: Tensor) -> tuple[Tensor, Tensor]:
    """Pre-ReLU layer2/layer3 maps ``y_c (P_c - sum_j y_j P_j)`` of the predictor, (B, K, h_s, w_s) each."""
    a2, a3, a4 = stages
    probs = torch.cat([torch.softmax(z.float(), dim=1) for z in logits], dim=1)  # (B, sum C)
    p2, p3 = predictor(a2, a3, layer4_logit_maps(net, a4))
    signed2, signed3 = (combine_logit_maps(p, probs, classes, net.num_classes, relu=False) for p in (p2, p3))
    return signed2, signed3


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


@torch.no_grad()
def _forward(net: AttributeNet, images: Tensor, targets: Tensor | None) -> tuple[list[Tensor], list[Tensor], Tensor]:
    """Frozen attribute net: stages (a2, a3, a4), logits, target classes (B, K)."""
    stages = list(net.forward_stages(images))
    logits = net.head_from_stage4(stages[2])
    return stages, logits, target_classes(logits, targets)


def fit_map_predictor(net: AttributeNet, loader_factory, cache, targets: np.ndarray | None, epochs: int,
                      lr: float, hidden: int = 64, val_indices: Sequence[int] = (), batch_size: int = 64,
                      device: str | torch.device = "cpu", normalize: str = "max", progress: bool = True,
                      seed: int = 0) -> tuple[MapPredictor, dict]:
    """Train a :class:`MapPredictor` on the exact maps of ``cache`` (an AAHCache of the same records).

    Args:
        net: the attribute network (frozen, eval mode).
        loader_factory: ``fn(indices) -> DataLoader`` yielding test-transform batches (``image``, ``index``)
            of those record indices in that order; the records are the cache's, in its order.
        targets: (N, K) classes the cache was built for (None: predicted classes).
        val_indices: records held out of training; agreement is measured on them.

    Returns:
        The predictor (eval mode) and ``{"epochs", "train_loss", "val": {"layer2": {...}, "layer3": {...}}}``.
    """
    from tqdm import tqdm

    if normalize == "none":
        raise ConfigError("fast heat maps are defined up to scale only: distill needs model.aah_normalize=max|minmax")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = net.to(device).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    n = len(cache)
    held = set(int(i) for i in val_indices)
    train, val = [i for i in range(n) if i not in held], sorted(held)
    with torch.no_grad():
        probe = net.forward_stages(torch.zeros(1, 3, int(cache.manifest["height"]), int(cache.manifest["width"]),
                                               device=device))
    predictor = MapPredictor((probe[0].shape[1], probe[1].shape[1]), sum(net.num_classes), hidden).to(device)
    optimizer = torch.optim.Adam(predictor.parameters(), lr=lr)
    fits = sum(a[0].numel() for a in probe) * 4 * n <= ACTIVATION_BUDGET_BYTES
    tg = None if targets is None else torch.as_tensor(np.asarray(targets), dtype=torch.long)
    memo: dict[str, Tensor] = {}
    if fits:  # one frozen forward per image for the whole fit
        parts: dict[str, list[Tensor]] = {}
        for batch in loader_factory(list(range(n))):
            stages, logits, _ = _forward(net, batch["image"].to(device), None)
            for key, value in (("a2", stages[0]), ("a3", stages[1]), ("a4", stages[2]),
                               ("logits", torch.cat(logits, dim=1))):
                parts.setdefault(key, []).append(value)
        memo = {k: torch.cat(v) for k, v in parts.items()}

    def batches(indices: list[int], shuffle: bool):
        """(stages, logits, classes, exact layer2/layer3 maps) per batch of ``indices``."""
        order = [indices[i] for i in torch.randperm(len(indices), generator=gen).tolist()] if shuffle else indices
        if memo:
            groups = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
            for idx in groups:
                rows = torch.tensor(idx, device=device)
                logits = list(memo["logits"][rows].split(net.num_classes, dim=1))
                t = None if tg is None else tg[idx].to(device)
                stages = [memo[k][rows] for k in ("a2", "a3", "a4")]
                yield stages, logits, target_classes(logits, t), [m.to(device) for m in cache.get(idx)[:2]]
            return
        for batch in loader_factory(order):
            idx = [int(i) for i in batch["index"]]
            t = None if tg is None else tg[idx].to(device)
            stages, logits, classes = _forward(net, batch["image"].to(device), t)
            yield stages, logits, classes, [m.to(device) for m in cache.get(idx)[:2]]

    history = []
    for epoch in range(epochs):
        predictor.train()
        total, count = 0.0, 0
        for stages, logits, classes, exact in tqdm(batches(train, True), disable=not progress, leave=False,
                                                   desc=f"distill {epoch + 1}/{epochs}", unit="batch"):
            signed = _signed_maps(net, predictor, stages, logits, classes)
            loss = sum(distill_loss(s, e) for s, e in zip(signed, exact))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, count = total + float(loss.detach()) * len(classes), count + len(classes)
        history.append(total / max(count, 1))
        log.info("distill epoch %d/%d: loss %.4f", epoch + 1, epochs, history[-1])
    predictor.eval()
    metrics: dict[str, Any] = {"epochs": epochs, "train_loss": history, "train_images": len(train),
                               "val_images": len(val)}
    if val:
        preds: list[list[Tensor]] = [[], []]
        exacts: list[list[Tensor]] = [[], []]
        with torch.no_grad():
            for stages, logits, classes, exact in batches(val, False):
                for s, (sig, e) in enumerate(zip(_signed_maps(net, predictor, stages, logits, classes), exact)):
                    preds[s].append(normalize_heatmaps(torch.relu(sig), normalize).cpu())
                    exacts[s].append(e.cpu())
        metrics["val"] = {name: map_agreement(torch.cat(p), torch.cat(e))
                          for name, p, e in zip(("layer2", "layer3"), preds, exacts)}
        log.info("held-out map agreement: %s", metrics["val"])
    return predictor, metrics


def distill(cfg) -> dict:
    """`sangal distill`: fit the predictor to the train split's AAH cache and save it with the attribute checkpoint."""
    paths = default_paths(cfg)
    ckpt = Path(paths["attr_checkpoint"])
    if not ckpt.exists():
        raise CheckpointError(f"no attribute checkpoint at {ckpt}: run `sangal train-attr` and `sangal aah` first")
    if cfg.train.aah_targets == "agnostic":
        # The predictor learns every class's map, so any one-class cache teaches it; class-agnostic maps
        # are |S| of those (sangal.aah.modes). Fit it to the label-guided train maps, built here if missing.
        cfg = with_overrides(cfg, ["train.aah_targets=labels"])
        build_caches(cfg, splits=["train"])
    device = resolve_device(cfg.train.device)
    dataset = setup.load_reid_dataset(cfg)
    table = setup.load_attributes(cfg, dataset)
    records = dataset.train
    targets = aah_targets_for(cfg, table, records, "train")
    cache = AAHCache.open(aah_cache_dir(cfg, "train"), attr_ckpt_dir=ckpt, records=records,
                          height=cfg.data.height, width=cfg.data.width, normalize=cfg.model.aah_normalize,
                          targets=targets)
    if targets is None and cache.manifest["targets"]["mode"] != "predicted":
        raise ConfigError(f"AAH cache {cache.path} holds label-guided maps but no labels were given")
    net, _ = load_model(ckpt, expected_kind="attribute", device=str(device))
    transform = build_transforms(cfg.data.height, cfg.data.width, train=False)
    dset = ImageDataset(records, transform)
    dc = cfg.distill

    def loader_factory(indices: list[int]):
        batches = [indices[i:i + dc.batch_size] for i in range(0, len(indices), dc.batch_size)]
        return torch.utils.data.DataLoader(dset, batch_sampler=batches, num_workers=cfg.data.num_workers)

    n_val = int(round(len(records) * dc.val_fraction))
    val = torch.randperm(len(records), generator=torch.Generator().manual_seed(cfg.train.seed))[:n_val].tolist()
    predictor, metrics = fit_map_predictor(net, loader_factory, cache, targets, dc.epochs, dc.lr, dc.hidden, val,
                                           dc.batch_size, device, cfg.model.aah_normalize, seed=cfg.train.seed)
    path = save_map_predictor(ckpt, predictor, {"normalize": cfg.model.aah_normalize, "metrics": metrics,
                                                "cache": str(cache.path)})
    log.info("map predictor saved to %s", path)
    return {"path": str(path), **metrics}


def ensure_distilled(cfg) -> dict:
    """The map predictor of the config's attribute checkpoint: kept when one fitted to these weights exists
    (its recorded figures are returned, ``reused``: true), else fitted with :func:`distill`."""
    ckpt = Path(default_paths(cfg)["attr_checkpoint"])
    try:
        meta = load_map_predictor(ckpt).meta  # refuses a predictor fitted to other attribute weights
    except CheckpointError as exc:
        log.info("distilling: %s", exc)
        return {**distill(cfg), "reused": False}
    return {"path": str(ckpt / PREDICTOR_FILE), **meta["metrics"], "reused": True}
