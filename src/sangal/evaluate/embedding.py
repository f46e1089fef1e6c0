"""How a Re-ID model embeds an image at test time: one frozen record, written at training, read by every consumer.

:class:`EmbedSpec` holds the heat maps (:class:`~sangal.aah.spec.MapSpec`: class choice, method, normalisation
and precision), the flip-average and the input size. Training writes it into every Re-ID
checkpoint (``state["embed_spec"]``), ``sangal index`` into every index (``meta.json``), ``sangal export`` into
the ONNX metadata; :class:`~sangal.evaluate.predictor.Predictor` embeds with nothing else, so evaluate, index,
search, serve, export and the demo report compute one vector per image. This is the one place the flip is decided.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from sangal.aah.spec import MapSpec
from sangal.errors import CheckpointError
from sangal.store.checkpoint import Checkpoint
from sangal.store.reid_info import input_size

__all__ = ["LEGACY_FLIP", "EmbedSpec"]

#: The flip of a checkpoint or index written before the record, where it says nothing: a checkpoint's is the one
#: its training config evaluated with (``eval.flip``), an index's its own ``features.flip`` (always on).
LEGACY_FLIP = True


@dataclass(frozen=True)
class EmbedSpec:
    """The test-time embedding of a Re-ID model.

    Attributes:
        maps: how the heat maps of a san-gal model are made (ignored by ``id`` and ``id+attr``, which use none).
        flip: average each image's features with those of its mirror (maps mirrored with it).
        height, width: the input size, as the model was trained.
    """

    maps: MapSpec
    flip: bool
    height: int
    width: int

    @property
    def size(self) -> tuple[int, int]:
        return self.height, self.width

    @classmethod
    def from_config(cls, cfg: Any) -> EmbedSpec:
        """The record a config trains: the map spec, ``eval.flip``, ``data.height`` x ``data.width``."""
        return cls(MapSpec.from_config(cfg), bool(cfg.eval.flip), int(cfg.data.height), int(cfg.data.width))

    @classmethod
    def from_dict(cls, record: Any, where: str) -> EmbedSpec:
        """A record as :meth:`to_dict` wrote it; CheckpointError naming ``where`` when it is not one."""
        try:
            maps = MapSpec.from_state({"map_spec": dict(record["map_spec"])})
            flip, height, width = record["flip"], int(record["height"]), int(record["width"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{where}: embed_spec {record!r} is not a test-time record (map_spec, flip, "
                                  f"height, width); rewrite it with this version of sangal") from None
        if not isinstance(flip, bool):
            raise CheckpointError(f"{where}: embed_spec flip must be true or false, got {flip!r}")
        return cls(maps, flip, height, width)

    @classmethod
    def from_checkpoint(cls, ckpt: Checkpoint) -> EmbedSpec:
        """The record of a Re-ID checkpoint; one written before the record: its map spec and input size, and the
        flip its training config evaluated with (:data:`LEGACY_FLIP` when it records none)."""
        size = input_size(ckpt)
        if "embed_spec" in ckpt.state:
            record = cls.from_dict(ckpt.state["embed_spec"], f"checkpoint {ckpt.path}")
            if record.size != size:
                raise CheckpointError(f"checkpoint {ckpt.path}: embed_spec input {record.height}x{record.width} is "
                                      f"not the {size[0]}x{size[1]} its arch records; the checkpoint is damaged")
            return record
        config = ckpt.state.get("config")
        section = config.get("eval") if isinstance(config, dict) else None
        flip = section.get("flip", LEGACY_FLIP) if isinstance(section, dict) else LEGACY_FLIP
        return cls(MapSpec.from_state(ckpt.state), bool(flip), *size)

    @classmethod
    def from_index(cls, meta: dict[str, Any], recorded: EmbedSpec, where: str) -> EmbedSpec:
        """The record an index's features were embedded with (its ``meta.json``), so its queries embed alike;
        ``recorded``: its checkpoint's. An index written before the record: the checkpoint's, with the index's own
        map method (``aah``, default exact) and flip (``features.flip``)."""
        if "embed_spec" in meta:
            return cls.from_dict(meta["embed_spec"], where)
        features = meta.get("features") if isinstance(meta.get("features"), dict) else {}
        return replace(recorded.with_method(str(meta.get("aah", "exact"))),
                       flip=bool(features.get("flip", LEGACY_FLIP)))

    def to_dict(self) -> dict[str, Any]:
        return {"map_spec": self.maps.to_dict(), "flip": self.flip, "height": self.height, "width": self.width}

    def with_method(self, method: str | None) -> EmbedSpec:
        """The same record with the test-time maps computed another way (None: unchanged)."""
        return replace(self, maps=self.maps.with_method(method))

    def differences(self, other: EmbedSpec, allowed: tuple[str, ...] = ()) -> list[str]:
        """What ``other`` changes of this record but the fields in ``allowed``, as ``name=theirs (recorded: ours)``
        items (empty: the same record)."""
        ours, theirs = self.to_dict(), other.to_dict()
        ours.update(ours.pop("map_spec"))
        theirs.update(theirs.pop("map_spec"))
        return [f"{key}={theirs.get(key)} (recorded: {ours.get(key)})" for key in sorted(set(ours) | set(theirs))
                if ours.get(key) != theirs.get(key) and key not in allowed]
