"""The heat maps a Re-ID training batch gets: read from the offline cache, or computed online (dual trace)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from sangal.aah.spec import MapSpec
from sangal.config import Config, parse_pretrained
from sangal.data.attributes import get_schema, schema_name
from sangal.errors import ConfigError

log = logging.getLogger(__name__)


def uses_training_maps(cfg: Config) -> bool:
    """Whether a Re-ID run reads training heat maps: ASAM takes them (san-gal) or the attention-guidance loss pulls
    the net's own attention toward them (``loss.guide`` > 0, any mode; nothing of them is used at test time)."""
    return cfg.model.mode == "san-gal" or cfg.loss.guide > 0


class AAHSource:
    """Heat maps for a training batch: read from the offline cache or computed online (dual trace)."""

    def __init__(self, cfg: Config, records, targets, device: torch.device, paths: dict):
        self.mode = cfg.train.aah
        self.device = device
        self.attr_net = None
        self.cache = None
        self.spec = MapSpec.from_config(cfg)
        self.align = cfg.train.aah_align
        self.image_size = (cfg.data.height, cfg.data.width)
        self.confusion = held_out_confusion(paths["attr_checkpoint"]) if self.spec.targets == "noisy" else None
        self.labels = None if targets is None else torch.as_tensor(targets, dtype=torch.long)  # (N, K)
        if self.mode == "offline":
            from sangal.aah.cache import AAHCache

            self.cache = AAHCache.open(paths["aah"], self.spec, "train", attr_checkpoint=paths["attr_checkpoint"],
                                       records=records, size=(cfg.data.height, cfg.data.width))
        elif self.spec.targets in ("soft", "noisy"):
            raise ConfigError(f"train.aah_targets={self.spec.targets} reads every class's map from the offline cache: "
                              "use train.aah=offline (the online branch makes labels, predicted or agnostic maps)")
        else:
            self.attr_net = _online_attribute_net(cfg, paths["attr_checkpoint"], device)
            self.attr_net.train()

    def parameters(self):
        return list(self.attr_net.parameters()) if self.attr_net is not None else []

    def __call__(self, batch: dict, images: torch.Tensor, attrs: torch.Tensor, seed: int = 0):
        """Return (aah, extra loss terms). Online: the attribute loss is the second backward pass. ``seed``: the
        step's draw of noisy training classes (a pure function of the schedule position)."""
        if self.cache is not None:
            maps = self._cached(batch, seed)  # computed on the un-augmented image
            if self.align and "shift" in batch:
                from sangal.aah.align import align_heatmaps

                maps = align_heatmaps(maps, batch["shift"], self.image_size)  # follow the pad-and-crop
            return tuple(m.to(self.device) for m in maps), {}
        from sangal.aah.modes import online_maps
        from sangal.train.losses import attribute_ce

        out = self.attr_net(images)  # on the augmented image itself: no alignment needed
        maps = online_maps(out, self.spec.mode("train"), attrs, self.attr_net.num_classes, self.spec.normalize)
        return maps, {"attr_branch": attribute_ce(out.logits, attrs)}  # second backward: the loss


    def _cached(self, batch: dict, seed: int):
        """A batch's training maps, read off every class's map in the cache (one exact pass serves every mode)."""
        from sangal.aah.classes import draw_classes, maps_for_mode

        every = self.cache.class_maps(batch["index"].tolist())
        targets = self.spec.targets
        if targets in ("agnostic", "soft"):
            return maps_for_mode(every, targets, normalize=self.spec.normalize)
        if targets == "predicted":
            return maps_for_mode(every, "select", every.predicted(), normalize=self.spec.normalize)
        if self.labels is None:
            raise ConfigError(f"train.aah_targets={targets} needs the attribute labels of the training images")
        labels = self.labels[batch["index"].cpu()]  # (B, K)
        if targets == "noisy":
            labels = draw_classes(labels, self.confusion, torch.Generator().manual_seed(seed))
        classes = torch.where(labels < 0, every.predicted(), labels)  # unlabelled: the predicted class
        return maps_for_mode(every, "select", classes, normalize=self.spec.normalize)


def held_out_confusion(attr_checkpoint: Path) -> list[torch.Tensor]:
    """Per head, P(prediction | true class) of the attribute net on identities it never trained on
    (recorded by `sangal train-attr` with attr_train.holdout > 0): the errors noisy training maps carry."""
    from sangal.store.checkpoint import load_checkpoint

    recorded = load_checkpoint(attr_checkpoint, expected_kind="attribute").state.get("confusion")
    if not recorded:
        raise ConfigError(f"train.aah_targets=noisy draws classes from the attribute net's held-out confusion, which "
                          f"{attr_checkpoint} does not record: train it with attr_train.holdout > 0")
    return [torch.tensor(m, dtype=torch.float32) for m in recorded["matrices"]]


def _online_attribute_net(cfg: Config, ckpt_dir: Path, device: torch.device):
    """The online branch starts from the pretrained attribute checkpoint, else from the configured weights."""
    from sangal.store.checkpoint import load_model

    if Path(ckpt_dir).exists():
        return load_model(ckpt_dir, expected_kind="attribute", device=str(device))[0]
    from sangal.models.arch import arch_for, build_model

    log.warning("no attribute checkpoint at %s: the online attribute branch starts from %s", ckpt_dir,
                "ImageNet weights" if parse_pretrained(cfg.model.attribute_pretrained()) else "scratch")
    arch = arch_for(cfg, "attribute", attr_classes=targets_classes(cfg))
    return build_model(arch, parse_pretrained(cfg.model.attribute_pretrained())).to(device)


def targets_classes(cfg: Config) -> list[int]:
    """Classes per head of the attribute schema the config's dataset reads."""
    return get_schema(schema_name(cfg.data.dataset), cfg.data.colour_mode).num_classes
