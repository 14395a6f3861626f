"""Safe image loading: bad inputs are refused with a message, odd images come out as plain RGB."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from inkpunk_studio.imageload import ImageLoadError, fit_to_size, load_image


def _png_bytes(img: Image.Image, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", **kw)
    return buf.getvalue()


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _bomb_png(width: int, height: int, *, with_data: bool) -> bytes:
    """A 1-bit PNG claiming width x height; with_data streams real all-zero rows (compressing ~1000:1)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    if with_data:
        comp = zlib.compressobj(9)
        row = bytes(1 + (width + 7) // 8)
        idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    else:
        idat = zlib.compress(bytes(100))
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def test_plain_image_from_path_and_bytes(tmp_path: Path) -> None:
    img = Image.new("RGB", (40, 30), (10, 200, 30))
    path = tmp_path / "ok.png"
    img.save(path)
    for src in (path, str(path), path.read_bytes(), img):
        out = load_image(src)
        assert out.mode == "RGB" and out.size == (40, 30) and out.getpixel((5, 5)) == (10, 200, 30)


# ------------------------------------------------------------------ refused


def test_text_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("just some words, not an image\n")
    with pytest.raises(ImageLoadError, match="not an image"):
        load_image(path)
    with pytest.raises(ImageLoadError):
        load_image(b"GIF89a but then nothing")


def test_truncated_png_is_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = _png_bytes(Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)))
    # (losing only the zlib checksum and IEND leaves every pixel intact; Pillow and browsers show that)
    for cut in (len(data) // 2, len(data) - 40, 40):
        with pytest.raises(ImageLoadError):
            load_image(data[:cut])
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match="truncated or damaged"):
        load_image(path)


def test_truncated_jpeg_is_refused() -> None:
    rng = np.random.default_rng(1)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    with pytest.raises(ImageLoadError):
        load_image(buf.getvalue()[: len(buf.getvalue()) // 2])


@pytest.mark.parametrize(
    ("width", "height", "with_data"),
    [
        (100_000, 100_000, False),  # past 2x Pillow's limit: DecompressionBombError
        (12_000, 12_000, True),  # between Pillow's warning and error: the warning counts as a bomb
        (9_000, 8_000, True),  # under Pillow's limit, over ours
    ],
)
def test_decompression_bomb_is_refused(tmp_path: Path, width: int, height: int, with_data: bool) -> None:
    data = _bomb_png(width, height, with_data=with_data)
    assert len(data) < 200_000
    path = tmp_path / "bomb.png"
    path.write_bytes(data)
    with pytest.raises(ImageLoadError, match="too large"):
        load_image(path)
    with pytest.raises(ImageLoadError, match="too large"):
        load_image(data)


def test_pixel_cap_is_adjustable() -> None:
    data = _png_bytes(Image.new("RGB", (100, 100)))
    with pytest.raises(ImageLoadError, match="too large"):
        load_image(data, max_pixels=9_999)
    assert load_image(data, max_pixels=10_000).size == (100, 100)


def test_huge_file_is_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "huge.png"
    with open(path, "wb") as f:  # sparse: costs no disk
        f.write(_png_bytes(Image.new("RGB", (8, 8))))
        f.truncate(201 * 1024 * 1024)
    with pytest.raises(ImageLoadError, match="file is too large"):
        load_image(path)
    small = _png_bytes(Image.new("RGB", (8, 8)))
    with pytest.raises(ImageLoadError, match="file is too large"):
        load_image(small, max_bytes=len(small) - 1)


def test_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError, match="Can't read"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageLoadError, match="not a file"):
        load_image(tmp_path)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageLoadError, match="empty"):
        load_image(tmp_path / "empty.png")


# ------------------------------------------------------------------ normalised


def test_exif_orientation_is_applied() -> None:
    img = Image.new("RGB", (60, 20), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 10, 20))  # blue stripe on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display needs 90 degrees clockwise
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif.tobytes(), quality=95)
    out = load_image(buf.getvalue())
    assert out.size == (20, 60)
    top = out.getpixel((10, 3))
    assert top[2] > 200 and top[0] < 60  # the left stripe is now at the top


@pytest.mark.parametrize(
    "img",
    [
        Image.new("RGBA", (16, 16), (0, 0, 0, 0)),
        Image.new("LA", (16, 16), (0, 0)),
        Image.new("PA", (16, 16), (0, 0)),
    ],
    ids=["RGBA", "LA", "PA"],
)
def test_transparent_pixels_become_white(img: Image.Image) -> None:
    out = load_image(_png_bytes(img) if img.mode != "PA" else img)
    assert out.mode == "RGB" and out.getpixel((3, 3)) == (255, 255, 255)


