"""Uploads decoded under limits, thumbnails, and the `sangal serve` command line (no server started)."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from sangal.errors import RequestError
from sangal.serve import images
from sangal.serve.images import decode_image, thumbnail_jpeg


def _encode(img: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    img.save(out, format=fmt)
    return out.getvalue()


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P", "I;16"])
def test_png_of_any_mode_decodes_to_rgb_pixels(mode):
    img = Image.new("RGB", (7, 13), (200, 30, 40)).convert(mode)
    got = decode_image(_encode(img, "PNG"))
    assert got.mode == "RGB" and got.size == (7, 13)
    assert got.getpixel((3, 3)) == img.convert("RGB").getpixel((3, 3))


def test_pixel_limit_is_read_from_the_header(monkeypatch):
    data = _encode(Image.new("RGB", (100, 50)), "JPEG")
    monkeypatch.setattr(images, "MAX_PIXELS", 100 * 50)
    assert decode_image(data).size == (100, 50)  # at the limit: accepted
    monkeypatch.setattr(images, "MAX_PIXELS", 100 * 50 - 1)
    with pytest.raises(RequestError, match="100 x 50 pixels") as err:
        decode_image(data)
    assert err.value.status == 413


def test_byte_limit_and_the_name_in_the_message(monkeypatch):
    data = _encode(Image.new("RGB", (10, 10)), "PNG")
    monkeypatch.setattr(images, "MAX_UPLOAD_BYTES", len(data) - 1)
    with pytest.raises(RequestError, match="gallery image 7 has .* over the limit") as err:
        decode_image(data, "gallery image 7")
    assert err.value.status == 413


def test_thumbnail_keeps_aspect_and_never_enlarges():
    big = Image.new("RGB", (400, 1000), (10, 200, 10))
    thumb = Image.open(io.BytesIO(thumbnail_jpeg(big)))
    assert thumb.format == "JPEG" and thumb.size == (102, 256)
    small = Image.open(io.BytesIO(thumbnail_jpeg(Image.new("RGB", (32, 64)))))
    assert small.size == (32, 64)


def test_serve_command_binds_to_this_machine_by_default_and_reports_a_bad_index(tmp_path, capsys):
    from sangal.cli import main, parse_args

    args = parse_args(["serve", "--index", "x"])
    assert (args.host, args.port) == ("127.0.0.1", 8000)
    assert main(["serve", "--index", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not a sangal index" in err and len(err.strip().splitlines()) == 1
