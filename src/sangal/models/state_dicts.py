"""Reading a backbone's weights from a file and copying them in, with one-line errors.

Used by :func:`sangal.models.backbone.build_backbone` for ``model.pretrained=/path``,
for torchvision's downloaded ImageNet weights and for the converted weights of
the offline cache (:mod:`sangal.models.weights`). Files are read safely only:
``.safetensors``, or torch files with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from sangal.errors import WeightsError

__all__ = ["load_into", "load_weights_file", "strip_prefixes"]

_PREFIXES = ("module.", "backbone.")
_MAX_KEYS_SHOWN = 4


def load_weights_file(path: str | Path) -> dict[str, Tensor]:
    """Read a state dict from a ``.safetensors`` or torch (``.pth``/``.pt``) file.

    Torch files are read with ``weights_only=True``; a checkpoint dict with a
    ``state_dict`` or ``model`` entry is unwrapped.

    Raises:
        WeightsError: the file is missing, unreadable or holds no tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: object = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, pickle refused by weights_only, ...
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise WeightsError(f"cannot read weights file {path}: {reason}") from exc
    if isinstance(state, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), Mapping):
                state = state[key]
                break
    if not isinstance(state, Mapping) or not state:
        raise WeightsError(f"weights file {path} does not hold a state dict of tensors")
    bad = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if bad:
        raise WeightsError(f"weights file {path} has non-tensor entries: {few(bad)}")
    return dict(state)


def strip_prefixes(state: Mapping[str, Tensor], dropped: Iterable[str] = ("fc",)) -> dict[str, Tensor]:
    """Drop ``module.``/``backbone.`` prefixes (if every key has them) and the keys of ``dropped`` modules.

    ``dropped`` names the torchvision model's top-level modules the backbone does
    not keep (its classifier: ``fc`` for ResNet, ``classifier`` for MobileNetV2).
    """
    out = dict(state)
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if out and all(k.startswith(prefix) for k in out):
                out = {k[len(prefix) :]: v for k, v in out.items()}
                changed = True
    heads = tuple(f"{name}." for name in dropped)
    return {k: v for k, v in out.items() if not k.startswith(heads)}


def load_into(backbone: nn.Module, state: Mapping[str, Tensor], source: str, name: str) -> None:
    """Copy ``state`` into ``backbone`` (named ``name``), with a WeightsError naming ``source`` on any mismatch."""
    expected = backbone.state_dict()
    # BatchNorm fills a missing num_batches_tracked itself (older torchvision files lack it).
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
        for k in state
        if k in expected and state[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys ({few(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys ({few(unexpected)})")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches ({few(mismatched)})")
    if problems:
        raise WeightsError(f"weights from {source} do not fit {name}: " + "; ".join(problems))
    backbone.load_state_dict(state, strict=False)


def few(items: list[str]) -> str:
    """The first few items, comma-separated, with ``...`` when more were left out."""
    shown = ", ".join(items[:_MAX_KEYS_SHOWN])
    return shown + (", ..." if len(items) > _MAX_KEYS_SHOWN else "")
