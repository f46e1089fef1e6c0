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

The graph is the traced :class:`~sangal.evaluate.predictor.Predictor`, the very module ``sangal evaluate``
and ``sangal index`` embed with, and it embeds as the checkpoint records (:class:`~sangal.evaluate.embedding.
EmbedSpec`, written to the metadata as ``embed_spec``): with the flip-average inside the graph (heat maps
mirrored) when the checkpoint was trained with ``eval.flip``; a ``flip`` that contradicts the record is refused.
Its maps are always fast: a checkpoint that records exact maps exports with the distilled ones (a warning
says so; the metadata records it), and always float32: onnxruntime has no bf16 convolution on CPU, so a model
trained under ``train.amp`` (bf16 maps) exports with float32 maps, a warning stating the bound
:data:`BF16_GRAPH_BOUND` (measured) and the metadata's ``embed_spec`` saying float32. Opset: :data:`OPSET` (17)
by default, through the TorchScript-based exporter.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sangal.errors import CheckpointError, ConfigError
from sangal.evaluate.embedding import EmbedSpec
from sangal.evaluate.predictor import Predictor
from sangal.store.files import atomic_file
from sangal.store.outputs import check_output

__all__ = ["BF16_GRAPH_BOUND", "OPSET", "export_onnx", "load_predictor"]

log = logging.getLogger(__name__)

#: Default ONNX opset (onnxruntime >= 1.17 runs it; Einsum, Resize, Gather, ArgMax are all it needs).
OPSET = 17
#: How far the float32-map graph of a bf16-map model (train.amp) embeds from its index: 1.1e-3 measured on the
#: agreement test's random-weight model (fast maps; float32 vs bf16 index 1.0e-3 exact, 1.1e-3 fast), x 3.
BF16_GRAPH_BOUND = 3e-3


def load_predictor(checkpoint: str | Path, attr_checkpoint: str | Path | None = None, flip: bool | None = None,
                   device: str = "cpu") -> tuple[Predictor, dict[str, Any]]:
    """The forward-only :class:`~sangal.evaluate.predictor.Predictor` of a Re-ID checkpoint (the graph to trace)
    and the metadata the ONNX file records. ``flip``: None, or what the caller expects the record to say.

    Raises:
        CheckpointError: san-gal checkpoint without a usable attribute checkpoint or distilled predictor.
        ConfigError: ``flip`` contradicts the checkpoint's record.
    """
    from sangal.aah.fast_map_files import DISTILL_HINT, FAST_MAP_NET_FILE
    from sangal.store.checkpoint import load_checkpoint
    from sangal.store.reid_info import find_attribute_checkpoint

    ckpt = load_checkpoint(checkpoint, expected_kind="reid")
    recorded = EmbedSpec.from_checkpoint(ckpt)
    if flip is not None and flip != recorded.flip:
        raise ConfigError(f"checkpoint {checkpoint} records flip={recorded.flip} (eval.flip at training); a graph "
                          f"with flip={flip} would not embed as evaluate and index do: drop the flip option, the "
                          f"checkpoint decides it")
    if ckpt.arch.get("mode", "san-gal") == "san-gal":
        attr_checkpoint = find_attribute_checkpoint(ckpt, attr_checkpoint)
        load_checkpoint(attr_checkpoint, expected_kind="attribute")  # a Re-ID checkpoint here: "is kind reid"
        if not (Path(attr_checkpoint) / FAST_MAP_NET_FILE).is_file():
            raise CheckpointError(f"cannot export san-gal checkpoint {checkpoint}: exact Grad-CAM needs a backward "
                                  f"pass, which ONNX graphs lack, and attribute checkpoint {attr_checkpoint} has no "
                                  f"distilled map predictor ({FAST_MAP_NET_FILE}); {DISTILL_HINT.split(' or ')[0]}")
    else:
        attr_checkpoint = None  # an id / id+attr graph embeds with the Re-ID net alone
    predictor = Predictor.from_checkpoint(checkpoint, attr_checkpoint, device, method="fast")
    if predictor.mode == "san-gal" and recorded.maps.method != "fast":
        log.warning("checkpoint %s records %s test maps; the graph computes the distilled (fast) ones, so its "
                    "features differ from `sangal evaluate`'s", checkpoint, recorded.maps.method)
    if predictor.mode == "san-gal" and recorded.maps.precision != "float32":
        log.warning("checkpoint %s records %s heat maps (train.amp); the graph computes them in float32 (onnxruntime "
                    "has no bf16 convolution on CPU), so its embeddings differ from `sangal index`'s by up to %g "
                    "(tests/test_export.py)", checkpoint, recorded.maps.precision, BF16_GRAPH_BOUND)
        predictor.embedding = replace(predictor.embedding, maps=replace(predictor.spec, precision="float32"))
    arch, source = predictor.source["arch"], predictor.source
    meta: dict[str, Any] = {"mode": predictor.mode, "height": predictor.size[0], "width": predictor.size[1],
                            "embed_spec": predictor.embedding.to_dict(), "checkpoint_sha256": source["sha256"],
                            "attr_classes": list(arch.get("attr_classes") or []), "dataset": arch.get("dataset"),
                            "colour_mode": arch.get("colour_mode")}
    if predictor.mode == "san-gal":
        meta.update(attr_checkpoint_sha256=source["attr_sha256"])
    return predictor.eval(), meta


def export_onnx(checkpoint: str | Path, out: str | Path, attr_checkpoint: str | Path | None = None,
                opset: int = OPSET, flip: bool | None = None, check: bool = True) -> dict[str, Any]:
    """Write the ONNX graph of a Re-ID checkpoint to ``out`` (atomically); returns its metadata.

    ``out`` is refused before any work when it is one of the checkpoints' files or cannot be written.

    With ``check`` (and onnxruntime installed) the file is run on a batch of
    another size than the trace's and compared with PyTorch: ``max_abs_diff``.
    """
    import onnx

    from sangal.version import __version__

    inputs = {"--checkpoint": checkpoint, "--attr-checkpoint": attr_checkpoint}
    out = check_output(out, inputs, "--out")  # before any work: never onto a checkpoint's own files
    graph, meta = load_predictor(checkpoint, attr_checkpoint, flip=flip)
    check_output(out, {"the attribute checkpoint": graph.attr_checkpoint}, "--out")  # the one training recorded
    out.parent.mkdir(parents=True, exist_ok=True)
    outputs = ["embedding", "attr_probs"] if graph.attr_source == "reid" else ["embedding"]
    example = torch.randn(2, 3, meta["height"], meta["width"], generator=torch.Generator().manual_seed(0))
    with atomic_file(out) as tmp:  # graph, metadata and check on a temp file; an existing `out` stays whole
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notices
            torch.onnx.export(graph, (example,), str(tmp), dynamo=False, opset_version=opset,
                              input_names=["images"], output_names=outputs,
                              dynamic_axes={name: {0: "batch"} for name in ["images", *outputs]})
        model = onnx.load(str(tmp))
        meta.update(opset=opset, outputs=outputs, sangal_version=__version__)
        for key, value in meta.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, json.dumps(value)
        onnx.save(model, str(tmp))
        if check:
            meta["max_abs_diff"] = check_onnx(tmp, graph, meta["height"], meta["width"])
    log.info("exported %s model to %s (opset %d)", meta["mode"], out, opset)
    return meta


def check_onnx(path: str | Path, graph: Predictor, height: int, width: int, batch: int = 3) -> float | None:
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
