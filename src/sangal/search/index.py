"""Gallery index: features, predicted attributes and paths of a folder of images.

An index is a directory, written atomically (hidden temp dir + rename, see
:func:`sangal.store.files.staged_dir`)::

    features.npy     float32 (N, D), L2-normalised (cosine similarity = dot product)
    attributes.npz   predicted attributes: "probs_<k>" (N, C_k) float32 per head k,
                     "labels" (N, K) int64 argmax classes (absent if nothing predicts them)
    meta.json        paths (relative to gallery_dir, row order of features.npy), absolute
                     gallery_dir, attribute schema, skipped images with reasons, checkpoint
                     path + model.safetensors sha256 (+ the attribute checkpoint's), arch,
                     the test-time record the features were embedded with ("embed_spec":
                     maps, flip, input size; queries are embedded with it too), backend,
                     creation time, sangal version, git commit, the sha256 of every other
                     file ("files") and of itself ("document_sha256")
    faiss.index      only when N >= faiss_threshold and faiss is installed

Trust. :meth:`GalleryIndex.load` checks every file against its recorded sha256, and what a
hash cannot catch: feature rows must be finite unit vectors, probabilities finite rows that
sum to 1, shapes must agree with meta.json. Paths stay inside the gallery: meta.json holds
relative paths without ``..`` (refused otherwise), images whose real path (symlinks resolved)
leaves the gallery are skipped at build time and refused when a search reads them. One
writer at a time: a second ``build_index`` on the same ``out`` stops with a BusyError; a
swap killed between its two renames is undone when the index is next loaded.

Search backends. Below ``faiss_threshold`` the search is exact: one matrix-vector
product (``features @ q``) over the memory-mapped features. At and above it a FAISS
``IndexHNSWFlat`` with inner-product metric (M=32, efConstruction=200, efSearch=
max(256, 4k)) gives sub-linear, approximate search -- that is the reason for a
threshold at all: an exact flat FAISS index would cost the same O(N*D) as numpy.
Filtered searches always scan the filtered rows exactly, so a filter never loses
matches to the graph search. faiss is optional (``pip install sangal[faiss]``):
without it, large galleries fall back to exact search with a warning.
"""

from __future__ import annotations

import json
import logging
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sangal.data.attributes import Attribute, AttributeSchema
from sangal.data.records import is_image_entry
from sangal.errors import CacheError, CheckpointError, ConfigError, DatasetError, printable
from sangal.search.integrity import REBUILD, are_probabilities, bad_rows, check_features, relative_paths
from sangal.store.files import (
    check_seal,
    file_sha256,
    output_lock,
    provenance,
    recover_aside,
    seal_json,
    staged_dir,
    verify_sha256,
)
from sangal.store.outputs import check_output

__all__ = ["GalleryIndex", "build_index", "list_gallery", "load_faiss", "INDEX_FORMAT"]

logger = logging.getLogger(__name__)

INDEX_FORMAT = 1
FEATURES_FILE = "features.npy"
ATTRIBUTES_FILE = "attributes.npz"
META_FILE = "meta.json"
FAISS_FILE = "faiss.index"
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 200
HNSW_EF_SEARCH = 256


def load_faiss() -> Any | None:
    """The faiss module, or None when the optional dependency is not installed."""
    try:
        import faiss
    except ImportError:
        return None
    return faiss


