"""Images that cross the server's boundary: uploads decoded under limits, gallery thumbnails encoded.

An upload is untrusted bytes. It is refused (a :class:`~sangal.errors.RequestError` with the HTTP
status the page shows) when it is empty, over :data:`MAX_UPLOAD_BYTES`, not a JPEG or PNG by its own
content (never by its file name or declared type), larger than :data:`MAX_PIXELS` once decoded (a
decompression bomb: a few kilobytes that declare gigapixels, refused from the header before any
pixel is decoded), or corrupt. Gallery images go through the same decoder, so a broken gallery
file gives a 4xx too instead of a crash.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image, UnidentifiedImageError

from sangal.errors import RequestError

__all__ = ["FORMATS", "MAX_PIXELS", "MAX_UPLOAD_BYTES", "THUMB_SIZE", "decode_image", "thumbnail_jpeg"]

#: The largest upload accepted, in bytes (a phone photo fits; a person crop is a few kilobytes).
MAX_UPLOAD_BYTES = 10 * 2**20
#: The most pixels an image may declare (a 6000 x 4000 photo is 24 M): above it, nothing is decoded.
MAX_PIXELS = 25_000_000
#: Formats accepted by content; the ones `sangal index` reads (.jpg/.jpeg/.png).
FORMATS = ("JPEG", "PNG")
#: Thumbnails fit in this box (width, height), aspect kept, never enlarged.
THUMB_SIZE = (128, 256)


def decode_image(data: bytes, what: str = "the upload") -> Image.Image:
    """RGB image of ``data``; RequestError (413, 415 or 400) naming ``what`` and the reason otherwise."""
    if not data:
        raise RequestError(f"{what} is empty", 400)
    if len(data) > MAX_UPLOAD_BYTES:
        raise RequestError(f"{what} has {len(data) / 2**20:.1f} MiB, over the limit of "
                           f"{MAX_UPLOAD_BYTES / 2**20:.0f} MiB", 413)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=FORMATS)  # reads the header only
    except UnidentifiedImageError:
        raise RequestError(f"{what} is not a JPEG or PNG image", 415) from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise RequestError(f"{what} declares too many pixels, a decompression bomb ({exc})", 413) from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise RequestError(f"{what} is a corrupt image ({exc})", 400) from None
    width, height = img.size
    if width * height > MAX_PIXELS:
        raise RequestError(f"{what} declares {width} x {height} pixels, over the limit of "
                           f"{MAX_PIXELS / 1e6:.0f} M (a decompression bomb?)", 413)
    if width < 1 or height < 1:
        raise RequestError(f"{what} has no pixels ({width} x {height})", 400)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return img.convert("RGB")  # decodes
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise RequestError(f"{what} is a corrupt or truncated image ({exc})", 400) from None


def thumbnail_jpeg(image: Image.Image) -> bytes:
    """JPEG bytes of ``image`` shrunk to fit :data:`THUMB_SIZE`."""
    thumb = image.copy()
    thumb.thumbnail(THUMB_SIZE)
    out = io.BytesIO()
    thumb.save(out, format="JPEG", quality=90)
    return out.getvalue()
