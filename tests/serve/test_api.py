"""The JSON API over HTTP (a live server in a thread): answers, paging, filters, maps, thumbnails and every
error path: each bad request gets a 4xx with one clear line, and the server answers the next one."""

from __future__ import annotations

import io
import json
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from sangal.serve.images import MAX_UPLOAD_BYTES

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _bytes(served_index, i: int) -> bytes:
    return (served_index["gallery"] / served_index["paths"][i]).read_bytes()


def _png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR that declare ``width`` x ``height`` pixels, with almost no data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def _assert_alive(client) -> None:
    status, info = client.json("GET", "/api/info")
    assert status == 200 and info["num_images"] > 0


def test_info_lists_filter_chips_with_counts(live, served_index):
    status, info = live["client"].json("GET", "/api/info")
    n = len(served_index["paths"])
    assert status == 200 and info["num_images"] == n and info["mode"] == "san-gal" and info["aah"] == "fast"
    names = [f["name"] for f in info["filters"]]
    assert "backpack" in names and "upper_colour" in names and "upblack" not in names  # colour heads folded
    for f in info["filters"]:
        assert sum(c["count"] for c in f["classes"]) == n, f["name"]  # every image has one predicted class


def test_search_by_gallery_id_ranks_its_stored_row(live, service, served_index):
    status, answer = live["client"].json("GET", "/api/search/3?k=5")
    assert status == 200 and answer["query"]["gallery_id"] == 3 and answer["total"] == len(served_index["paths"])
    hits = answer["hits"]
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    assert hits[0]["gallery_id"] == 3 and hits[0]["distance"] == pytest.approx(0.0, abs=1e-5)
    assert all(a["distance"] <= b["distance"] for a, b in zip(hits, hits[1:]))
    q = np.asarray(service.index.features[3])
    expected = np.argsort(-(service.index.features @ q), kind="stable")[:5]
    assert [h["gallery_id"] for h in hits] == expected.tolist()
    assert hits[0]["camera"] == "c" + served_index["paths"][3].split("_c")[1][0]
    assert "embed" not in answer["timing_ms"]  # no model call


def test_search_by_upload_finds_the_copied_image(live, served_index):
    client = live["client"]
    status, answer = client.upload("/api/search", _bytes(served_index, 6), {"k": "3"})
    assert status == 200 and answer["query"]["kind"] == "upload"
    assert answer["hits"][0]["gallery_id"] == 6 and answer["hits"][0]["distance"] == pytest.approx(0.0, abs=1e-4)
    assert set(answer["timing_ms"]) == {"decode", "embed", "rank"}
    status, again = client.upload("/api/search", _bytes(served_index, 6), {"k": "3", "offset": "3"})
    assert status == 200 and set(again["timing_ms"]) == {"rank"}  # the same upload is embedded once
    assert [h["rank"] for h in again["hits"]] == [4, 5, 6]


def test_upload_embedding_equals_the_index_pipeline(service, served_index):
    """The server's one model call gives the feature `sangal search` (Searcher.embed_query) gives for the file."""
    from sangal.data.dataset import read_image
    from sangal.serve.model import embed_image, image_maps

    path = served_index["gallery"] / served_index["paths"][2]
    embedded = embed_image(service.predictor, read_image(path))
    feature, probs = service.searcher.embed_query(path)
    np.testing.assert_allclose(embedded.feature, feature, atol=1e-5)
    for a, b in zip(embedded.attr_probs, probs):
        np.testing.assert_allclose(a, b, atol=1e-5)
    k = len(service.index.schema)
    assert [m.shape[0] for m in embedded.maps] == [k, k, k]
    for a, b in zip(embedded.maps, image_maps(service.predictor, read_image(path))):
        np.testing.assert_array_equal(a, b)


def test_pages_join_into_one_longer_search(live):
    client = live["client"]
    _, first = client.json("GET", "/api/search/1?k=4")
    _, second = client.json("GET", "/api/search/1?k=4&offset=4")
    _, both = client.json("GET", "/api/search/1?k=8")
    assert [h["rank"] for h in second["hits"]] == [5, 6, 7, 8]
    assert first["hits"] + second["hits"] == both["hits"]


def test_filter_keeps_only_matching_hits(live, service):
    client = live["client"]
    _, info = client.json("GET", "/api/info")
    chip = next((f["name"], c["value"], c["count"]) for f in info["filters"] for c in f["classes"]
                if 0 < c["count"] < info["num_images"])
    name, value, count = chip
    status, answer = client.json("GET", f"/api/search/0?k=50&where={name}={value.replace(' ', '%20')}")
    assert status == 200 and answer["total"] == count and len(answer["hits"]) == count
    assert all(h["attributes"][name] == value for h in answer["hits"])
    _, browse = client.json("GET", f"/api/gallery?k=50&where={name}={value.replace(' ', '%20')}")
    assert sorted(h["gallery_id"] for h in browse["hits"]) == sorted(h["gallery_id"] for h in answer["hits"])