def test_half_transparent_rgba_composites_on_white() -> None:
    out = load_image(_png_bytes(Image.new("RGBA", (8, 8), (0, 0, 0, 128))))
    assert all(abs(c - 127) <= 1 for c in out.getpixel((0, 0)))


def test_palette_with_transparency() -> None:
    img = Image.new("P", (16, 16), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.paste(1, (8, 0, 16, 16))
    data = _png_bytes(img, transparency=0)
    assert Image.open(io.BytesIO(data)).info.get("transparency") == 0
    out = load_image(data)
    assert out.getpixel((2, 2)) == (255, 255, 255) and out.getpixel((12, 2)) == (255, 0, 0)


def test_16bit_grayscale_is_scaled_not_clipped(tmp_path: Path) -> None:
    ramp = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (4, 1))
    img = Image.fromarray(ramp)
    path = tmp_path / "deep.png"
    img.save(path)
    assert Image.open(path).mode in ("I;16", "I")
    out = np.asarray(load_image(path))
    assert out.shape == (4, 256, 3)
    row = out[0, :, 0].astype(int)
    assert row[0] == 0 and row[-1] == 255 and abs(row[128] - 128) <= 1
    assert np.all(np.diff(row) >= 0) and len(np.unique(row)) > 200


def test_32bit_int_image_holding_16bit_values() -> None:
    a = np.array([[0, 32768, 65535]], dtype=np.int32)
    out = np.asarray(load_image(Image.fromarray(a, "I")))[0, :, 0]
    assert list(out) == [0, 128, 255]


def test_cmyk_is_converted() -> None:
    buf = io.BytesIO()
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(buf, "JPEG", quality=95)
    out = load_image(buf.getvalue())
    r, g, b = out.getpixel((8, 8))
    assert out.mode == "RGB" and r > 200 and g < 60 and b < 60


def test_animated_gif_uses_first_frame() -> None:
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert Image.open(io.BytesIO(buf.getvalue())).n_frames == 3
    out = load_image(buf.getvalue())
    assert out.mode == "RGB" and out.getpixel((8, 8)) == (255, 0, 0)


def test_grayscale_and_bilevel() -> None:
    assert load_image(_png_bytes(Image.new("L", (4, 4), 77))).getpixel((0, 0)) == (77, 77, 77)
    assert load_image(_png_bytes(Image.new("1", (4, 4), 1))).getpixel((0, 0)) == (255, 255, 255)


def test_fit_to_size_covers_and_crops_centre() -> None:
    img = Image.new("RGB", (300, 100), (0, 0, 255))
    img.paste((255, 0, 0), (100, 0, 200, 100))  # red centre third
    out = fit_to_size(img, 64, 64)
    assert out.size == (64, 64)
    assert out.getpixel((2, 32))[0] > 200 and out.getpixel((61, 32))[0] > 200  # only the centre survives
    tall = fit_to_size(Image.new("RGB", (50, 200)), 128, 64)
    assert tall.size == (128, 64)
    with pytest.raises(ValueError):
        fit_to_size(img, 0, 64)


def _with_chunks_before_idat(png: bytes, *chunks: bytes) -> bytes:
    at = png.index(b"IDAT") - 4
    return png[:at] + b"".join(chunks) + png[at:]


def test_huge_compressed_metadata_chunk_does_not_refuse_the_image() -> None:
    """Issue 11: a 10 MB (compressed) workflow chunk made Pillow refuse the file as 'truncated or damaged'."""
    rng = np.random.default_rng(0)
    text = rng.bytes(11_000_000).hex().encode()  # 22 MB of hex digits: about 11 MB compressed
    ztxt = _chunk(b"zTXt", b"workflow\0\0" + zlib.compress(text, 1))
    assert len(ztxt) > 10_000_000
    img = Image.new("RGB", (16, 8), (200, 40, 10))
    data = _with_chunks_before_idat(_png_bytes(img), ztxt)
    with pytest.raises(ValueError, match="MAX_TEXT"):  # what Pillow alone does with it
        Image.open(io.BytesIO(data)).load()
    out = load_image(data)
    assert out.size == (16, 8) and out.getpixel((3, 3)) == (200, 40, 10)


def test_bomb_message_quotes_our_limit(tmp_path: Path) -> None:
    """Issue 11: 20000x20000 was refused quoting Pillow's 179 MP limit, not the app's 64 MP."""
    data = _bomb_png(20_000, 20_000, with_data=False)
    with pytest.raises(ImageLoadError) as err:
        load_image(data)
    assert "400 megapixels" in str(err.value) and "the limit is 64 megapixels" in str(err.value)
    assert "178956970" not in str(err.value) and "DOS" not in str(err.value)  # nothing of Pillow's message
