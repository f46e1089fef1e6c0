"""Step-0 diagnostics of a SAN-GAL row: what ASAM does to the features before any update.

For row r and seed s, the row's Re-ID net and an `id` net (the same config with ``model.mode=id``) are
built exactly as training builds them for seed s, so they share every initial weight (checked:
``init_sha256`` equals the trained run's recorded pairing hash). Both embed the test images; the mean
cosine between the two embeddings of each image says how far ASAM alone moves the features, and
their zero-shot Rank-1 and mAP say what that move costs or gains before training starts.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch

from sangal.config import Config, parse_pretrained, with_overrides
from sangal.data import setup
from sangal.store.files import write_json_atomic
from sangal.store.paths import default_paths

log = logging.getLogger(__name__)

RESULT_FILE = "step0.json"  # one run's diagnostics, beside its result.json


def initial_network(cfg: Config, dataset, table, device) -> tuple[torch.nn.Module, str]:
    """The Re-ID net training starts from for ``cfg.train.seed`` (eval mode) and its shared-init sha256."""
    from sangal.models.arch import arch_for, build_model
    from sangal.runtime.precision import channels_last
    from sangal.train.reid import shared_init_digest

    torch.manual_seed(cfg.train.seed)  # as train_reid seeds before it builds the net
    attr_classes = table.schema.num_classes if cfg.model.mode != "id" else None
    model = build_model(arch_for(cfg, "reid", dataset.num_train_pids, attr_classes),
                        pretrained=parse_pretrained(cfg.model.pretrained))
    digest = shared_init_digest(model)
    return channels_last(model.to(device), cfg.train.channels_last).eval(), digest


def zero_shot(model: torch.nn.Module, cfg: Config, dataset, device) -> dict:
    """A net's test features (query then gallery rows, L2-normalised) and its Rank-1 / mAP in percent."""
    from sangal.evaluate.reid import evaluate_features, query_gallery, training_predictor

    paths = default_paths(cfg)
    predictor = training_predictor(model, cfg, paths["attr_checkpoint"])
    q, g = query_gallery(predictor, dataset, cfg, paths["aah"], progress=False)
    m = evaluate_features(q.feats, g.feats, q.pids, g.pids, q.camids, g.camids, cfg)
    return {"feats": np.concatenate([q.feats, g.feats]), "rank1": 100.0 * m["rank1"], "mAP": 100.0 * m["mAP"]}


def step0_run(run_cfg: Config, memo: dict) -> dict:
    """Diagnostics of one (row, seed), kept in its run folder. ``memo`` holds the zero-shot results of nets
    already embedded in this study, keyed by their settings and the weights on the feature path (backbone,
    BN neck): from ImageNet only the heads differ between seeds, so the features repeat and are computed once."""
    path = Path(run_cfg.out) / RESULT_FILE
    if path.is_file():
        return json.loads(path.read_text())
    from sangal.runtime.distributed import resolve_device

    device = resolve_device(run_cfg.train.device)
    dataset = setup.load_reid_dataset(run_cfg)
    table = setup.load_attributes(run_cfg, dataset)
    results, digests = {}, {}
    for role, cfg in (("row", run_cfg), ("id", id_counterpart(run_cfg))):
        model, digests[role] = initial_network(cfg, dataset, table, device)
        key = (_net_key(cfg), _feature_digest(model))
        if key not in memo:
            memo[key] = zero_shot(model, cfg, dataset, device)
        results[role] = memo[key]
    row, ref = results["row"], results["id"]
    # (N,) cosines of unit vectors; none where the row's features have another size (attribute-pooled rows)
    same = row["feats"].shape == ref["feats"].shape
    cosine = float(np.mean(np.sum(row["feats"] * ref["feats"], axis=1))) if same else None
    out = {"seed": run_cfg.train.seed, "init_sha256": digests["row"],
           "init_equal_to_id": digests["row"] == digests["id"], "cosine_to_id": cosine, "rank1": row["rank1"],
           "mAP": row["mAP"],
           "id": {"rank1": ref["rank1"], "mAP": ref["mAP"]}}
    write_json_atomic(path, out)
    return out


def id_counterpart(run_cfg: Config) -> Config:
    """The `id` net a row is compared with at step 0: the same run without maps (nor pooling under them)."""
    return with_overrides(run_cfg, ["model.mode=id", "model.attr_pool=false"])


def _feature_digest(model: torch.nn.Module) -> str:
    """sha256 of the weights test features depend on (not the ID classifier, not the attribute heads)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if name.startswith(("backbone.", "bottleneck.")):
            digest.update(name.encode() + tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _net_key(cfg: Config) -> str:
    """What besides the initial weights makes a net's test features: its model section and test maps."""
    return json.dumps([vars(cfg.model), cfg.train.aah_targets, cfg.eval.aah, cfg.eval.flip,
                       cfg.data.height, cfg.data.width], sort_keys=True, default=str)


def step0_summary(runs: list[dict], trained: dict[int, dict]) -> dict:
    """One row's diagnostics: per seed, means, and whether each step-0 net is the trained run's start."""
    for r in runs:
        recorded = trained.get(r["seed"], {}).get("pairing", {}).get("init_sha256")
        r["init_equal_to_run"] = None if recorded is None else recorded == r["init_sha256"]
    mean = {k: float(np.mean([r[k] for r in runs])) for k in ("rank1", "mAP")}
    cosines = [r["cosine_to_id"] for r in runs]
    mean["cosine_to_id"] = None if None in cosines else float(np.mean(cosines))
    mean["id"] = {k: float(np.mean([r["id"][k] for r in runs])) for k in ("rank1", "mAP")}
    return {"per_seed": runs, "mean": mean}
