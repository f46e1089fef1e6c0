"""`sangal study`: paired seeds, study.json schema, paired CIs, resume."""

from __future__ import annotations

import json
import math

import pytest
import torch

from sangal.config import load_config
from sangal.errors import ConfigError
from sangal.experiments.study import (PAPER, PRESETS, Variant, format_study, parse_variant, run_study, slug,
                                     variant_config)
from sangal.metrics.paired import paired_difference

pytestmark = pytest.mark.usefixtures("one_torch_thread")

VARIANTS = (Variant("id", ("model.mode=id",)),
            Variant("san-gal agnostic", ("model.mode=san-gal", "train.aah_targets=agnostic")),
            Variant(PAPER, ("model.mode=san-gal", "train.aah_targets=labels")))
ONE_EPOCH = ["train.epochs=1"]  # the study's bookkeeping is under test, not what its runs learn: one epoch each


def test_paired_difference_matches_a_hand_computed_t_interval() -> None:
    a, b = [50.0, 52.0, 47.0], [53.0, 53.0, 51.0]  # differences 3, 1, 4: mean 8/3, sd 1.5275
    d = paired_difference(a, b)
    half = 4.302653 * 1.527525 / math.sqrt(3)  # t_{0.975, 2}
    assert d.diff == pytest.approx(8 / 3) and d.sd == pytest.approx(1.527525, rel=1e-5)
    assert (d.lo, d.hi) == (pytest.approx(8 / 3 - half, rel=1e-5), pytest.approx(8 / 3 + half, rel=1e-5))
    assert d.n == 3 and d.half_width == pytest.approx(half, rel=1e-5)
    one = paired_difference([1.0], [2.0])
    assert one.diff == 1.0 and math.isnan(one.lo) and math.isnan(one.hi)
    with pytest.raises(ValueError, match="equal-length"):
        paired_difference([1.0, 2.0], [1.0])


def test_variant_parsing_and_folder_names() -> None:
    v = parse_variant("san-gal pred: model.mode=san-gal train.aah_targets=predicted")
    assert v == Variant("san-gal pred", ("model.mode=san-gal", "train.aah_targets=predicted"))
    assert slug("san-gal (paper: label-guided maps)") == "san-gal_paper_label-guided_maps"
    assert slug("id+attr") == "id_plus_attr"
    with pytest.raises(ConfigError, match="NAME: section.key=value"):
        parse_variant("no colon here")
    with pytest.raises(ConfigError, match="not a section.key=value"):
        parse_variant("x: model.mode")
    assert [v.name for v in PRESETS["table1"]] == ["id", "id+attr", "san-gal"]


@pytest.fixture(scope="module")
def study(tiny_synth, tiny_overrides, tiny_attr_run, tmp_path_factory):
    """VARIANTS on seeds 0 and 1. Its attribute net and training maps are the session's (the same overrides train
    them): the study finds them done, as a resumed study would; `test_a_guided_id_row_...` has a study train its own."""
    out = tiny_attr_run.copy_to(tmp_path_factory.mktemp("study"))
    cfg = load_config(None, tiny_overrides(tiny_synth, out) + ONE_EPOCH)
    return out, cfg, run_study(cfg, VARIANTS, [0, 1], localisation_images=16)


