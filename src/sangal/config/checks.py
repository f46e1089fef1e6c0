"""What a configuration may hold: the allowed values of choice keys and the range of every numeric key."""

from __future__ import annotations

import math
import re
from typing import Any

from sangal import choices
from sangal.config.schema import Config
from sangal.errors import ConfigError

#: The allowed values of each choice key (the tuples of :mod:`sangal.choices`, which the implementations use too).
CHOICES: dict[str, tuple[str, ...]] = {
    "data.dataset": choices.DATASETS,
    "data.on_bad_image": choices.ON_BAD_IMAGE,
    "data.colour_mode": choices.COLOUR_MODES,
    "model.backbone": choices.BACKBONES,
    "model.attr_backbone": ("", *choices.BACKBONES),  # "": the Re-ID backbone
    "model.mode": choices.REID_MODES,
    "optim.optimizer": choices.OPTIMIZERS,
    "attr_train.optimizer": choices.OPTIMIZERS,
    "model.aah_normalize": choices.MAP_NORMALIZE,
    "train.aah": choices.MAP_SOURCES,
    "train.aah_targets": choices.TRAIN_TARGETS,
    "eval.metric": choices.METRICS,
    "eval.aah": choices.MAP_METHODS,
    "eval.same_camera": choices.SAME_CAMERA,
    "model.asam_form": choices.ASAM_FORMS,
    "attr_train.loss": choices.ATTR_LOSSES,
}

#: Learning rates above 10 and schedules past 10000 epochs are typing slips (optim.lr=1e308 overflows in training),
#: not experiments: the bounds of every rate and epoch count below.
MAX_LR, MAX_EPOCHS = 10, 10000
LR, EPOCHS, EPOCH_SPAN = f"[0, {MAX_LR}]", f"[1, {MAX_EPOCHS}]", f"[0, {MAX_EPOCHS}]"

#: What each numeric key must be: ">= a", "> a", or an interval ("[" closed, "(" open); a list: every element.
RANGES: dict[str, str] = {  # data.p, data.k >= 2: triplet mining needs a positive and a negative
    "data.height": ">= 32", "data.width": ">= 16", "data.flip": "[0, 1]", "data.pad": ">= 0", "data.erasing": "[0, 1]",
    "data.p": ">= 2", "data.k": ">= 2", "data.num_workers": ">= 0", "data.test_batch_size": ">= 1",
    "model.last_stride": "[1, 2]", "model.asam_gain": ">= 0", "optim.lr": LR, "optim.warmup_start_lr": LR,
    "optim.warmup_epochs": EPOCH_SPAN, "optim.milestones": EPOCH_SPAN, "optim.milestone_lrs": LR,
    "optim.momentum": "[0, 1)", "optim.weight_decay": ">= 0", "optim.head_lr_scale": "(0, 100]", "loss.id": ">= 0",
    "loss.triplet": ">= 0", "loss.attr": ">= 0", "loss.margin": ">= 0", "loss.label_smoothing": "[0, 1)",
    "loss.guide": ">= 0", "train.epochs": EPOCHS, "train.seed": "[0, 4294967295]", "train.checkpoint_every": ">= 0",
    "train.log_every": ">= 1", "train.eval_every": ">= 0", "train.max_steps_per_epoch": ">= 0",
    "attr_train.epochs": EPOCHS, "attr_train.batch_size": ">= 2", "attr_train.lr": LR,
    "attr_train.warmup_epochs": EPOCH_SPAN, "attr_train.milestones": EPOCH_SPAN, "attr_train.gamma": "(0, 1]",
    "attr_train.weight_decay": ">= 0", "attr_train.max_steps_per_epoch": ">= 0", "eval.k1": ">= 1", "eval.k2": ">= 1",
    "eval.lambda_value": "[0, 1]", "eval.max_rank": ">= 1", "distill.epochs": EPOCHS, "distill.lr": LR,
    "distill.batch_size": ">= 1", "distill.hidden": ">= 1", "distill.val_fraction": "[0, 1)",
    "distill.patience": ">= 0", "distill.min_delta": ">= 0", "attr_train.holdout": "[0, 1)",
    "attr_train.warmup_start_factor": ">= 0", "train.ema": "[0, 1)", "study.workers": ">= 0",
}


#: What train.device (and a command's --device) may name; whether it exists here is runtime.resolve_device's check.
DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def device_problem(value: str, setting: str = "train.device") -> str | None:
    """One line when ``value`` names no kind of device (e.g. ``potato``); ``setting``: the key or flag giving it."""
    if DEVICE.fullmatch(str(value)):
        return None
    return f"{setting}={value} is not a device: use auto, cpu, cuda, cuda:N or mps"


def _range_problem(dotted: str, value: Any, rule: str) -> str | None:
    """One line when ``value`` (any element of a list value) is not finite or breaks ``rule`` (a RANGES entry)."""
    lo, hi = map(float, rule[1:-1].split(",") if rule[0] in "[(" else (rule.split()[1], "inf"))
    closed_low, closed_high = rule[0] == "[" or rule.startswith(">="), rule[-1] != ")"
    if all(math.isfinite(v) and (lo <= v if closed_low else lo < v) and (v <= hi if closed_high else v < hi)
           for v in (value if isinstance(value, list) else [value])):
        return None
    return (f"{dotted}={value!r} is out of range: {'each element ' if isinstance(value, list) else ''}must be "
            f"{rule if rule[0] == '>' else 'in ' + rule}")


def validate(cfg: Config) -> Config:
    """Check CHOICES, RANGES and the rules between keys; ConfigError with one line per wrong value."""
    value = {k: getattr(getattr(cfg, k.split(".")[0]), k.split(".")[1]) for k in (*CHOICES, *RANGES)}
    problems = [f"{k}={value[k]!r} is not one of: {', '.join(a)}" for k, a in CHOICES.items() if value[k] not in a]
    problems += [p for k, rule in RANGES.items() if (p := _range_problem(k, value[k], rule))]
    problems += [p for p in [device_problem(cfg.train.device)] if p]
    if len(cfg.optim.milestones) != len(cfg.optim.milestone_lrs):
        problems.append("optim.milestones and optim.milestone_lrs must have the same length")
    if not (stages := cfg.model.asam_stages) or not set(stages) <= {2, 3, 4} or len(set(stages)) < len(stages):
        problems.append(f"model.asam_stages={stages} must list distinct stages among 2, 3, 4")
    if cfg.model.attr_pool and cfg.model.mode != "san-gal":
        problems.append(f"model.attr_pool=true pools under the heat maps, which model.mode={cfg.model.mode} does not "
                        "have: use model.mode=san-gal")
    if problems:
        raise ConfigError("\n".join(problems))
    return cfg


