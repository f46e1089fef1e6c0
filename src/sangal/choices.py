"""The allowed values of every choice a config makes, once: the config checks and the implementations import them.

Each tuple is the one list of its names; a table keyed by them (the backbone table, the dataset readers) is held
equal to it by its package's tests.
"""

from __future__ import annotations

DATASETS = ("market1501", "dukemtmc", "msmt17", "cuhk03np_detected", "cuhk03np_labeled", "csv", "folder", "synthetic")
ON_BAD_IMAGE = ("error", "skip")  # stop naming the file | drop it and list it in <out>
COLOUR_MODES = ("binary", "merged")  # one head per .mat field | one colour head per body part
BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", "mobilenet_v2")  # sangal.models.backbone.BACKBONES
REID_MODES = ("id", "id+attr", "san-gal")  # paper Table 1
ASAM_FORMS = ("paper", "mean1", "residual", "gated", "mixed")  # sangal.models.asam
OPTIMIZERS = ("sgd", "adam")
ATTR_LOSSES = ("ce", "balanced")  # attribute cross-entropy: plain | class-balanced
MAP_NORMALIZE = ("max", "minmax", "none")  # per-map normalisation of heat maps
MAP_SOURCES = ("offline", "online")  # train.aah: cached maps | the dual-trace branch
TRAIN_TARGETS = ("labels", "predicted", "agnostic", "soft", "noisy")  # which class training maps follow
MAP_METHODS = ("exact", "fast")  # Grad-CAM | the distilled predictor
METRICS = ("cosine", "euclidean")
SAME_CAMERA = ("auto", "exclude", "keep")
