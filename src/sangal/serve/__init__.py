"""`sangal serve`: a local web page and JSON API to search a gallery index by clicking, with heat maps.
Loads an index and its model once (``search``); answers searches by upload or gallery id over HTTP.

* :class:`SearchService` -- the answers without HTTP (searches, filter chips, heat maps, thumbnails);
* :func:`sangal.serve.app.create_app`, :func:`sangal.serve.app.serve` -- the FastAPI app and the server
  (the optional ``serve`` extra: FastAPI, uvicorn, python-multipart);
* :mod:`sangal.serve.images` -- uploads decoded under size, type and pixel limits;
* :mod:`sangal.serve.model` -- the one place the model runs on a query image.
"""

from sangal.serve.service import SearchService

__all__ = ["SearchService"]