def test_maps_of_a_gallery_image_and_an_upload(live, served_index):
    client = live["client"]
    status, maps = client.json("GET", "/api/gallery/5/maps")
    assert status == 200 and maps["stages"] == ["layer2", "layer3", "layer4"] and maps["kind"] == "fast"
    arrays = [np.asarray(m) for m in maps["maps"]]
    assert [a.shape[0] for a in arrays] == [len(maps["attributes"])] * 3 and arrays[0].ndim == 3
    assert all(a.min() >= 0 and a.max() > 0 for a in arrays)
    status, uploaded = client.upload("/api/maps", _bytes(served_index, 5))
    assert status == 200
    for a, b in zip(maps["maps"], uploaded["maps"]):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-4)  # same image, same maps


def test_thumbnail_is_a_small_jpeg_by_id(live):
    status, headers, body = live["client"].request("GET", "/api/gallery/0/image")
    assert status == 200 and headers["content-type"] == "image/jpeg"
    thumb = Image.open(io.BytesIO(body))
    assert thumb.format == "JPEG" and thumb.width <= 128 and thumb.height <= 256


def test_no_file_path_reaches_the_browser(live, served_index):
    client = live["client"]
    gallery = str(served_index["gallery"])
    bodies = [client.request("GET", p)[2] for p in ("/api/info", "/api/search/0?k=50", "/api/gallery?k=50",
                                                   "/api/gallery/0/maps", "/api/openapi.json")]
    bodies.append(client.request("POST", "/api/search", body=b"x", headers={"Content-Type": "text/plain"})[2])
    for body in bodies:
        text = body.decode()
        assert gallery not in text and served_index["paths"][0] not in text
    status, _, _ = client.request("GET", "/api/gallery/..%2F..%2Fetc%2Fpasswd/image")
    assert status in (404, 422)


@pytest.mark.parametrize(("path", "status", "words"), [
    ("/api/search/999", 404, "no gallery image 999"),
    ("/api/search/-1", 404, "no gallery image -1"),
    ("/api/gallery/999/image", 404, "no gallery image 999"),
    ("/api/gallery/999/maps", 404, "no gallery image 999"),
    ("/api/search/abc", 422, "gallery_id"),
    ("/api/search/0?k=0", 422, "k:"),
    ("/api/search/0?k=5000", 422, "k:"),
    ("/api/search/0?k=10&offset=995", 422, "offset + k"),
    ("/api/search/0?where=umbrella=yes", 400, "unknown attribute 'umbrella'"),
    ("/api/search/0?where=backpack=maybe", 400, "no, yes"),
    ("/api/search/0?where=backpack", 400, "NAME=VALUE"),
    ("/api/nothing", 404, "Not Found"),
])
def test_bad_requests_get_a_clear_4xx(live, path, status, words):
    got, answer = live["client"].json("GET", path)
    assert got == status and words in answer["error"] and "\n" not in answer["error"]
    _assert_alive(live["client"])


def _gif() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 16), "red").save(out, format="GIF")
    return out.getvalue()


@pytest.mark.parametrize(("make", "status", "words"), [
    (lambda jpeg: b"", 400, "empty"),
    (lambda jpeg: b"plain text, no image", 415, "not a JPEG or PNG"),
    (lambda jpeg: _gif(), 415, "not a JPEG or PNG"),
    (lambda jpeg: jpeg[: len(jpeg) // 2], 400, "corrupt"),
    (lambda jpeg: _png_header_only(20_000, 20_000), 413, "decompression bomb"),
])
def test_bad_uploads_get_a_clear_4xx(live, served_index, make, status, words):
    client = live["client"]
    got, answer = client.upload("/api/search", make(_bytes(served_index, 0)))
    assert got == status and words in answer["error"], answer
    got, answer = client.upload("/api/maps", make(_bytes(served_index, 0)))
    assert got == status and words in answer["error"], answer
    ok, good = client.upload("/api/search", _bytes(served_index, 0), {"k": "1"})
    assert ok == 200 and good["hits"][0]["gallery_id"] == 0


def test_oversized_and_unsized_bodies_are_refused_unread(live, served_index):
    client = live["client"]
    big = b"\xff\xd8" + b"\0" * (MAX_UPLOAD_BYTES + 200_000)
    status, answer = client.upload("/api/search", big)
    assert status == 413 and "limit" in answer["error"]
    status, answer = client.upload("/api/search", _bytes(served_index, 0), chunked=True)
    assert status == 411 and "Content-Length" in answer["error"]
    status, answer = client.upload("/api/search", None, {"k": "3"})
    assert status == 422 and "image" in answer["error"]
    _assert_alive(client)


def test_an_internal_error_is_a_500_line_and_the_server_goes_on(live, service, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(service, "thumbnail", broken)
    status, answer = live["client"].json("GET", "/api/gallery/0/image")
    assert status == 500 and answer == {"error": "internal error (RuntimeError); the server log has the details"}
    monkeypatch.undo()
    assert live["client"].request("GET", "/api/gallery/0/image")[0] == 200


def test_page_and_api_docs_are_served_offline(live):
    client = live["client"]
    status, _, page = client.request("GET", "/")
    assert status == 200 and b'<script src="/static/app.js">' in page
    for path in ("/static/app.js", "/static/style.css", "/api"):
        status, _, body = client.request("GET", path)
        assert status == 200 and b"https://" not in body and b"http://" not in body, path  # no CDN
    status, spec = client.json("GET", "/api/openapi.json")
    assert status == 200 and {"/api/search", "/api/search/{gallery_id}", "/api/gallery/{gallery_id}/image"} <= set(
        spec["paths"])
    assert json.dumps(spec).count("multipart/form-data") >= 2
