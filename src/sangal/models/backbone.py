"""ResNet backbone shared by the attribute and Re-ID networks (paper §3.1).

Both SAN-GAL branches use "the same backbone structure but do not share
parameters" (§3, special skill 2), so each network builds its own
:class:`ResNetBackbone`. The module exposes the torchvision ResNet stages
one by one (staged forward), so the Re-ID network can insert ASAM after
``layer2``, ``layer3`` and ``layer4`` and Grad-CAM can take gradients with
respect to those stage outputs without hooks.

Parameter names are exactly torchvision's (``conv1.weight``,
``layer1.0.bn1.running_mean``, ...) minus the ``fc.*`` classifier, so a
torchvision ``state_dict`` loads directly.

Pretrained weights:

* ``pretrained=True``: torchvision's ImageNet weights (``IMAGENET1K_V1``)
  through its weights API (download cached under ``$TORCH_HOME``). Offline,
  a :class:`~sangal.errors.WeightsError` says how to supply them instead.
* ``pretrained="/path/file"``: a local ``.safetensors`` file or a torchvision
  ``.pth``/``.pt`` file (read with ``torch.load(weights_only=True)``). ``fc.*``
  keys are ignored; a ``module.`` or ``backbone.`` key prefix is accepted.
* ``pretrained=False``: random initialisation.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from sangal.errors import ConfigError, WeightsError

__all__ = ["ResNetBackbone", "build_backbone", "load_weights_file", "BACKBONES"]

logger = logging.getLogger(__name__)

# name -> (torchvision constructor, ImageNet weights enum member)
BACKBONES: dict[str, tuple[Callable[..., ResNet], torchvision.models.WeightsEnum]] = {
    "resnet18": (torchvision.models.resnet18, torchvision.models.ResNet18_Weights.IMAGENET1K_V1),
    "resnet34": (torchvision.models.resnet34, torchvision.models.ResNet34_Weights.IMAGENET1K_V1),
    "resnet50": (torchvision.models.resnet50, torchvision.models.ResNet50_Weights.IMAGENET1K_V1),
    "resnet101": (torchvision.models.resnet101, torchvision.models.ResNet101_Weights.IMAGENET1K_V1),
}

#: Socket timeout (seconds) while downloading ImageNet weights, so an offline
#: machine fails fast instead of hanging.
DOWNLOAD_TIMEOUT_S = 20.0

_PREFIXES = ("module.", "backbone.")
_MAX_KEYS_SHOWN = 4


class ResNetBackbone(nn.Module):
    """torchvision ResNet without its classifier, exposed stage by stage.

    Attributes:
        conv1, bn1, relu, maxpool: the stem's modules (torchvision names).
        stem: ``nn.Sequential(conv1, bn1, relu, maxpool)`` view of the stem.
        layer1 .. layer4: the four residual stages.
        channels: output channels of layer1..layer4, e.g. ``(256, 512, 1024, 2048)``.
        name: backbone name, e.g. ``"resnet50"``.
        last_stride: stride of layer4 (1 or 2).
    """

    def __init__(self, resnet: ResNet, name: str, last_stride: int) -> None:
        super().__init__()
        self.name = name
        self.last_stride = last_stride
        self.conv1 = resnet.conv1
        self.bn1 = resnet.bn1
        self.relu = resnet.relu
        self.maxpool = resnet.maxpool
        self.layer1 = resnet.layer1
        self.layer2 = resnet.layer2
        self.layer3 = resnet.layer3
        self.layer4 = resnet.layer4
        self.channels: tuple[int, int, int, int] = tuple(  # type: ignore[assignment]
            _stage_out_channels(getattr(self, f"layer{i}")) for i in range(1, 5)
        )

    @property
    def stem(self) -> nn.Sequential:
        """The stem as one module; shares the registered conv1/bn1/relu/maxpool."""
        return nn.Sequential(self.conv1, self.bn1, self.relu, self.maxpool)

    def forward_stem(self, x: Tensor) -> Tensor:
        """Stem: (B, 3, H, W) -> (B, 64, H/4, W/4)."""
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Return the outputs of layer1..layer4.

        For a (B, 3, H, W) input and ResNet-50 with last stride 1:
        (B, 256, H/4, W/4), (B, 512, H/8, W/8), (B, 1024, H/16, W/16),
        (B, 2048, H/16, W/16) (H/32, W/32 with last stride 2).
        """
        x1 = self.layer1(self.forward_stem(x))
        x2 = self.layer2(x1)
        x3 = self.layer3(x2)
        x4 = self.layer4(x3)
        return x1, x2, x3, x4

    forward_stages = forward


