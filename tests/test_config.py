"""Config tree: YAML layering, typed overrides, validation, and the shipped paper recipes."""

from pathlib import Path

import pytest

from sangal.config import Config, from_dict, load_config, to_dict
from sangal.errors import ConfigError
from sangal.train.run_parts import warmup_step_lr

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_defaults_are_the_paper_schedule_and_the_real_studys_mode():
    cfg = load_config()
    assert (cfg.data.height, cfg.data.width) == (256, 128)
    assert cfg.model.backbone == "resnet50"
    assert cfg.model.mode == "id+attr"  # the real-crop study's rule (tests/benchmarks/test_real_study.py)
    assert cfg.train.epochs == 20
    assert cfg.optim.milestones == [5, 7, 15] and cfg.optim.milestone_lrs == [5e-4, 1e-4, 3e-5]


def test_overrides_are_typed():
    cfg = load_config(None, ["optim.lr=2e-3", "data.p=8", "train.amp=true", "optim.milestones=[3,4]",
                             "optim.milestone_lrs=[1e-4,1e-5]", "data.attributes=/x/a.mat"])
    assert cfg.optim.lr == pytest.approx(2e-3) and isinstance(cfg.optim.lr, float)
    assert cfg.data.p == 8 and cfg.train.amp is True
    assert cfg.optim.milestones == [3, 4]
    assert cfg.data.attributes == "/x/a.mat"


