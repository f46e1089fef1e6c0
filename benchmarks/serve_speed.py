"""`sangal serve` latency and throughput on a 100k-image synthetic index (FAISS HNSW).

The model is the demo's architecture (``sangal/configs/demo.yaml``: san-gal MobileNetV2 Re-ID net and
MobileNetV2 attribute net at 128x64, with the distilled predictor for forward-only maps, the index's
``--aah fast``), built UNTRAINED (random weights): time does not depend on the weights. The 100k feature
rows are random unit vectors and the attribute probabilities random (real rows of this model would cost
100k embeddings); the rows' image paths cycle over 600 real synthetic pedestrians, which only thumbnails
and heat maps read. Index and checkpoints are written once to ``--work`` and reused.

Section 1, in process (:class:`~sangal.serve.SearchService`, what one request costs without HTTP; the
service runs the model on a thread of its own, as in the server):
* search by gallery id, k=20: FAISS HNSW on the stored row (no model call); the same with the exact
  numpy scan side by side, and with an attribute filter (always an exact scan of the kept rows);
* search by upload of a 128x64 JPEG (the demo's query size) and of a 1920x1080 JPEG: decode, embedding
  (flip-averaged, forward-only maps) and ranking, as the server times them; the upload cache is cleared
  before each call so every call runs the model;
* the heat maps of a gallery image (the page's second request after a click).

Section 2, over HTTP: `sangal serve` as a subprocess (its start-up time is printed), clients in threads
of this process with keep-alive connections: one client, then 8 concurrent clients, for searches by
gallery id and by upload (distinct bytes per request, so each one runs the model).

    .venv/bin/python benchmarks/serve_speed.py                # 100k rows, about 5 minutes the first time
    .venv/bin/python benchmarks/serve_speed.py --rows 5000 --seconds 3   # smoke run
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sangal.aah.fast_map_files import save_fast_map_net
from sangal.config import load_config
from sangal.data.attributes import get_schema
from sangal.models.arch import arch_for, build_model
from sangal.models.fast_map_net import FastMapNet
from sangal.search import Searcher
from sangal.search import index as index_files
from sangal.search.index import list_gallery
from sangal.serve import SearchService
from sangal.store.checkpoint import MODEL_FILE, file_sha256, load_checkpoint, save_checkpoint
from sangal.synthetic.generate import generate_synthetic


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=100_000, help="gallery rows of the synthetic index")
    p.add_argument("--work", default="/tmp/sangal-serve-bench", help="index and checkpoints (reused)")
    p.add_argument("--repeats", type=int, default=200, help="timed searches by gallery id")
    p.add_argument("--upload-repeats", type=int, default=30, help="timed searches by upload")
    p.add_argument("--seconds", type=float, default=10.0, help="duration of each HTTP throughput run")
    p.add_argument("--port", type=int, default=8765)
    return p.parse_args()


def _checkpoints(work: Path) -> Path:
    """The demo's san-gal architecture, untrained, with a map predictor; the Re-ID checkpoint's folder."""
    reid_dir = work / "reid"
    if (reid_dir / MODEL_FILE).is_file():
        return reid_dir
    cfg = load_config(resources.files("sangal") / "configs" / "demo.yaml", ["model.pretrained=false"])
    classes = get_schema("market1501").num_classes
    torch.manual_seed(0)
    attr_arch = arch_for(cfg, "attribute", attr_classes=classes)
    attr = build_model(attr_arch).eval()
    attr_dir = save_checkpoint(work / "attr", attr, attr_arch, {})
    save_fast_map_net(attr_dir, FastMapNet(attr.backbone.channels[1:3], sum(classes), cfg.distill.hidden),
                       {"normalize": "max"})
    reid_arch = arch_for(cfg, "reid", num_ids=150, attr_classes=classes)
    return save_checkpoint(reid_dir, build_model(reid_arch).eval(), reid_arch, {"attr_checkpoint": str(attr_dir)})


def _index(work: Path, rows: int, reid_dir: Path) -> Path:
    """A FAISS index of ``rows`` random unit rows, written with the index module's own file names."""
    out = work / f"gallery-{rows}.sangal-index"
    if (out / index_files.META_FILE).is_file():
        return out
    gallery = generate_synthetic(work / "synth", num_ids=50, num_cams=6, seed=0) / "bounding_box_test"
    files = [p.relative_to(gallery).as_posix() for p in list_gallery(gallery)]
    reid = load_checkpoint(reid_dir, expected_kind="reid")
    attr_dir = Path(reid.state["attr_checkpoint"])
    dim = build_model(reid.arch).bottleneck.num_features
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((rows, dim), dtype=np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    schema = get_schema("market1501")
    probs = [rng.dirichlet(np.ones(a.num_classes), rows).astype(np.float32) for a in schema.attributes]
    tmp = work / f".gallery-{rows}.tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    np.save(tmp / index_files.FEATURES_FILE, feats)
    np.savez(tmp / index_files.ATTRIBUTES_FILE, labels=np.stack([p.argmax(1) for p in probs], 1),
             **{f"probs_{k}": p for k, p in enumerate(probs)})
    start = time.perf_counter()
    index_files._write_faiss(tmp / index_files.FAISS_FILE, feats)  # noqa: SLF001 -- the index's own HNSW settings
    print(f"built the HNSW graph of {rows} rows x {dim} in {time.perf_counter() - start:.0f} s")
    meta = {
        "format_version": index_files.INDEX_FORMAT, "gallery_dir": str(gallery),
        "paths": [files[i % len(files)] for i in range(rows)], "num_images": rows, "feature_dim": dim,
        "skipped": [], "checkpoint": {"path": str(reid_dir.resolve()), "sha256": file_sha256(reid_dir / MODEL_FILE)},
        "attr_checkpoint": {"path": str(attr_dir.resolve()), "sha256": file_sha256(attr_dir / MODEL_FILE)},
        "arch": {**reid.arch}, "aah": "fast", "backend": "faiss-hnsw",
        "attributes": index_files._schema_json(schema, "reid"),  # noqa: SLF001
    }
    (tmp / index_files.META_FILE).write_text(json.dumps(meta), encoding="utf-8")
    tmp.rename(out)
    return out


def _ms(values: list[float]) -> str:
    """Median and 90th percentile of seconds, in ms."""
    v = sorted(values)
    return f"median {1000 * statistics.median(v):7.2f} ms   p90 {1000 * v[int(0.9 * (len(v) - 1))]:7.2f} ms"


def _jpeg(size: tuple[int, int], seed: int) -> bytes:
    """A JPEG of ``size`` (width, height) with smooth random content (compresses like a photo)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (8, 4, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize(size, Image.BILINEAR)
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=90)
    return out.getvalue()


def _ef_sweep(service: SearchService, ids: list[int]) -> None:
    """The HNSW search alone at several efSearch values: latency and recall@20 against the exact scan.

    Random unit rows in 1280 dimensions have no cluster structure, the hardest case for HNSW: recall on
    real features is higher. The index's setting is efSearch = max(256, 4k) (sangal.search.index).
    """
    index = service.index
    exact = {i: set(np.argsort(-(index.features @ index.features[i]), kind="stable")[:20].tolist()) for i in ids}
    previous = index.faiss_index.hnsw.efSearch
    for ef in (256, 128, 64):
        index.faiss_index.hnsw.efSearch = ef
        times, recall = [], []
        for i in ids:
            q = np.ascontiguousarray(index.features[i][None])
            start = time.perf_counter()
            _, found = index.faiss_index.search(q, 20)
            times.append(time.perf_counter() - start)
            recall.append(len(exact[i] & set(found[0].tolist())) / 20)
        print(f"    FAISS search alone, efSearch {ef:3d}: {_ms(times)}   recall@20 vs exact {np.mean(recall):.3f}")
    index.faiss_index.hnsw.efSearch = previous


def in_process(service: SearchService, args: argparse.Namespace) -> None:
    n = len(service.index)
    rng = np.random.default_rng(1)
    ids = rng.integers(0, n, args.repeats).tolist()
    for i in ids[:10]:
        service.search_gallery(i)  # warm-up: page cache, FAISS
    print(f"\n== in process: {n} rows, {service.index.backend}, feature dim {service.index.features.shape[1]}, "
          f"torch threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.1f}")

    def timed(fn, items) -> list[float]:
        times = []
        for item in items:
            start = time.perf_counter()
            fn(item)
            times.append(time.perf_counter() - start)
        return times

    faiss_times = timed(lambda i: service.search_gallery(i, k=20), ids)
    faiss_index, service.index.faiss_index = service.index.faiss_index, None
    exact_times = timed(lambda i: service.search_gallery(i, k=20), ids[:50])
    service.index.faiss_index = faiss_index
    where = "backpack=yes"
    kept = int(service.searcher.filter_mask({"backpack": "yes"}).sum())
    filter_times = timed(lambda i: service.search_gallery(i, k=20, where=where), ids[:50])
    print(f"search by gallery id, FAISS HNSW      : {_ms(faiss_times)}   (goal <= 20 ms)")
    print(f"search by gallery id, exact numpy scan: {_ms(exact_times)}   "
          f"({statistics.median(exact_times) / statistics.median(faiss_times):.1f}x the HNSW median)")
    print(f"search by gallery id, {where} ({kept} rows kept, exact scan): {_ms(filter_times)}")
    _ef_sweep(service, ids[:50])

    for label, size in (("128x64 JPEG", (64, 128)), ("1920x1080 JPEG", (1920, 1080))):
        uploads = [_jpeg(size, seed) for seed in range(args.upload_repeats + 3)]
        split: dict[str, list[float]] = {"decode": [], "embed": [], "rank": []}
        totals = []
        for j, data in enumerate(uploads):
            service._uploads.clear()  # noqa: SLF001 -- every call runs the model
            start = time.perf_counter()
            answer = service.search_upload(data, k=20)
            if j >= 3:  # the first calls warm up the model
                totals.append(time.perf_counter() - start)
                for key in split:
                    split[key].append(answer["timing_ms"][key] / 1000)
        print(f"search by upload, {label:15s}: total {_ms(totals)}   (goal <= 200 ms)")
        for key, name in (("decode", "decode"), ("embed", "embedding"), ("rank", "ranking")):
            print(f"    {name:9s}: {_ms(split[key])}")
    maps_times = timed(service.gallery_maps, ids[:20])
    print(f"heat maps of a gallery image (read, decode, attribute net + predictor): {_ms(maps_times)}")


def _multipart(data: bytes, k: int = 20) -> tuple[bytes, dict[str, str]]:
    boundary = "sangal-bench"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="k"\r\n\r\n{k}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="q.jpg"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def _load(port: int, clients: int, seconds: float, next_request) -> tuple[float, list[float], int]:
    """``clients`` threads with keep-alive connections for ``seconds``: requests/s, latencies, errors."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def loop() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while time.perf_counter() < stop_at:
            method, path, body, headers = next_request()
            start = time.perf_counter()
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            with lock:
                latencies.append(time.perf_counter() - start)
                errors[0] += response.status != 200
        conn.close()

    threads = [threading.Thread(target=loop) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(latencies) / (time.perf_counter() - start), latencies, errors[0]


def over_http(index_dir: Path, rows: int, args: argparse.Namespace) -> None:
    start = time.perf_counter()
    server = subprocess.Popen([sys.executable, "-m", "sangal", "serve", "--index", str(index_dir),
                               "--port", str(args.port)], stdout=subprocess.DEVNULL)
    try:
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", args.port, timeout=5)
                conn.request("GET", "/api/info")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                if server.poll() is not None:
                    raise RuntimeError("sangal serve exited") from None
                time.sleep(0.2)
        print(f"\n== over HTTP: `sangal serve` subprocess, up in {time.perf_counter() - start:.1f} s "
              f"(index + model loaded once); load {os.getloadavg()[0]:.1f}")
        rng = np.random.default_rng(2)
        counter = iter(range(10**9))
        lock = threading.Lock()
        pool = [_multipart(_jpeg((64, 128), 1000 + s)) for s in range(64)]  # cycled: never in the 16-upload cache

        def by_id():
            with lock:
                i = int(rng.integers(0, rows))
            return "GET", f"/api/search/{i}?k=20", None, {}

        def by_upload():
            with lock:
                body, headers = pool[next(counter) % len(pool)]
            return "POST", "/api/search", body, headers

        for name, make in (("by gallery id", by_id), ("by upload", by_upload)):
            for clients in (1, 8):
                rate, latencies, errors = _load(args.port, clients, args.seconds, make)
                print(f"search {name:13s}, {clients} client{'s' if clients > 1 else ' '}: {rate:7.1f} requests/s   "
                      f"latency {_ms(latencies)}   errors {errors}")
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    args = parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    reid_dir = _checkpoints(work)
    index_dir = _index(work, args.rows, reid_dir)
    start = time.perf_counter()
    service = SearchService(Searcher(index_dir))
    print(f"service up in {time.perf_counter() - start:.1f} s: {len(service.index)} rows, demo architecture "
          f"(san-gal MobileNetV2 128x64, fast maps), untrained; {os.cpu_count()} CPUs")
    in_process(service, args)
    del service
    over_http(index_dir, args.rows, args)


if __name__ == "__main__":
    main()