@pytest.mark.slow
def test_study_json_schema(study) -> None:
    out, _, doc = study
    on_disk = json.loads((out / "study.json").read_text())
    assert on_disk["complete"] is True and on_disk["units"] == "percent"
    for name in ("id", "san-gal agnostic"):
        seeds = on_disk["variants"][name]["seeds"]
        assert [s["seed"] for s in seeds] == [0, 1]
        for s in seeds:
            assert {"rank1", "mAP", "mINP"} <= set(s)
            assert all(0.0 <= s[k] <= 100.0 for k in ("rank1", "mAP", "mINP"))
    paired = on_disk["paired"]["san-gal agnostic"]
    assert "id" not in on_disk["paired"]
    for metric in ("rank1", "mAP", "mINP"):
        lo, hi = paired[metric]["ci95"]
        diff = paired[metric]["diff"]
        runs = on_disk["variants"]
        expected = sum(b[metric] - a[metric] for a, b in zip(runs["id"]["seeds"], runs["san-gal agnostic"]["seeds"]))
        assert diff == pytest.approx(expected / 2)
        assert lo <= diff <= hi
    env = on_disk["environment"]  # what decides the figures besides code, data and seeds (README, demo trace)
    assert env["threads"] == 1 and env["torch"] == torch.__version__ and env["cpu"] and "git_commit" in env
    md = (out / "study.md").read_text()
    assert "| id |" in md and "paired difference vs id" in md and "| layer4 |" in md
    attrs = on_disk["attributes"]
    assert 0.0 <= attrs["mean_accuracy"] <= 100.0 and 0.0 <= attrs["mA"] <= 100.0
    assert set(on_disk["localisation"]) == {"layer2", "layer3", "layer4"}
    for stage in on_disk["localisation"].values():
        assert {"energy", "energy_uniform", "pointing", "pointing_chance"} <= set(stage)
        assert 0.0 < stage["energy_uniform"] < 100.0 and 0.0 < stage["pointing_chance"] < 100.0


def test_variants_with_the_same_seed_see_the_same_batches_and_initial_weights(study) -> None:
    out, _, doc = study
    assert doc["pairing"]["san-gal agnostic"] == {"init_equal": True, "batches_equal": True}
    assert doc["pairing"][PAPER] == {"init_equal": True, "batches_equal": True}
    runs = doc["variants"]
    for seed in (0, 1):
        a, b = runs["id"]["seeds"][seed]["pairing"], runs["san-gal agnostic"]["seeds"][seed]["pairing"]
        assert a["batches_sha256"] == b["batches_sha256"] and a["init_sha256"] == b["init_sha256"]
    # ... and another seed is another draw of both
    s0, s1 = runs["id"]["seeds"][0]["pairing"], runs["id"]["seeds"][1]["pairing"]
    assert s0["batches_sha256"] != s1["batches_sha256"] and s0["init_sha256"] != s1["init_sha256"]


