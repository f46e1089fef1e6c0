"""Networks rebuilt from saved weights without drawing the random ones first.

A model built under ``torch.device("meta")`` has shapes but no storage and draws no random numbers; the saved
tensors are then put in place (``load_state_dict(assign=True)``). Loading a checkpoint therefore costs no
initialisation (a third of a ResNet-18 build's CPU) and leaves the global RNG where it was, so what draws after
a load does not depend on whether something was loaded before it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from itertools import chain

import torch
from torch import Tensor, nn

from sangal.errors import CheckpointError

__all__ = ["assign_weights", "build_skeleton", "check_materialised", "is_skeleton", "unsaved_buffers"]


def build_skeleton(build: Callable[[], nn.Module]) -> nn.Module:
    """``build()`` on the meta device: every parameter and buffer has its shape and dtype, none has storage."""
    with torch.device("meta"):
        return build()


def is_skeleton(model: nn.Module) -> bool:
    """Whether any parameter or buffer of ``model`` is still on the meta device."""
    return any(t.is_meta for t in _tensors(model))


def unsaved_buffers(model: nn.Module) -> list[str]:
    """Buffers no state dict holds (``persistent=False``): a skeleton cannot get them from a file."""
    saved = set(model.state_dict(keep_vars=True))
    return [name for name, _ in model.named_buffers(remove_duplicate=False) if name not in saved]


def assign_weights(model: nn.Module, weights: Mapping[str, Tensor], strict: bool = True) -> nn.Module:
    """Put ``weights`` in place of the skeleton's tensors, each cast to the dtype the model declares (as
    ``copy_`` would); parameters and buffers shared under several names stay one tensor; ``requires_grad``
    stays as built. The caller has checked names and shapes; ``load_state_dict`` checks them again."""
    declared = model.state_dict(keep_vars=True)
    cast = {k: (t.to(declared[k].dtype) if k in declared else t) for k, t in weights.items()}
    ties = _ties(model)
    model.load_state_dict(cast, strict=strict, assign=True)
    for first, *others in ties:
        tensor = _get(model, first)
        for name in others:
            owner, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(owner), leaf, tensor)
    return model


def check_materialised(model: nn.Module, source: object) -> None:
    """CheckpointError if a tensor of ``model`` was left on the meta device (it would fail at its first use)."""
    left = [name for name, t in _named_tensors(model) if t.is_meta]
    if left:
        raise CheckpointError(f"{source} left {len(left)} tensors of the model unloaded on the meta device "
                              f"({', '.join(left[:4])}{', ...' if len(left) > 4 else ''})")


def _named_tensors(model: nn.Module):
    return chain(model.named_parameters(remove_duplicate=False), model.named_buffers(remove_duplicate=False))


def _tensors(model: nn.Module):
    return (t for _, t in _named_tensors(model))


def _ties(model: nn.Module) -> list[list[str]]:
    """Names that share one parameter or buffer object, in groups of two or more."""
    groups: dict[int, list[str]] = {}
    for name, tensor in _named_tensors(model):
        groups.setdefault(id(tensor), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def _get(model: nn.Module, name: str) -> Tensor:
    owner, _, leaf = name.rpartition(".")
    return getattr(model.get_submodule(owner), leaf)
