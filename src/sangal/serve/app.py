"""`sangal serve`: the page and the JSON API over a :class:`~sangal.serve.service.SearchService` (FastAPI + uvicorn).

Every error is one JSON line ``{"error": "..."}`` with a 4xx status (5xx for a bug or a broken index, logged
with the details); no error body names a file or folder, and the server keeps answering after any of them. A
request whose ``Host`` header names another server is refused (400): a page elsewhere cannot reach the gallery
by pointing its own name at this machine (DNS rebinding). Bodies are refused before they are read when
they declare more than the upload limit, or declare no length at all. The API is described by its
OpenAPI schema (``/api/openapi.json``), rendered offline at ``/api`` (FastAPI's own pages load a CDN).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from importlib import resources
from pathlib import Path
from typing import Any

from sangal.errors import ConfigError, RequestError, SangalError
from sangal.serve.images import MAX_UPLOAD_BYTES
from sangal.serve.service import MAX_RESULTS, SearchService
from sangal.version import __version__

try:
    from fastapi import FastAPI, File, Form, Query, Request, UploadFile
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse, Response
    from fastapi.staticfiles import StaticFiles
    from starlette.exceptions import HTTPException
except ImportError as exc:  # the optional extra
    raise ConfigError(f"`sangal serve` needs FastAPI, uvicorn and python-multipart ({exc}); "
                      f"pip install 'sangal[serve]'") from None

__all__ = ["HostCheck", "ServerThread", "allowed_hosts", "create_app", "host_name", "listen", "serve"]

logger = logging.getLogger(__name__)

STATIC = Path(str(resources.files("sangal.serve") / "static"))
_FORM_OVERHEAD = 64 * 1024  # multipart boundaries and the small form fields around the image
_LOOPBACK = ("127.0.0.1", "localhost", "::1")
_WILDCARD = ("0.0.0.0", "::", "")

K = Query(20, ge=1, le=MAX_RESULTS, description="hits per page")
OFFSET = Query(0, ge=0, le=MAX_RESULTS - 1, description="hits to skip (paging); offset + k <= max_results")
WHERE = Query(None, description="attribute filter, e.g. `backpack=yes,upper_colour=red` (names and classes "
                                "from /api/info); every condition must hold")


class BodyLimit:
    """ASGI middleware: a request whose body declares more than ``limit`` bytes, or no length, gets 413/411."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] in ("POST", "PUT", "PATCH"):
            headers = dict(scope["headers"])
            length = headers.get(b"content-length")
            error = None
            if length is None:
                error = (411, "the request must declare its Content-Length")
            elif not length.isdigit() or int(length) > self.limit:
                error = (413, f"the request body is over the upload limit of {MAX_UPLOAD_BYTES / 2**20:.0f} MiB")
            if error is not None:
                await JSONResponse({"error": error[1]}, status_code=error[0])(scope, receive, send)
                return
        await self.app(scope, receive, send)