def _stage_out_channels(layer: nn.Sequential) -> int:
    block = layer[-1]
    if isinstance(block, Bottleneck):
        return block.bn3.num_features
    if isinstance(block, BasicBlock):
        return block.bn2.num_features
    raise TypeError(f"unexpected ResNet block {type(block).__name__}")


def _set_last_stride(resnet: ResNet, stride: int) -> None:
    """Set the stride of layer4's first block (its strided conv and its downsample)."""
    block = resnet.layer4[0]
    # torchvision's Bottleneck (ResNet v1.5) strides in conv2; BasicBlock in conv1.
    strided = block.conv2 if isinstance(block, Bottleneck) else block.conv1
    strided.stride = (stride, stride)
    block.stride = stride
    if block.downsample is not None:
        block.downsample[0].stride = (stride, stride)


def build_backbone(
    name: str = "resnet50",
    pretrained: bool | str | Path = True,
    last_stride: int = 1,
) -> ResNetBackbone:
    """Build a ResNet-18/34/50/101 backbone.

    Args:
        name: one of :data:`BACKBONES`.
        pretrained: ``True`` for torchvision's ImageNet weights, a path to a local
            ``.safetensors``/``.pth`` file, or ``False`` for random initialisation.
        last_stride: stride of layer4's first block; 1 (default, common in Re-ID:
            doubles the final map to H/16 x W/16) or 2 (the original ResNet).

    Raises:
        ConfigError: unknown name, stride or ``pretrained`` value.
        WeightsError: weights cannot be downloaded or the local file does not fit.
    """
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}; valid: {', '.join(BACKBONES)}")
    if last_stride not in (1, 2):
        raise ConfigError(f"last_stride must be 1 or 2, got {last_stride!r}")
    constructor, weights = BACKBONES[name]
    resnet = constructor(weights=None)
    backbone = ResNetBackbone(resnet, name=name, last_stride=last_stride)
    if pretrained is True:
        state = _download_state_dict(name, weights)
        _load_into(backbone, state, source=f"torchvision {weights}")
    elif isinstance(pretrained, (str, Path)):
        path = Path(pretrained)
        _load_into(backbone, load_weights_file(path), source=str(path))
        logger.info("loaded %s weights from %s", name, path)
    elif pretrained is not False:
        raise ConfigError(f"pretrained must be True, False or a file path, got {pretrained!r}")
    _set_last_stride(resnet, last_stride)
    return backbone


def _download_state_dict(name: str, weights: torchvision.models.WeightsEnum) -> dict[str, Tensor]:
    """Fetch torchvision's ImageNet weights with a bounded socket timeout."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        return weights.get_state_dict(progress=False)
    except (OSError, RuntimeError, ValueError) as exc:  # URLError, timeouts, corrupt download
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise WeightsError(
            f"cannot fetch ImageNet weights for {name} from {weights.url} ({reason}); "
            f"supply a local file with model.pretrained=/path/{name}.safetensors "
            f"(or a torchvision .pth file), or train from scratch with model.pretrained=false"
        ) from exc
    finally:
        socket.setdefaulttimeout(previous)


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
        raise WeightsError(f"weights file {path} has non-tensor entries: {_few(bad)}")
    return dict(state)


def _strip_prefixes(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Drop ``module.``/``backbone.`` prefixes (if every key has them) and ``fc.*`` keys."""
    out = dict(state)
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if out and all(k.startswith(prefix) for k in out):
                out = {k[len(prefix) :]: v for k, v in out.items()}
                changed = True
    return {k: v for k, v in out.items() if not k.startswith("fc.")}


def _load_into(backbone: ResNetBackbone, state: Mapping[str, Tensor], source: str) -> None:
    """Copy ``state`` into ``backbone``, with a WeightsError naming ``source`` on any mismatch."""
    state = _strip_prefixes(state)
    expected = backbone.state_dict()
    # BatchNorm fills a missing num_batches_tracked itself (older torchvision files lack it).
    missing = [
        k for k in expected if k not in state and not k.endswith("num_batches_tracked")
    ]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
        for k in state
        if k in expected and state[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys ({_few(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys ({_few(unexpected)})")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches ({_few(mismatched)})")
    if problems:
        raise WeightsError(
            f"weights from {source} do not fit {backbone.name}: " + "; ".join(problems)
        )
    backbone.load_state_dict(state, strict=False)


def _few(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_KEYS_SHOWN])
    return shown + (", ..." if len(items) > _MAX_KEYS_SHOWN else "")
