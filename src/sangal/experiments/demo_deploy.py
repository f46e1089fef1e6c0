"""What the demo leaves for deployment: a distilled map predictor, the best SAN-GAL model under a stable name,
and a query image, so that the README's "What next" commands (export, index, search) run as written.

* the distilled map predictor (``sangal distill``; the study fits it first when its test maps are fast): it lives in
  the attribute checkpoint, so SAN-GAL models export to ONNX and index with ``--aah fast``; its held-out agreement
  (in study.json and in the predictor file's metadata) goes to the report.
* ``<out>/best-san-gal``: a relative symlink to the final checkpoint of the SAN-GAL seed with the highest mAP.
* ``<out>/query.jpg``: the first query image (by name) of an identity labelled with a backpack, so that
  ``--where backpack=yes`` keeps its true matches.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from pathlib import Path

import numpy as np

from sangal.train.distill import ensure_distilled
from sangal.config import Config
from sangal.data import setup
from sangal.errors import CheckpointError
from sangal.experiments.study import run_dir

log = logging.getLogger(__name__)

BEST_LINK = "best-san-gal"
QUERY_FILE = "query.jpg"
SAN_GAL = "san-gal"


def best_seed(doc: dict, variant: str = SAN_GAL) -> int:
    """The seed of ``variant`` with the highest mAP in a study document."""
    seeds = doc["variants"][variant]["seeds"]
    return int(max(seeds, key=lambda r: (r["mAP"], -r["seed"]))["seed"])


def link_best(out: Path, seed: int, variant: str = SAN_GAL) -> Path:
    """``<out>/best-san-gal`` -> the final checkpoint of ``seed``'s run (relative symlink, replaced atomically)."""
    target = run_dir(out, variant, seed) / "reid" / "san-gal" / "checkpoints" / "final"
    if not target.is_dir():
        raise CheckpointError(f"the best {variant} run (seed {seed}) has no final checkpoint at {target}")
    link = out / BEST_LINK
    tmp = out / f".{BEST_LINK}.tmp-{uuid.uuid4().hex[:8]}"
    os.symlink(os.path.relpath(target, out), tmp, target_is_directory=True)
    os.replace(tmp, link)
    return link


def pick_query(cfg: Config, out: Path, attribute: str = "backpack", value: str = "yes") -> Path:
    """Copy the first query image (by name) of an identity labelled ``attribute=value`` to ``<out>/query.jpg``."""
    dataset = setup.load_reid_dataset(cfg)
    table = setup.load_attributes(cfg, dataset)
    records = sorted(dataset.query, key=lambda r: Path(r.path).name)
    k = table.schema.names.index(attribute)
    wanted = table.schema.attributes[k].classes.index(value)
    labels = setup.attribute_targets(table, records, "test")[:, k]  # (N,)
    hits = np.flatnonzero(labels == wanted)
    source = Path(records[int(hits[0])].path if hits.size else records[0].path)
    tmp = out / f".{QUERY_FILE}.tmp-{uuid.uuid4().hex[:8]}"
    shutil.copyfile(source, tmp)
    os.replace(tmp, out / QUERY_FILE)
    return out / QUERY_FILE


def prepare_deployment(cfg: Config, doc: dict) -> dict:
    """All three artefacts for a finished demo study; returns what the report and the summary show."""
    out = Path(cfg.out)
    result = doc.get("distill") or ensure_distilled(cfg)  # the study distilled it when its san-gal maps are fast
    seed = best_seed(doc)
    link = link_best(out, seed)
    query = pick_query(cfg, out)
    target = os.readlink(link)
    log.info("deployment: %s -> %s; query %s", link, target, query)
    return {"distill": result, "best": {"link": str(link), "seed": seed, "target": target}, "query": str(query)}


def agreement_rows(result: dict) -> list[dict]:
    """Held-out agreement of the distilled layer2/layer3 maps with exact Grad-CAM, one row per stage."""
    return [{"stage": stage, **values} for stage, values in (result.get("val") or {}).items()]
