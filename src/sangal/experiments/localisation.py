"""How well the attribute net's heat maps find the attribute's body part, on the synthetic set's part masks.

Per attribute and stage: the share of map energy inside the part (against a flat map's) and how often the
peak lands in it (against chance), for predicted-class exact Grad-CAM maps of gallery images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sangal.aah.spec import MapSpec
from sangal.config import Config
from sangal.data import setup
from sangal.store.paths import default_paths
from sangal.viz.localisation import REGION_KEYS

STAGES = ("layer2", "layer3", "layer4")


def load_masks(data_root: Path, records) -> dict[str, np.ndarray]:
    """Region masks (N, H, W) bool per region, from the synthetic generator's per-image .npz files."""
    masks: dict[str, list[np.ndarray]] = {key: [] for key in REGION_KEYS}
    for record in records:
        path = Path(data_root) / "masks" / Path(record.path).parent.name / (Path(record.path).stem + ".npz")
        with np.load(path) as npz:
            for key in REGION_KEYS:
                masks[key].append(npz[key].astype(bool))
    return {key: np.stack(value) for key, value in masks.items()}


def present_matrix(schema, targets: np.ndarray) -> np.ndarray:
    """(N, K) bool: for yes/no attributes only images labelled "yes" count; others always."""
    present = np.ones(targets.shape, dtype=bool)
    for k, attribute in enumerate(schema.attributes):
        if tuple(attribute.classes) == ("no", "yes"):
            present[:, k] = targets[:, k] == 1
    return present


def _predicted_gallery_cache(cfg: Config, gallery):
    """The valid exact predicted-class gallery cache of this study, or None."""
    from sangal.aah.cache import AAHCache
    from sangal.errors import CacheError

    spec = MapSpec("predicted", "exact", cfg.model.aah_normalize, "bf16" if cfg.train.amp else "float32")
    try:
        return AAHCache.open(default_paths(cfg)["aah"], spec, "gallery", records=gallery,
                             attr_checkpoint=default_paths(cfg)["attr_checkpoint"], size=(cfg.data.height, cfg.data.width))
    except CacheError:
        return None


def localisation_rows(cfg: Config, max_images: int = 600) -> tuple[list[dict], dict]:
    """Per-attribute localisation rows at each stage of the attribute net's predicted-class maps on gallery
    images, against the generator's masks; and the per-stage macro means (the study.json entry)."""
    from sangal.aah.gradcam import attribute_heatmaps
    from sangal.runtime.distributed import resolve_device
    from sangal.runtime.precision import autocast, channels_last, gradcam_channels_last
    from sangal.store.checkpoint import load_model
    from sangal.viz.localisation import localisation_scores

    device = resolve_device(cfg.train.device)
    dataset = setup.load_reid_dataset(cfg)
    table = setup.load_attributes(cfg, dataset)
    records = [r for r in dataset.gallery if r.raw_pid > 0]
    if len(records) > max_images:  # an even spread over the gallery, the same every time
        records = [records[i] for i in np.linspace(0, len(records) - 1, max_images).round().astype(int)]
    maps: list[list[np.ndarray]] = [[], [], []]
    cached = _predicted_gallery_cache(cfg, dataset.gallery)
    if cached is not None:  # the maps the study's caches already hold: no Grad-CAM pass
        index = {str(r.path): i for i, r in enumerate(dataset.gallery)}
        for store, m in zip(maps, cached.get([index[str(r.path)] for r in records])):
            store.append(m.numpy())
        records_to_compute: list = []
    else:
        records_to_compute = records
    net, _ = load_model(default_paths(cfg)["attr_checkpoint"], expected_kind="attribute", device=str(device))
    layout = gradcam_channels_last(cfg.train.amp, cfg.train.channels_last)
    net = channels_last(net.eval(), layout)
    for batch in (setup.test_loader(records_to_compute, cfg) if records_to_compute else []):
        with autocast(device, cfg.train.amp):
            stage_maps = attribute_heatmaps(net, channels_last(batch["image"].to(device), layout),
                                            None, normalize=cfg.model.aah_normalize)
        for store, m in zip(maps, stage_maps):
            store.append(m.cpu().numpy())
    masks = load_masks(Path(cfg.data.root), records)
    present = present_matrix(table.schema, setup.attribute_targets(table, records, "test"))
    rows, summary = [], {}
    for stage, stage_maps in zip(STAGES, maps):
        scores = localisation_scores(np.concatenate(stage_maps), masks, table.schema, present=present)
        mean = scores[-1]
        summary[stage] = {"energy": 100.0 * mean["energy"], "energy_uniform": 100.0 * mean["energy_uniform"],
                          "pointing": 100.0 * mean["pointing"], "pointing_chance": 100.0 * mean["pointing_uniform"],
                          "images": len(records), "attributes": len(scores) - 1}
        rows += [{**r, "stage": stage} for r in scores]
    return rows, summary