@dataclass
class GalleryIndex:
    """An index loaded in memory (features memory-mapped).

    Attributes:
        directory: the index folder.
        gallery_dir: absolute folder the paths are relative to.
        paths: image paths relative to ``gallery_dir``, one per feature row.
        features: (N, D) float32 L2-normalised features.
        attr_probs: K arrays (N, C_k), or None when the index has no attributes.
        schema: attribute schema of ``attr_probs``, or None.
        meta: everything in meta.json.
        faiss_index: the FAISS index when the index was built with one and faiss is importable.
    """

    directory: Path
    gallery_dir: Path
    paths: list[str]
    features: np.ndarray
    attr_probs: list[np.ndarray] | None
    schema: AttributeSchema | None
    meta: dict[str, Any] = field(default_factory=dict)
    faiss_index: Any | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def absolute_path(self, i: int) -> str:
        """Absolute path of gallery image ``i``; CacheError when its real path (links resolved) leaves the gallery."""
        path = self.gallery_dir / self.paths[i]
        if not path.resolve().is_relative_to(self.gallery_dir.resolve()):
            raise CacheError(f"{self.directory / META_FILE}: {printable(self.paths[i])} leads outside the gallery "
                             f"{self.gallery_dir} through a symbolic link; remove the link or {REBUILD}")
        return str(path)

    @property
    def backend(self) -> str:
        """"faiss-hnsw" when a FAISS index is loaded, else "exact"."""
        return "faiss-hnsw" if self.faiss_index is not None else "exact"

    @classmethod
    def load(cls, directory: str | Path) -> "GalleryIndex":
        """Read and check an index folder; CacheError naming the folder/file when missing, corrupt or inconsistent."""
        directory = Path(directory)
        recover_aside(directory)  # a replacement killed between its two renames left the old index aside
        meta = _read_meta(directory)
        paths = relative_paths(meta, directory / META_FILE)
        for name, sha in (meta.get("files") or {}).items():  # indexes of older versions recorded none
            verify_sha256(directory / name, sha, CacheError, REBUILD)
        try:
            features = np.load(directory / FEATURES_FILE, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise CacheError(f"{directory / FEATURES_FILE}: unreadable features ({exc}); {REBUILD}") from exc
        check_features(directory / FEATURES_FILE, features, paths, meta.get("feature_dim"))
        schema, probs = _read_attributes(directory, meta, len(paths))
        index = cls(directory, Path(meta["gallery_dir"]), paths, features, probs, schema, meta)
        if meta.get("backend") == "faiss-hnsw":
            faiss = load_faiss()
            if faiss is None:
                logger.warning("%s was built with FAISS but faiss is not installed: exact search", directory)
            else:
                fi = index.faiss_index = faiss.read_index(str(directory / FAISS_FILE))
                if (fi.ntotal, fi.d) != features.shape:
                    raise CacheError(f"{directory / FAISS_FILE}: {fi.ntotal} vectors of {fi.d} dims do not fit "
                                     f"{FEATURES_FILE} {features.shape}; {REBUILD}")
        return index


def _read_meta(directory: Path) -> dict[str, Any]:
    meta_path = directory / META_FILE
    if not meta_path.is_file():
        raise CacheError(f"{directory}: not a sangal index (no {META_FILE}); build one with `sangal index`")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CacheError(f"{meta_path}: unreadable index metadata ({exc}); {REBUILD}") from exc
    meta = check_seal(meta, meta_path, CacheError, REBUILD)
    if not isinstance(meta, dict) or meta.get("format_version") != INDEX_FORMAT:
        version = meta.get("format_version") if isinstance(meta, dict) else None
        raise CacheError(f"{meta_path}: index format {version} is not {INDEX_FORMAT}; {REBUILD}")
    missing = [k for k in ("paths", "gallery_dir", "checkpoint") if k not in meta]
    if missing:
        raise CacheError(f"{meta_path}: index metadata lacks {', '.join(missing)}; {REBUILD}")
    return meta


def _schema_from_meta(info: dict[str, Any]) -> AttributeSchema:
    """The schema stored with the index (names and classes exactly as they were indexed)."""
    attributes = tuple(Attribute(a["name"], tuple(a["classes"]), a.get("region", "body")) for a in info["schema"])
    return AttributeSchema(info["dataset"], info["colour_mode"], attributes)


def _read_attributes(
    directory: Path, meta: dict[str, Any], n: int
) -> tuple[AttributeSchema | None, list[np.ndarray] | None]:
    info = meta.get("attributes")
    if not info:
        return None, None
    schema = _schema_from_meta(info)
    path = directory / ATTRIBUTES_FILE
    try:
        with np.load(path, allow_pickle=False) as data:
            probs = [np.asarray(data[f"probs_{k}"], dtype=np.float32) for k in range(len(schema))]
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise CacheError(f"{path}: unreadable attributes ({type(exc).__name__}: {exc}); {REBUILD}") from exc
    for k, (p, a) in enumerate(zip(probs, schema.attributes)):
        if p.shape != (n, a.num_classes):
            raise CacheError(f"{path}: probs_{k} ({a.name}) has shape {p.shape}, expected ({n}, {a.num_classes}); "
                             f"{REBUILD}")
        if not are_probabilities(p):
            raise CacheError(f"{path}: probs_{k} ({a.name}) holds rows that are not probabilities; {REBUILD}")
    return schema, probs


def list_gallery(gallery_dir: str | Path) -> list[Path]:
    """Image files (.jpg/.jpeg/.png, any case) anywhere under ``gallery_dir``, sorted; hidden entries skipped."""
    root = Path(gallery_dir)
    if not root.is_dir():
        raise DatasetError(f"{root}: gallery folder does not exist or is not a folder")
    found = []
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue  # hidden files/folders, e.g. an index being written next to the images
        if is_image_entry(path):  # a dangling link too: the index lists it as skipped, with the reason
            found.append(path)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _check_out(out: Path, inputs: dict[str, Any]) -> None:
    """Before any work: ``out`` is writable, neither an input nor inside or around one, and empty or an index."""
    check_output(out, inputs, "--out", folder=True)
    if out.exists() and any(out.iterdir()) and not (out / META_FILE).is_file():
        raise ConfigError(f"{out} exists and is not a sangal index; choose another --out or remove it")


def _schema_json(schema: AttributeSchema, source: str) -> dict[str, Any]:
    return {
        "source": source,  # "reid" (the Re-ID net's heads) or "attribute_net"
        "dataset": schema.dataset,
        "colour_mode": schema.colour_mode,
        "file": ATTRIBUTES_FILE,
        "schema": [{"name": a.name, "classes": list(a.classes), "region": a.region} for a in schema.attributes],
    }


def _write_faiss(path: Path, feats: np.ndarray) -> None:
    faiss = load_faiss()
    assert faiss is not None
    index = faiss.IndexHNSWFlat(feats.shape[1], HNSW_M, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    index.hnsw.efSearch = HNSW_EF_SEARCH
    index.add(np.ascontiguousarray(feats, dtype=np.float32))
    faiss.write_index(index, str(path))


def build_index(
    gallery_dir: str | Path,
    checkpoint: str | Path,
    out: str | Path,
    attr_checkpoint: str | Path | None = None,
    batch_size: int = 64,
    device: str = "cpu",
    faiss_threshold: int = 50000,
    num_workers: int = 0,
    aah: str | None = None,
) -> GalleryIndex:
    """Index every image under ``gallery_dir`` with the Re-ID model of ``checkpoint``.

    Unreadable images, and links to files outside the gallery, are logged (warning naming
    the file and the reason), listed in ``meta["skipped"]`` and left out. ``out`` is replaced
    atomically if it holds an older index; any other existing non-empty folder is refused,
    and so is an ``out`` another process is writing (BusyError).

    Args:
        gallery_dir: folder of images, searched recursively (any layout).
        checkpoint: Re-ID checkpoint directory.
        out: index folder to write.
        attr_checkpoint: attribute checkpoint; san-gal models need one (default: the
            one recorded in the Re-ID checkpoint). For other modes it only predicts
            attributes when the Re-ID net has no attribute heads.
        batch_size: images per forward pass.
        device: torch device, e.g. "cpu" or "cuda:0".
        faiss_threshold: build a FAISS HNSW index when the gallery has at least this
            many images (see the module docstring).
        num_workers: DataLoader workers for decoding images.
        aah: how san-gal heat maps are computed, ``"exact"`` or ``"fast"`` (forward only; see
            :mod:`sangal.aah.fast`); None: as the checkpoint records. The rest of the embedding (flip, input
            size, map class and normalisation) is the checkpoint's record; meta.json keeps the record used, so
            queries are embedded the same way.
    """
    from sangal.evaluate.predictor import Predictor

    gallery = Path(gallery_dir).resolve()
    out = Path(out)
    _check_out(out, {"the gallery": gallery, "--checkpoint": checkpoint, "--attr-checkpoint": attr_checkpoint})
    with output_lock(out, wait=False):  # a second writer of `out` stops here, naming the first
        recover_aside(out)  # a killed swap: the old index is back before the long part starts
        files = list_gallery(gallery)
        if not files:
            raise DatasetError(f"{gallery}: no .jpg/.jpeg/.png images in the folder or its subfolders")
        predictor = Predictor.from_checkpoint(checkpoint, attr_checkpoint, device, method=aah)
        good, skipped = _readable(gallery, files, num_workers)
        logger.info("indexing %d images of %s (%d skipped)", len(good), gallery, len(skipped))
        emb = predictor.embed_paths(good, batch_size=batch_size, num_workers=num_workers)
        _check_embedding(emb, good, predictor.source["checkpoint"])
        backend = _backend(len(good), faiss_threshold)
        _write(out, _meta(gallery, good, skipped, emb.feats.shape[1], predictor, backend), emb, predictor, backend)
    logger.info("wrote index of %d images to %s (%s search)", len(good), out, backend)
    return GalleryIndex.load(out)


def _readable(gallery: Path, files: list[Path], num_workers: int) -> tuple[list[Path], list[dict[str, str]]]:
    """The images to index, and the skipped ones with the reason: unreadable, or a link leading out of the gallery."""
    from sangal.search.probe import probe_images

    reasons = {f: "a symbolic link to a file outside the gallery" for f in files
               if not f.resolve().is_relative_to(gallery)}
    inside = [f for f in files if f not in reasons]
    reasons.update((f, r) for f, r in zip(inside, probe_images(inside, num_workers)) if r)
    skipped = []
    for f in files:
        if f in reasons:
            logger.warning("skipping image %s: %s", f, reasons[f])
            skipped.append({"path": f.relative_to(gallery).as_posix(), "reason": reasons[f]})
    good = [f for f in files if f not in reasons]
    if not good:
        raise DatasetError(f"{gallery}: none of the {len(files)} images can be used (first: {skipped[0]['path']}: "
                           f"{skipped[0]['reason']})")
    return good, skipped


def _backend(count: int, faiss_threshold: int) -> str:
    """FAISS HNSW at and above ``faiss_threshold`` images when faiss is installed, else the exact scan."""
    if count < faiss_threshold:
        return "exact"
    if load_faiss() is None:
        logger.warning("%d images >= faiss_threshold %d but faiss is not installed (pip install sangal[faiss]): "
                       "using exact search", count, faiss_threshold)
        return "exact"
    return "faiss-hnsw"


def _meta(gallery: Path, good: list[Path], skipped: list[dict], dim: int, predictor, backend: str) -> dict[str, Any]:
    """meta.json of a new index (the module docstring lists its keys), before its file hashes."""
    source = predictor.source
    return {
        "format_version": INDEX_FORMAT, "gallery_dir": str(gallery),
        "paths": [p.relative_to(gallery).as_posix() for p in good], "num_images": len(good),
        "feature_dim": int(dim), "skipped": skipped,
        "checkpoint": {"path": source["checkpoint"], "sha256": source["sha256"]},
        "attr_checkpoint": ({"path": source["attr_checkpoint"], "sha256": source["attr_sha256"]}
                            if predictor.attr_checkpoint is not None else None),
        "arch": source["arch"], "features": {"normalized": True, "metric": "cosine"},
        "embed_spec": predictor.embedding.to_dict(), "attributes": None, "backend": backend,
        "faiss": ({"type": "IndexHNSWFlat", "metric": "inner_product", "M": HNSW_M,
                   "ef_construction": HNSW_EF_CONSTRUCTION, "ef_search": HNSW_EF_SEARCH}
                  if backend == "faiss-hnsw" else None),
        **provenance(),
    }


def _write(out: Path, meta: dict[str, Any], emb, predictor, backend: str) -> None:
    """Features, predicted attributes and the FAISS graph into a staged folder, each file's sha256 in meta.json."""
    with staged_dir(out) as tmp:
        np.save(tmp / FEATURES_FILE, emb.feats)
        if emb.attr_probs is not None and predictor.schema is not None:
            labels = np.stack([p.argmax(axis=1) for p in emb.attr_probs], axis=1).astype(np.int64)
            arrays = {f"probs_{k}": p for k, p in enumerate(emb.attr_probs)}
            np.savez(tmp / ATTRIBUTES_FILE, labels=labels, **arrays)
            meta["attributes"] = _schema_json(predictor.schema, str(predictor.attr_source))
        if backend == "faiss-hnsw":
            _write_faiss(tmp / FAISS_FILE, emb.feats)
        meta["files"] = {f.name: file_sha256(f) for f in sorted(tmp.iterdir())}
        (tmp / META_FILE).write_text(json.dumps(seal_json(meta), indent=1), encoding="utf-8")


def _check_embedding(emb: Any, files: list[Path], checkpoint: Path) -> None:
    """Refuse to write features a search could not rank (NaN rows are never ranked, zero rows rank at random)."""
    bad = bad_rows(emb.feats)
    probs_ok = emb.attr_probs is None or all(are_probabilities(p) for p in emb.attr_probs)
    if bad.size or not probs_ok:
        first = f" (first: {files[int(bad[0])]})" if bad.size else ""
        raise CheckpointError(f"checkpoint {checkpoint} gives non-finite or zero features or attribute "
                              f"probabilities for {bad.size} of {len(files)} images{first}; its weights are broken")