def test_a_finished_study_is_reused_not_retrained(study, monkeypatch) -> None:
    out, cfg, doc = study
    import sangal.train.reid as train_reid

    def refuse(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(train_reid, "train_reid", refuse)
    again = run_study(cfg, VARIANTS, [0, 1], localisation_images=16)
    assert again["variants"]["id"]["seeds"] == doc["variants"]["id"]["seeds"]


def test_reference_must_be_a_variant(study) -> None:
    _, cfg, _ = study
    with pytest.raises(ConfigError, match="reference variant 'id'"):
        run_study(cfg, VARIANTS[1:], [0])


def test_label_leak_check_evaluates_with_predicted_and_true_label_maps(study) -> None:
    from sangal.aah.cache import AAHCache
    from sangal.experiments.leak import leak_summary, oracle_evaluation

    out, cfg, _ = study
    run_cfg = variant_config(cfg, VARIANTS[2], 0)
    result = oracle_evaluation(run_cfg)
    assert set(result) == {"predicted", "true labels"}
    for metrics in result.values():
        assert all(0.0 <= metrics[k] <= 100.0 for k in ("rank1", "mAP", "mINP"))
    oracle = AAHCache.open_path(out / "aah" / "query_oracle_labels")
    assert oracle.manifest["targets"]["mode"] == "labels"
    summary = leak_summary([result, result])
    assert summary["gap"]["rank1"] == pytest.approx(result["true labels"]["rank1"] - result["predicted"]["rank1"])
    assert summary["seeds"] == 2


@pytest.mark.parametrize(("reid_backbone", "attr_backbone"), [("mobilenet_v2", "resnet18"),
                                                              ("resnet18", "mobilenet_v2")])
@pytest.mark.slow
def test_study_on_mobilenet_v2_records_each_networks_backbone(tiny_synth, tiny_overrides, tiny_attr_run, tmp_path,
                                                              reid_backbone, attr_backbone) -> None:
    """MobileNetV2 as either network (Re-ID: ASAM on a layer2 narrower than 2K; attribute: AAH and localisation).
    A resnet18 attribute net is the session's (the same attribute settings train it); a MobileNetV2 one is trained."""
    if attr_backbone == "resnet18":
        tiny_attr_run.copy_to(tmp_path)
    overrides = [*tiny_overrides(tiny_synth, tmp_path), *ONE_EPOCH, f"model.backbone={reid_backbone}",
                 f"model.attr_backbone={attr_backbone}"]
    cfg = load_config(None, overrides)
    doc = run_study(cfg, VARIANTS[:2], [0], localisation_images=8)
    assert doc["complete"] is True
    assert (doc["config"]["model"]["backbone"], doc["config"]["model"]["attr_backbone"]) == (reid_backbone,
                                                                                             attr_backbone)
    for name in ("id", "san-gal agnostic"):
        assert all(0.0 <= doc["variants"][name]["seeds"][0][k] <= 100.0 for k in ("rank1", "mAP"))
    assert set(doc["localisation"]) == {"layer2", "layer3", "layer4"}
    from sangal.store.checkpoint import load_checkpoint

    assert load_checkpoint(tmp_path / "attr" / "checkpoints" / "final").arch["backbone"] == attr_backbone
    reid = sorted((tmp_path / "runs").glob("*/seed0/reid/*/checkpoints/final"))
    assert len(reid) == 2 and all(load_checkpoint(d).arch["backbone"] == reid_backbone for d in reid)
    nets = doc["config"]["networks"]
    assert nets == {"reid": {"backbone": reid_backbone, "pretrained": False, "weights": None},
                    "attribute": {"backbone": attr_backbone, "pretrained": False, "weights": None}}


def test_each_variant_records_its_own_re_id_network() -> None:
    from sangal.config import with_overrides
    from sangal.experiments.study import networks

    cfg = load_config(None, ["model.backbone=mobilenet_v2", "model.pretrained=true"])
    scratch = networks(with_overrides(cfg, ["model.pretrained=false"]))
    assert networks(cfg)["reid"] == {"backbone": "mobilenet_v2", "pretrained": True, "weights": "imagenet"}
    assert scratch["reid"]["pretrained"] is False and scratch["reid"]["weights"] is None
    assert networks(load_config(None, ["model.pretrained=/w/r50.safetensors"]))["attribute"]["weights"] == \
        "/w/r50.safetensors"
    names = [v.name for v in PRESETS["hypotheses"]]
    assert names[-2:] == ["id, from scratch", "san-gal, from scratch"]


def test_each_run_keeps_its_per_query_results_and_the_study_both_noise_sources(study) -> None:
    out, cfg, doc = study
    run = json.loads((out / "runs" / "id" / "seed0" / "result.json").read_text())
    pq = run["per_query"]
    assert len(pq["pid"]) == len(pq["ap"]) == len(pq["rank1"]) > 0
    assert sum(pq["rank1"]) / len(pq["rank1"]) * 100 == pytest.approx(run["rank1"], abs=1e-4)
    assert sum(pq["ap"]) / len(pq["ap"]) == pytest.approx(run["mAP"], abs=1e-3)  # AP kept to 3 decimals
    assert "per_query" not in doc["variants"]["id"]["seeds"][0]  # study.json stays small
    for name in ("san-gal agnostic", PAPER):
        for metric in ("rank1", "mAP"):
            entry = doc["paired"][name][metric]
            assert set(entry["seeds_needed"]) == {"1", "2", "3"}
            n1, n3 = entry["seeds_needed"]["1"], entry["seeds_needed"]["3"]
            assert n1 is None or n3 is None or n1 >= n3 >= 2  # a narrower interval never needs fewer seeds
            sampled = entry["test_sampling"]
            assert [s["seed"] for s in sampled["per_seed"]] == [0, 1] and sampled["resamples"] == 1000
            assert sampled["all_seeds"]["diff"] == pytest.approx(entry["diff"], abs=1e-3)  # the same difference
            for s in [*sampled["per_seed"], sampled["all_seeds"]]:
                lo, hi = s["ci95"]
                assert lo <= s["diff"] + 1e-9 and s["diff"] - 1e-9 <= hi and s["sd"] >= 0
            assert sampled["query_identities"] <= sampled["queries"]


def test_step0_diagnostics_start_from_each_runs_initial_weights(study) -> None:
    out, _, doc = study
    assert set(doc["step0"]) == {"san-gal agnostic", PAPER}  # san-gal rows only
    for row in doc["step0"].values():
        assert [r["seed"] for r in row["per_seed"]] == [0, 1]
        for r in row["per_seed"]:
            assert r["init_equal_to_run"] is True and r["init_equal_to_id"] is True
            assert -1.0 <= r["cosine_to_id"] <= 1.0 + 1e-6
            assert 0.0 <= r["rank1"] <= 100.0 and 0.0 <= r["id"]["rank1"] <= 100.0
        assert row["mean"]["cosine_to_id"] == pytest.approx(sum(r["cosine_to_id"] for r in row["per_seed"]) / 2)
    # the same id net is the reference of both rows (one seed, one init)
    a, b = (doc["step0"][n]["per_seed"][0]["id"] for n in ("san-gal agnostic", PAPER))
    assert a == b
    assert (out / "runs" / slug(PAPER) / "seed0" / "step0.json").is_file()


def test_leak_check_runs_on_every_class_guided_san_gal_row(study) -> None:
    out, _, doc = study
    leak = doc["leak"]
    assert leak["seeds"] == [0, 1] and leak["not_applicable"] == ["san-gal agnostic"]
    row = leak["rows"][PAPER]
    assert row["seeds"] == 2 and row["maps"] == "exact"
    assert row["gap"]["rank1"] == pytest.approx(row["true labels"]["rank1"] - row["predicted"]["rank1"])
    # the predicted-class evaluation is the run's own evaluation, redone
    runs = {r["seed"]: r for r in doc["variants"][PAPER]["seeds"]}
    for r in row["per_seed"]:
        assert r["predicted"]["rank1"] == pytest.approx(runs[r["seed"]]["rank1"], abs=1e-4)
    md = (out / "study.md").read_text()
    for heading in ("**Two sources of noise.**", "**Step-0 diagnostics.**", "**Label-leak check.**"):
        assert heading in md
    text = format_study(doc)
    assert "seeds for ±1 / ±2 / ±3" in text and "oracle gap" in text and "cosine to id" in text


@pytest.mark.slow
def test_fast_test_maps_get_fast_oracle_maps(tiny_synth, tiny_overrides, tiny_attr_run, tmp_path) -> None:
    """eval.aah=fast rows: the oracle maps come from the distilled predictor with the true labels as targets (the
    attribute net and its training maps are the session's; the predictor is distilled here)."""
    from sangal.aah.cache import AAHCache

    tiny_attr_run.copy_to(tmp_path)
    cfg = load_config(None, [*tiny_overrides(tiny_synth, tmp_path), *ONE_EPOCH, "eval.aah=fast", "distill.epochs=1"])
    doc = run_study(cfg, (VARIANTS[0], VARIANTS[2]), [0], localisation_images=0)
    assert doc["leak"]["rows"][PAPER]["maps"] == "fast" and doc["localisation"] is None
    cache = AAHCache.open_path(tmp_path / "aah" / "query_oracle_labels_fast")
    assert cache.manifest["method"] == "fast" and cache.manifest["targets"]["mode"] == "labels"


def test_the_maps_preset_has_one_row_per_training_map_mode():
    from sangal.config.checks import CHOICES

    rows = {v.name: dict(o.split("=", 1) for o in v.overrides) for v in PRESETS["maps"]}
    modes = [r["train.aah_targets"] for r in rows.values() if r.get("model.mode") == "san-gal"]
    assert sorted(modes) == sorted(CHOICES["train.aah_targets"])
    assert {"id", "id+attr"} <= set(rows)


def test_a_guided_id_row_gets_the_attribute_net_and_training_maps_it_needs(tiny_synth, tiny_overrides, tmp_path):
    """A study without san-gal rows still trains the attribute net and caches the training maps a loss.guide row
    pulls toward; the guided row pairs with id and, having no test-time maps, has no leak check or step 0."""
    cfg = load_config(None, tiny_overrides(tiny_synth, tmp_path) + ONE_EPOCH)
    rows = (Variant("id", ("model.mode=id",)), Variant("id guided", ("model.mode=id", "loss.guide=1000")))
    doc = run_study(cfg, rows, [0], localisation_images=0)
    assert doc["attributes"] is not None and (tmp_path / "aah" / "train_classes" / "manifest.json").is_file()
    assert not (tmp_path / "aah" / "query").exists()  # test maps: none needed
    assert doc["pairing"]["id guided"] == {"init_equal": True, "batches_equal": True}
    assert doc["step0"] == {} and doc["leak"] is None
    assert doc["variants"]["id guided"]["seeds"][0]["rank1"] != doc["variants"]["id"]["seeds"][0]["rank1"] or \
        doc["variants"]["id guided"]["seeds"][0]["mAP"] != doc["variants"]["id"]["seeds"][0]["mAP"]


def test_the_default_studys_heat_map_stage_makes_one_exact_pass(tiny_synth, tiny_overrides, tiny_attr_run, tmp_path,
                                                                 monkeypatch) -> None:
    """Agnostic training maps and fast test maps (the demo's): the caches and the map predictor's distillation
    take ONE exact Grad-CAM pass over the training images, not two (issue 28). The session's attribute net, not
    its caches: every map is made here."""
    from sangal.aah import gradcam
    from sangal.data import setup
    from sangal.experiments.study import _heat_maps

    cfg = load_config(None, [*tiny_overrides(tiny_synth, tmp_path), "model.mode=san-gal", "train.aah_targets=agnostic",
                             "eval.aah=fast", "distill.epochs=1"])
    tiny_attr_run.copy_to(tmp_path, caches=False)
    images: list[int] = []  # images through an exact Grad-CAM backward, per call
    for name, batch_of in (("_functional_grad_cam", lambda args: args[1].shape[0]),
                           ("_graph_grad_cam", lambda args: args[0][0].shape[0])):
        def counting(*args, _real=getattr(gradcam, name), _batch_of=batch_of, **kw):
            images.append(int(_batch_of(args)))
            return _real(*args, **kw)

        monkeypatch.setattr(gradcam, name, counting)
    timings: dict[str, float] = {}
    distilled = _heat_maps({"san-gal": cfg}, timings)
    assert distilled is not None and distilled["reused"] is False and set(timings) == {"heat-map caches", "distill"}
    assert sum(images) == len(setup.load_reid_dataset(cfg).train)  # one exact pass; fast test maps take none
    assert sorted(p.name for p in (tmp_path / "aah").iterdir()) == ["gallery_agnostic_fast", "query_agnostic_fast",
                                                                     "train_classes"]


def test_step0_compares_an_attribute_pooled_row_with_a_plain_id_net(tiny_synth, tiny_overrides, tmp_path) -> None:
    from sangal.experiments.step0 import id_counterpart

    cfg = load_config(None, tiny_overrides(tiny_synth, tmp_path) + ["model.mode=san-gal", "model.attr_pool=true"])
    ref = id_counterpart(cfg)  # mode=id alone is refused: id has no maps to pool under
    assert (ref.model.mode, ref.model.attr_pool) == ("id", False)
    assert ref.train.seed == cfg.train.seed and ref.data == cfg.data


def test_step0_has_no_cosine_between_features_of_different_sizes() -> None:
    from sangal.experiments.step0 import step0_summary

    runs = [{"seed": s, "init_sha256": "x", "cosine_to_id": c, "rank1": 10.0 + s, "mAP": 4.0,
             "id": {"rank1": 9.0, "mAP": 4.0}} for s, c in ((0, None), (1, None))]
    summary = step0_summary(runs, {})
    assert summary["mean"]["cosine_to_id"] is None and summary["mean"]["rank1"] == pytest.approx(10.5)
    runs[1]["cosine_to_id"] = 0.5  # one seed without a cosine: no mean of the other alone
    assert step0_summary(runs, {})["mean"]["cosine_to_id"] is None
