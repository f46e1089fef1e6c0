"""``sangal label``: attribute pseudo-labels for a dataset that has none.

A trained attribute network predicts every image; an identity's label is the argmax
of its images' mean class probabilities, and its confidence that mean probability
(identities below ``min_confidence`` are left unlabelled, 0 in the file). Written to
``out`` (atomically, each file):

* ``attributes.mat`` -- Lin et al. structure (train ids -> ``train``, query/gallery
  ids -> ``test``): pass it as ``data.attributes=`` to train ``id+attr`` / ``san-gal``;
* ``dataset.csv``    -- the dataset in sangal's CSV format with the labels as
  attribute columns (``data.dataset=csv data.root=dataset.csv``);
* ``identities.csv`` -- per identity: images, label and confidence per attribute;
* ``images.csv``     -- per image: predicted class and probability per attribute.

Test identities are labelled too, so that evaluation can report the Re-ID net's
attribute mA; against pseudo-labels that figure measures agreement, not accuracy.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Collection
from pathlib import Path

import numpy as np
import torch

from sangal.config import Config, with_decided
from sangal.data import setup
from sangal.data.attributes import schema_name
from sangal.errors import ConfigError
from sangal.store.files import atomic_write_bytes, atomic_write_text
from sangal.store.outputs import check_output

log = logging.getLogger(__name__)

#: What ``label_dataset`` writes into its output folder.
OUTPUT_FILES = ("attributes.mat", "images.csv", "identities.csv", "dataset.csv", "summary.json")


@torch.no_grad()
def predict_probs(model, records, cfg: Config, device) -> list[np.ndarray]:
    """K arrays (N, C_k): the attribute net's class probabilities for every record."""
    model.eval()
    chunks: list[list[np.ndarray]] = []
    for batch in setup.test_loader(records, cfg):
        probs, _ = model.predict(batch["image"].to(device))
        chunks.append([p.cpu().numpy() for p in probs])
    return [np.concatenate([c[k] for c in chunks]) for k in range(len(chunks[0]))]


def aggregate(probs: list[np.ndarray], raw_pids: np.ndarray, min_confidence: float = 0.0):
    """Per identity (sorted): ids, labels (M, K) (IGNORE below ``min_confidence``), confidence (M, K), counts."""
    from sangal.data.attributes import IGNORE_INDEX

    ids, inverse, counts = np.unique(raw_pids, return_inverse=True, return_counts=True)
    labels = np.empty((len(ids), len(probs)), dtype=np.int64)
    confidence = np.empty((len(ids), len(probs)), dtype=np.float64)
    for k, p in enumerate(probs):
        mean = np.zeros((len(ids), p.shape[1]))
        np.add.at(mean, inverse, p)
        mean /= counts[:, None]
        labels[:, k] = mean.argmax(1)
        confidence[:, k] = mean.max(1)
    labels[confidence < min_confidence] = IGNORE_INDEX
    return ids, labels, confidence, counts