@pytest.mark.parametrize("override, message", [
    ("optim.lrr=1", "unknown key 'optim.lrr' \\(valid"),
    ("train.lr=1e-3", "unknown key 'train.lr' — did you mean optim.lr or attr_train.lr or distill.lr\\?"),
    ("data.p=abc", "data.p: expected int"),
    ("model.mode=attention", "model.mode='attention' is not one of"),
    ("optim", "must look like section.key=value"),
    ("data=3", "'data' is a section"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_yaml_base_chain_and_round_trip(tmp_path):
    cfg = load_config(CONFIGS / "market1501" / "id_attr.yaml")
    assert cfg.model.mode == "id+attr"
    assert cfg.data.dataset == "market1501" and cfg.data.erasing == 0.5
    assert from_dict(to_dict(cfg)) == cfg
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  heigth: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown key 'data.heigth'"):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize("name", ["market1501/san_gal.yaml", "market1501/id.yaml", "dukemtmc/san_gal.yaml",
                                  "dukemtmc/id_attr.yaml", ])
def test_shipped_configs_load(name):
    cfg = load_config(CONFIGS / name)
    assert isinstance(cfg, Config)
    if name.startswith("dukemtmc"):
        assert cfg.data.dataset == "dukemtmc"


def test_paper_learning_rate_schedule():
    cfg = load_config(CONFIGS / "market1501" / "san_gal.yaml")
    o = cfg.optim

    def lr(epoch):
        return warmup_step_lr(epoch, o.lr, o.warmup_start_lr, o.warmup_epochs, o.milestones, o.milestone_lrs)

    assert lr(0.0) == pytest.approx(3e-5)
    assert lr(1.0) == pytest.approx((3e-5 + 1e-3) / 2)
    assert lr(3.0) == pytest.approx(1e-3)
    assert lr(5.0) == pytest.approx(5e-4) and lr(6.9) == pytest.approx(5e-4)
    assert lr(7.0) == pytest.approx(1e-4) and lr(14.99) == pytest.approx(1e-4)
    assert lr(15.0) == pytest.approx(3e-5) and lr(19.9) == pytest.approx(3e-5)


def test_default_training_maps_follow_no_class_and_the_papers_are_one_flag_away():
    from sangal.config import load_config

    assert load_config(None).train.aah_targets == "agnostic"  # no label shortcut; README "What the study says"
    assert load_config(None, ["train.aah_targets=labels"]).train.aah_targets == "labels"


def test_attribute_net_backbone_defaults_to_the_reid_one_and_can_differ():
    cfg = load_config(None, ["model.backbone=mobilenet_v2"])
    assert (cfg.model.attr_backbone, cfg.model.attribute_backbone()) == ("", "mobilenet_v2")
    assert cfg.model.attribute_pretrained() == "true"
    cfg = load_config(None, ["model.attr_backbone=mobilenet_v2", "model.attr_pretrained=/w/mb.safetensors",
                             "model.pretrained=false"])
    assert (cfg.model.backbone, cfg.model.attribute_backbone()) == ("resnet50", "mobilenet_v2")
    assert (cfg.model.pretrained, cfg.model.attribute_pretrained()) == ("false", "/w/mb.safetensors")
    assert from_dict(to_dict(cfg)).model.attribute_backbone() == "mobilenet_v2"
    old = to_dict(load_config())
    del old["model"]["attr_backbone"], old["model"]["attr_pretrained"]  # a config saved before the keys existed
    assert from_dict(old).model.attribute_backbone() == "resnet50"
    with pytest.raises(ConfigError, match="model.attr_backbone='vgg16' is not one of: , resnet18"):
        load_config(None, ["model.attr_backbone=vgg16"])


def _probes(rule: str) -> tuple[list[float], list[float]]:
    """(values a RANGES rule refuses, values at its closed bounds or just inside its open ones)."""
    if rule[0] == ">":
        op, bound = rule.split()
        b = float(bound)
        return ([b - 1], [b]) if op == ">=" else ([b - 1, b], [b + 0.5])
    lo, hi = map(float, rule[1:-1].split(","))
    bad = [lo - 1 if rule[0] == "[" else lo, hi + 1 if rule[-1] == "]" else hi]
    good = [lo if rule[0] == "[" else (lo + hi) / 2, hi if rule[-1] == "]" else (lo + hi) / 2]
    return bad, good


def _with(key: str, value: float) -> list[str]:
    """Overrides setting ``key`` (a one-element list for list keys, with a partner of the same length)."""
    section, name = key.split(".")
    if not isinstance(getattr(getattr(Config(), section), name), list):
        return [f"{key}={value}"]
    partner = {"optim.milestones": "optim.milestone_lrs=[0.1]", "optim.milestone_lrs": "optim.milestones=[5]"}
    return [f"{key}=[{value}]", *([partner[key]] if key in partner else [])]


@pytest.mark.parametrize("key", sorted(__import__("sangal.config", fromlist=["RANGES"]).RANGES))
def test_every_range_refuses_values_outside_it_and_keeps_its_bounds(key):
    from sangal.config import RANGES

    bad, good = _probes(RANGES[key])
    section, name = key.split(".")
    each = "each element " if isinstance(getattr(getattr(Config(), section), name), list) else ""
    for value in bad:
        with pytest.raises(ConfigError) as err:
            load_config(None, _with(key, value))
        assert "\n" not in str(err.value) and str(err.value).startswith(f"{key}=")
        assert f"is out of range: {each}must be" in str(err.value) and RANGES[key] in str(err.value)
    for value in good:
        load_config(None, _with(key, value))


def test_every_numeric_key_has_a_range():
    from sangal.config import RANGES

    numeric = [f"{section}.{k}" for section, sub in to_dict(Config()).items() if isinstance(sub, dict)
               for k, v in sub.items()
               if (isinstance(v, (int, float)) and not isinstance(v, bool))
               or (isinstance(v, list) and v and all(isinstance(x, (int, float)) for x in v))]
    assert sorted(set(numeric) - set(RANGES)) == ["model.asam_stages"]  # its own rule: distinct stages among 2, 3, 4


def test_each_wrong_value_is_one_line_and_nan_is_refused():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["train.epochs=-2", "data.flip=1.5", "optim.lr=.nan", "model.mode=x"])
    assert str(err.value).splitlines() == [
        "model.mode='x' is not one of: id, id+attr, san-gal",
        "data.flip=1.5 is out of range: must be in [0, 1]",
        "optim.lr=nan is out of range: must be in [0, 10]",
        "train.epochs=-2 is out of range: must be in [1, 10000]",
    ]


def test_a_config_with_the_retired_key_name_still_loads(tmp_path):
    """`name:` (set by every shipped YAML until it was found unread) is accepted and ignored; unknown keys are not."""
    old = tmp_path / "old.yaml"
    old.write_text("name: market1501-san-gal\nout: runs/x\n")
    cfg = load_config(old, ["name=y"])
    assert cfg.out == "runs/x" and not hasattr(cfg, "name") and "name" not in to_dict(cfg)
    old.write_text("nmae: typo\n")
    with pytest.raises(ConfigError, match="unknown key 'nmae'"):
        load_config(old)