def host_name(header: str) -> str:
    """The name in a ``Host`` header, lowercased, without its port: ``[::1]:8000`` -> ``::1``."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    name, colon, port = header.rpartition(":")
    return name if colon and port.isdigit() and ":" not in name else header


def allowed_hosts(host: str) -> frozenset[str]:
    """The names a server started on ``host`` answers to: this machine's loopback names and ``host`` itself.

    A wildcard ``host`` (0.0.0.0, ::) serves other machines, which name it by address or by its host name.
    """
    names = {*_LOOPBACK, host.strip().strip("[]").lower()}
    if host in _WILDCARD:
        names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
    return frozenset(names)


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class HostCheck:
    """ASGI middleware: 400 unless the ``Host`` header names this server.

    A web page on another site can point its own name at 127.0.0.1 (DNS rebinding) and read the answers; its
    requests then carry that name, which this server was not started for. With a wildcard address any IP
    address is accepted too: a rebinding page can only send a name.
    """

    def __init__(self, app: Any, names: frozenset[str], any_address: bool = False) -> None:
        self.app, self.names, self.any_address = app, names, any_address

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            name = host_name(dict(scope["headers"]).get(b"host", b"").decode("latin-1"))
            if name not in self.names and not (self.any_address and _is_address(name)):
                message = (f"this server answers only requests addressed to {', '.join(sorted(self.names))}; "
                           f"open it by one of those names")
                await JSONResponse({"error": message}, status_code=400)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestError)
    async def request_error(_: Request, exc: RequestError) -> JSONResponse:
        return _error(exc.status, str(exc))

    @app.exception_handler(ConfigError)
    async def bad_filter(_: Request, exc: ConfigError) -> JSONResponse:
        return _error(400, str(exc))  # an unknown filter attribute or class: names from the index, never a path

    @app.exception_handler(SangalError)
    async def sangal_error(request: Request, exc: SangalError) -> JSONResponse:
        logger.warning("cannot answer %s %s: %s", request.method, request.url.path, exc)  # may name files: log only
        return _error(500, f"the server cannot answer this ({type(exc).__name__}); the server log has the details")

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'request'}: {e.get('msg', 'invalid')}"
                 for e in exc.errors()]
        return _error(422, "; ".join(parts))

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("internal error answering %s %s", request.method, request.url.path)
        return _error(500, f"internal error ({type(exc).__name__}); the server log has the details")


def _read_upload(image: UploadFile) -> bytes:
    data = image.file.read(MAX_UPLOAD_BYTES + 1)
    if len(data) > MAX_UPLOAD_BYTES:
        raise RequestError(f"the upload is over the limit of {MAX_UPLOAD_BYTES / 2**20:.0f} MiB", 413)
    return data


def create_app(service: SearchService, host: str = "127.0.0.1") -> FastAPI:
    """The page (``/``), its offline API documentation (``/api``) and the JSON API (``/api/...``), answering
    only requests whose ``Host`` names the server started on ``host`` (:class:`HostCheck`)."""
    app = FastAPI(title="sangal serve", version=__version__, docs_url=None, redoc_url=None,
                  openapi_url="/api/openapi.json",
                  description="Person search over a gallery index: by upload or by gallery id, with attribute "
                              "filters. Images are named by gallery id (their row in the index), never by path.")
    _add_error_handlers(app)
    app.add_middleware(BodyLimit, limit=MAX_UPLOAD_BYTES + _FORM_OVERHEAD)
    app.add_middleware(HostCheck, names=allowed_hosts(host), any_address=host in _WILDCARD)  # outermost: first
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/api", include_in_schema=False)
    def api_page() -> FileResponse:
        return FileResponse(STATIC / "api.html")

    @app.get("/api/info", summary="The gallery, the model and the filter chips with their counts")
    def info() -> dict:
        return service.info()

    @app.get("/api/gallery", summary="Gallery images in index order (those the filter keeps)")
    def browse(k: int = K, offset: int = Query(0, ge=0), where: str | None = WHERE) -> dict:
        return service.browse(k, offset, where)

    @app.get("/api/search/{gallery_id}", summary="Search by gallery id (its stored feature; no model call)")
    def search_gallery(gallery_id: int, k: int = K, offset: int = OFFSET, where: str | None = WHERE) -> dict:
        return service.search_gallery(gallery_id, k, offset, where)

    @app.post("/api/search", summary="Search by an uploaded JPEG or PNG (multipart field `image`)")
    def search_upload(image: UploadFile = File(..., description=f"JPEG or PNG, at most "
                                                                 f"{MAX_UPLOAD_BYTES // 2**20} MiB"),
                      k: int = Form(20, ge=1, le=MAX_RESULTS), offset: int = Form(0, ge=0, le=MAX_RESULTS - 1),
                      where: str | None = Form(None)) -> dict:
        return service.search_upload(_read_upload(image), k, offset, where)

    @app.get("/api/gallery/{gallery_id}/image", summary="Thumbnail (JPEG) of a gallery image",
             response_class=Response, responses={200: {"content": {"image/jpeg": {}}}})
    def thumbnail(gallery_id: int) -> Response:
        return Response(service.thumbnail(gallery_id), media_type="image/jpeg",
                        headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/api/gallery/{gallery_id}/maps", summary="Heat maps the model used for a gallery image")
    def gallery_maps(gallery_id: int) -> dict:
        return service.gallery_maps(gallery_id)

    @app.post("/api/maps", summary="Heat maps the model used for an uploaded image (multipart field `image`)")
    def upload_maps(image: UploadFile = File(...)) -> dict:
        return service.upload_maps(_read_upload(image))

    return app


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host``:``port``; ConfigError (one line) when that address cannot be had."""
    try:
        found = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = found[0]
        sock = socket.socket(family, kind, proto)
    except (OSError, OverflowError) as exc:
        raise ConfigError(f"cannot listen on {host} port {port}: {getattr(exc, 'strerror', None) or exc}; "
                          f"check --host") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host} port {port}: {exc.strerror or exc}; choose another --port "
                          f"or stop what holds it") from None
    return sock


def serve(index_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, device: str = "cpu") -> None:
    """Load the index and its model once, bind ``host``:``port``, then answer until interrupted."""
    import uvicorn

    from sangal.search import Searcher

    sock = listen(host, port)  # before the model loads: a taken port is one line, at once
    service = SearchService(Searcher(index_dir, device=device))
    logging.getLogger("sangal.evaluate.features").setLevel(logging.WARNING)  # one INFO line per query otherwise
    if host not in _LOOPBACK:
        logger.warning("listening on %s: anyone who can reach this machine can search the gallery", host)
    shown = f"[{host}]" if ":" in host else host
    print(f"sangal serve: {len(service.index)} images of {index_dir} on http://{shown}:{port}/ "
          f"(API: http://{shown}:{port}/api); Ctrl-C stops", flush=True)
    server = uvicorn.Server(uvicorn.Config(create_app(service, host), log_level="warning"))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()


class ServerThread:
    """The app served by uvicorn in a background thread on ``host`` and a free port (tests, benchmarks).

    ``url`` is its address; :meth:`stop` shuts it down and waits.
    """

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", timeout: float = 30.0) -> None:
        import uvicorn

        self._socket = listen(host, 0)
        self.url = f"http://{host}:{self._socket.getsockname()[1]}"
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server on {self.url} did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._socket.close()
