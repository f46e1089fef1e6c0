"""`sangal export`: one ONNX graph from a normalised image batch to the retrieval embedding.

Inputs and outputs of the graph (batch size dynamic):

* ``images``: (B, 3, H, W) float32, already normalised with the test transform
  (resize to the checkpoint's H x W, ImageNet mean/std; ``sangal.data.build_transforms``).
* ``embedding``: (B, D) float32, the L2-normalised BN-neck feature (cosine
  similarity = dot product), as ``sangal index`` stores it.
* ``attr_probs``: (B, sum C_k) float32, the softmax of each attribute head
  concatenated head by head (names and classes in the model's metadata); only
  for ``id+attr`` and ``san-gal``.

A ``san-gal`` graph holds the attribute network and the distilled map
predictor (:mod:`sangal.aah.fast`): heat maps from the forward pass alone,
layer4 exact. An exact-Grad-CAM model cannot be exported (ONNX graphs have no
backward pass), so a san-gal checkpoint whose attribute checkpoint has no
``map_predictor.safetensors`` is refused (run ``sangal distill``).

``flip=True`` averages each image's features with its mirror's inside the
graph (heat maps mirrored, as in :func:`sangal.evaluate.features.extract_features`
and ``sangal index``); the default graph embeds the image only. Opset:
:data:`OPSET` (17) by default, through the TorchScript-based exporter.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sangal.errors import CheckpointError, ConfigError

__all__ = ["OPSET", "EmbeddingGraph", "export_onnx", "load_embedding_graph"]

log = logging.getLogger(__name__)

#: Default ONNX opset (onnxruntime >= 1.17 runs it; Einsum, Resize, Gather, ArgMax are all it needs).
OPSET = 17


class EmbeddingGraph(nn.Module):
    """A Re-ID checkpoint's whole test-time pipeline as one module: images -> (embedding, attr_probs).

    Args:
        reid: the ReIDNet (eval mode).
        attr_net: the AttributeNet (san-gal only).
        predictor: its distilled MapPredictor (san-gal only).
        normalize: heat-map normalisation the Re-ID net was trained with.
        flip: average with the mirrored image's features.
    """

    def __init__(self, reid: nn.Module, attr_net: nn.Module | None = None, predictor: nn.Module | None = None,
                 normalize: str = "max", flip: bool = False, agnostic: bool = False) -> None:
        super().__init__()
        self.reid = reid.eval()
        self.mode = str(getattr(reid, "mode", "id"))
        if self.mode == "san-gal" and (attr_net is None or predictor is None):
            raise ConfigError("a san-gal EmbeddingGraph needs the attribute net and its distilled map predictor")
        self.attr_net = attr_net.eval() if attr_net is not None and self.mode == "san-gal" else None
        self.predictor = predictor.eval() if predictor is not None and self.mode == "san-gal" else None
        self.normalize = normalize
        self.agnostic = agnostic  # class-agnostic maps (sangal.aah.modes) for models trained on them
        self.flip = flip
        self.has_attributes = getattr(reid, "attr_heads", None) is not None

    def _embed(self, x: Tensor, aah: tuple[Tensor, Tensor, Tensor] | None) -> tuple[Tensor, Tensor | None]:
        out = self.reid(x) if aah is None else self.reid(x, aah)
        probs = None
        if out.attr_logits:
            probs = torch.cat([torch.softmax(z.float(), dim=1) for z in out.attr_logits], dim=1)  # (B, sum C)
        return out.features.float(), probs  # (B, D)

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        """(B, 3, H, W) -> embedding (B, D) [, attr_probs (B, sum C_k)]."""
        aah = None
        if self.attr_net is not None:
            from sangal.aah.fast import fast_attribute_heatmaps

            aah = fast_attribute_heatmaps(self.attr_net, self.predictor, images, None, self.normalize,
                                          agnostic=self.agnostic)
        feats, probs = self._embed(images, aah)
        if self.flip:
            mirrored = None if aah is None else tuple(a.flip(-1) for a in aah)
            feats2, probs2 = self._embed(images.flip(-1), mirrored)  # type: ignore[arg-type]
            feats = (feats + feats2) / 2
            probs = None if probs is None or probs2 is None else (probs + probs2) / 2
        embedding = F.normalize(feats, dim=1)
        return (embedding,) if probs is None else (embedding, probs)


def load_embedding_graph(checkpoint: str | Path, attr_checkpoint: str | Path | None = None,
                         flip: bool = False, device: str = "cpu") -> tuple[EmbeddingGraph, dict[str, Any]]:
    """The :class:`EmbeddingGraph` of a Re-ID checkpoint and the metadata the ONNX file records.

    Raises:
        CheckpointError: san-gal checkpoint without a usable attribute checkpoint or distilled predictor.
    """
    from sangal.store.checkpoint import MODEL_FILE, file_sha256, load_model
    from sangal.store.reid_info import aah_agnostic, aah_normalize, find_attribute_checkpoint, input_size

    reid, ckpt = load_model(checkpoint, expected_kind="reid", device=device)
    mode = str(ckpt.arch.get("mode", "san-gal"))
    height, width = input_size(ckpt)
    attr_net = predictor = None
    normalize = aah_normalize(ckpt)
    meta: dict[str, Any] = {"mode": mode, "height": height, "width": width, "flip": flip,
                            "checkpoint_sha256": file_sha256(Path(checkpoint) / MODEL_FILE),
                            "attr_classes": list(ckpt.arch.get("attr_classes") or []),
                            "dataset": ckpt.arch.get("dataset"), "colour_mode": ckpt.arch.get("colour_mode")}
    if mode == "san-gal":
        attr_checkpoint = find_attribute_checkpoint(ckpt, attr_checkpoint)
        from sangal.aah.predictor import DISTILL_HINT, PREDICTOR_FILE, load_map_predictor

        if not (Path(attr_checkpoint) / PREDICTOR_FILE).is_file():
            raise CheckpointError(f"cannot export san-gal checkpoint {checkpoint}: exact Grad-CAM needs a backward "
                                  f"pass, which ONNX graphs lack, and attribute checkpoint {attr_checkpoint} has no "
                                  f"distilled map predictor ({PREDICTOR_FILE}); {DISTILL_HINT.split(' or ')[0]}")
        attr_net, _ = load_model(attr_checkpoint, expected_kind="attribute", device=device)
        predictor = load_map_predictor(attr_checkpoint, device=device)
        meta.update(aah="fast", aah_normalize=normalize, aah_agnostic=aah_agnostic(ckpt),
                    attr_checkpoint_sha256=file_sha256(Path(attr_checkpoint) / MODEL_FILE))
    return EmbeddingGraph(reid, attr_net, predictor, normalize, flip, aah_agnostic(ckpt)).eval(), meta


def export_onnx(checkpoint: str | Path, out: str | Path, attr_checkpoint: str | Path | None = None,
                opset: int = OPSET, flip: bool = False, check: bool = True) -> dict[str, Any]:
    """Write the ONNX graph of a Re-ID checkpoint to ``out``; returns its metadata.

    With ``check`` (and onnxruntime installed) the file is run on a batch of
    another size than the trace's and compared with PyTorch: ``max_abs_diff``.
    """
    import onnx

    from sangal.version import __version__

    graph, meta = load_embedding_graph(checkpoint, attr_checkpoint, flip=flip)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    outputs = ["embedding", "attr_probs"] if graph.has_attributes else ["embedding"]
    example = torch.randn(2, 3, meta["height"], meta["width"], generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notices
        torch.onnx.export(graph, (example,), str(out), dynamo=False, opset_version=opset, input_names=["images"],
                          output_names=outputs, dynamic_axes={name: {0: "batch"} for name in ["images", *outputs]})
    model = onnx.load(str(out))
    meta.update(opset=opset, outputs=outputs, sangal_version=__version__)
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    onnx.save(model, str(out))
    if check:
        meta["max_abs_diff"] = check_onnx(out, graph, meta["height"], meta["width"])
    log.info("exported %s model to %s (opset %d)", meta["mode"], out, opset)
    return meta


def check_onnx(path: str | Path, graph: EmbeddingGraph, height: int, width: int, batch: int = 3) -> float | None:
    """Max abs difference of the embedding between onnxruntime and PyTorch (None without onnxruntime)."""
    try:
        import onnxruntime as ort
    except ImportError:
        log.warning("onnxruntime is not installed (pip install 'sangal[export]'): the graph was not checked")
        return None
    images = torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(1))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": images.numpy()})
    with torch.no_grad():
        want = graph(images)
    return float(np.abs(got[0] - want[0].numpy()).max())
