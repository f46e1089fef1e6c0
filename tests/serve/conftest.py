"""A demo-style index for the server's tests: a san-gal Re-ID net with forward-only heat maps over the
tiny synthetic gallery (random weights; a query that is a copy of a gallery image finds that image)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from sangal.aah.fast_map_files import save_fast_map_net
from sangal.data.attributes import get_schema
from sangal.models.attribute_net import AttributeNet
from sangal.models.fast_map_net import FastMapNet
from sangal.models.reid_net import ReIDNet
from sangal.store.checkpoint import save_checkpoint

H, W = 64, 32
EXTRA = {"dataset": "market1501", "colour_mode": "binary", "height": H, "width": W}


@pytest.fixture(scope="session")
def served_index(tiny_synth: Path, tmp_path_factory) -> dict:
    """Index folder (``--aah fast``), its gallery folder, and the identity of every gallery row."""
    from sangal.search import build_index

    tmp = tmp_path_factory.mktemp("serve")
    classes = get_schema("market1501").num_classes
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    attr = AttributeNet(classes, backbone="resnet18", pretrained=False).eval()
    for head in attr.heads:  # predictions that vary between images
        torch.nn.init.normal_(head.fc.weight, std=0.05)
    attr_dir = save_checkpoint(tmp / "attr", attr, {**attr.arch_dict(), **EXTRA}, {})
    save_fast_map_net(attr_dir, FastMapNet(attr.backbone.channels[1:3], sum(classes), hidden=8), {"normalize": "max"})
    model = ReIDNet(6, classes, mode="san-gal", backbone="resnet18", pretrained=False).eval()
    for m in model.modules():  # non-trivial statistics: distinct embeddings and attribute predictions
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.normal_(0, 0.1)
    for head in model.attr_heads:  # BN -> Linear
        torch.nn.init.normal_(head[1].weight, std=0.05)
    reid = save_checkpoint(tmp / "reid", model, {**model.arch_dict(), **EXTRA}, {"attr_checkpoint": str(attr_dir)})
    gallery = tiny_synth / "bounding_box_test"
    index = build_index(gallery, reid, tmp / "gallery.sangal-index", batch_size=16, aah="fast")
    torch.set_num_threads(previous)
    pids = [int(re.match(r"(-?\d+)_", Path(p).name).group(1)) for p in index.paths]
    return {"dir": tmp / "gallery.sangal-index", "gallery": gallery, "paths": index.paths, "pids": pids,
            "tmp": tmp}


@pytest.fixture(scope="session")
def service(served_index):
    """One SearchService over the index (the model loaded once, as `sangal serve` does)."""
    from sangal.search import Searcher
    from sangal.serve import SearchService

    return SearchService(Searcher(served_index["dir"]))


class Client:
    """Plain HTTP (http.client) against the live server: status, headers and body of one request."""

    def __init__(self, url: str) -> None:
        self.host, self.port = url.removeprefix("http://").split(":")

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                chunked: bool = False) -> tuple[int, dict, bytes]:
        import http.client

        conn = http.client.HTTPConnection(self.host, int(self.port), timeout=60)
        try:
            if chunked:  # no Content-Length: the body arrives in chunks
                conn.request(method, path, body=iter([body or b""]), headers=headers or {}, encode_chunked=True)
            else:
                conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    def json(self, method: str, path: str, **kwargs) -> tuple[int, dict]:
        import json

        status, _, body = self.request(method, path, **kwargs)
        return status, json.loads(body)

    def upload(self, path: str, data: bytes, fields: dict | None = None, filename: str = "query.jpg",
               content_type: str = "image/jpeg", chunked: bool = False) -> tuple[int, dict]:
        """POST a multipart form: ``data`` as the file field ``image``, plus text ``fields``."""
        boundary = "sangal-test-boundary"
        parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
                 for k, v in (fields or {}).items()]
        if data is not None:
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{filename}"\r\n'
                         f"Content-Type: {content_type}\r\n\r\n".encode() + data + b"\r\n")
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        return self.json("POST", path, body=body, chunked=chunked,
                         headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})


@pytest.fixture(scope="session")
def live(service):
    """The app on a free local port in a background thread, as `sangal serve` runs it; a Client to it."""
    from sangal.serve.app import ServerThread, create_app

    server = ServerThread(create_app(service))
    yield {"url": server.url, "client": Client(server.url)}
    server.stop()