def _csv_text(header: list[str], rows: list[list]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def _name(schema, k: int, label: int) -> str:
    return schema.attributes[k].classes[label] if label >= 0 else ""


def label_dataset(cfg: Config, checkpoint: str | Path, out: str | Path | None = None,
                  min_confidence: float = 0.0, compare: str | Path | None = None, given: Collection[str] = ()) -> dict:
    """Pseudo-label every identity of the configured dataset with the attribute net at ``checkpoint``.

    Images are read at the checkpoint's input size (a ``data.height``/``data.width`` the user gave, ``given``, that
    contradicts it is refused); ``cfg`` itself is left as it is. ``compare``: a Lin et al. file of true labels; the
    summary then holds the mA of the per-image predictions and of the identity labels on the train images.
    """
    from sangal.data.attribute_files import attribute_mat_bytes
    from sangal.data.attributes import get_schema
    from sangal.runtime.distributed import resolve_device
    from sangal.store.checkpoint import load_model

    if not 0.0 <= min_confidence <= 1.0:  # NaN fails too
        raise ConfigError(f"--min-confidence {min_confidence} is out of range: must be in [0, 1] (the mean "
                          "probability below which an identity's attribute is left unlabelled)")
    out = Path(out) if out is not None else Path(cfg.out) / "labels"
    inputs = {"--checkpoint": checkpoint, "data.root": cfg.data.root, "data.attributes": cfg.data.attributes,
              "--compare": compare}
    for name in OUTPUT_FILES:  # before any work: no pseudo-label file lands on an input
        check_output(out / name, inputs, "--out")
    device = resolve_device(cfg.train.device)
    model, ckpt = load_model(checkpoint, expected_kind="attribute", device=str(device))
    decided = {"data.height": int(ckpt.arch["height"]), "data.width": int(ckpt.arch["width"])}
    cfg = with_decided(cfg, decided, given, f"attribute checkpoint {checkpoint}")
    schema = get_schema(ckpt.arch["dataset"], ckpt.arch["colour_mode"])
    wanted = schema_name(cfg.data.dataset)  # the schema training will read
    if schema.dataset != wanted:
        raise ConfigError(f"{checkpoint}: attribute net predicts the {schema.dataset} attributes, but "
                          f"data.dataset={cfg.data.dataset} trains with the {wanted} schema; label with a "
                          f"{wanted}-schema attribute net")
    dataset = setup.load_reid_dataset(cfg)
    out.mkdir(parents=True, exist_ok=True)
    groups = {"train": list(dataset.train),
              "test": [r for r in list(dataset.query) + list(dataset.gallery) if r.raw_pid > 0]}
    mat_splits, image_rows, id_rows, per_image, per_id = {}, [], [], {}, {}
    for split, records in groups.items():
        probs = predict_probs(model, records, cfg, device)
        raw = np.array([r.raw_pid for r in records])
        ids, labels, conf, counts = aggregate(probs, raw, min_confidence)
        mat_splits[split] = (ids.tolist(), labels)
        per_image[split] = np.stack([p.argmax(1) for p in probs], axis=1)
        per_id[split] = dict(zip(ids.tolist(), labels))
        for i, r in enumerate(records):
            image_rows.append([str(r.path), r.raw_pid, r.camid, split] + [
                x for k, p in enumerate(probs) for x in (_name(schema, k, int(p[i].argmax())), f"{p[i].max():.4f}")])
        for j, pid in enumerate(ids):
            id_rows.append([split, int(pid), int(counts[j])] + [
                x for k in range(len(schema)) for x in (_name(schema, k, int(labels[j, k])), f"{conf[j, k]:.4f}")])
    pairs = [x for n in schema.names for x in (n, f"{n}_confidence")]
    atomic_write_bytes(out / "attributes.mat", attribute_mat_bytes(schema, mat_splits))
    atomic_write_text(out / "images.csv", _csv_text(["path", "pid", "camid", "split", *pairs], image_rows))
    atomic_write_text(out / "identities.csv", _csv_text(["split", "pid", "images", *pairs], id_rows))
    atomic_write_text(out / "dataset.csv", _dataset_csv(dataset, schema, per_id))
    train_conf = np.array([[float(x) for x in row[4::2]] for row in id_rows if row[0] == "train"])
    summary = {"out": str(out), "schema": f"{schema.dataset}/{schema.colour_mode}", "checkpoint": str(checkpoint),
               "identities": {s: len(mat_splits[s][0]) for s in mat_splits},
               "images": {s: len(groups[s]) for s in groups}, "min_confidence": min_confidence,
               "train_mean_confidence": float(train_conf.mean()),
               "train_unlabelled": int((mat_splits["train"][1] < 0).sum())}
    if compare is not None:
        summary["compare"] = compare_with_truth(compare, schema, groups["train"], per_image["train"], per_id["train"])
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    log.info("pseudo-labels for %s train and %s test identities in %s", *summary["identities"].values(), out)
    return summary


def _dataset_csv(dataset, schema, per_id: dict[str, dict[int, np.ndarray]]) -> str:
    """The dataset in the custom CSV format, each row carrying its identity's labels."""
    rows = []
    for split in ("train", "query", "gallery"):
        labels = per_id["train" if split == "train" else "test"]
        for r in dataset.split(split):
            row = labels.get(r.raw_pid)
            attrs = [_name(schema, k, int(row[k])) if row is not None else "" for k in range(len(schema))]
            rows.append([str(Path(r.path).resolve()), r.raw_pid, r.camid, split, *attrs])
    return _csv_text(["path", "pid", "camid", "split", *schema.names], rows)


def compare_with_truth(truth: str | Path, schema, records, image_pred: np.ndarray, id_labels: dict) -> dict:
    """mA (Lin et al.) over the train images: per-image predictions and identity labels vs a true file."""
    from sangal.data.attributes import read_attribute_mat
    from sangal.metrics.attributes import mean_accuracy

    table = read_attribute_mat(truth, dataset=schema.dataset, colour_mode=schema.colour_mode)
    target = table.labels_for(records, "train")
    id_pred = np.stack([id_labels[r.raw_pid] for r in records])
    per_image = mean_accuracy(image_pred, target, schema.num_classes)
    per_identity = mean_accuracy(id_pred, target, schema.num_classes)
    return {"truth": str(truth), "image_mA": float(per_image["mA"]), "identity_mA": float(per_identity["mA"]),
            "identity_accuracy": float(per_identity["accuracy"]),
            "per_attribute_mA": dict(zip(schema.names, map(float, per_identity["per_attribute_mA"])))}
