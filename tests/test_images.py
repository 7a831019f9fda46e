"""Image decoding: every repaired mode gives the right pixels; every bad input its reason."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from kosmos.data import images


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
  buf = io.BytesIO()
  im.save(buf, fmt, **kw)
  return buf.getvalue()


def test_resize_shorter_side_and_center_crop():
  # 40x20: left half red, right half blue; a 10 px crop of the 20x10 resize keeps the middle
  a = np.zeros((20, 40, 3), np.uint8)
  a[:, :20] = (255, 0, 0)
  a[:, 20:] = (0, 0, 255)
  out = images.decode(encode(Image.fromarray(a), "PNG"), 10)
  assert out.shape == (10, 10, 3) and out.dtype == np.uint8
  np.testing.assert_array_equal(out[:, 1], [[255, 0, 0]] * 10)
  np.testing.assert_array_equal(out[:, -2], [[0, 0, 255]] * 10)


def test_exif_rotated_jpeg_comes_out_upright():
  # Stored landscape 32x16 with top half white, bottom black; EXIF 6 = rotate 90 CW to view.
  a = np.zeros((16, 32, 3), np.uint8)
  a[:8] = 255
  exif = Image.Exif()
  exif[0x0112] = 6
  data = encode(Image.fromarray(a), "JPEG", exif=exif.tobytes(), quality=95)
  out = images.decode(data, 16)  # upright: 16 wide, 32 tall -> crop of the middle 16 rows
  # after a 90 degree clockwise turn the stored top (white) is on the right
  assert out[:, -3].mean() > 240 and out[:, 2].mean() < 15
  plain = images.decode(encode(Image.fromarray(a), "JPEG", quality=95), 16)
  assert plain[2].mean() > 240 and plain[-3].mean() < 15  # without EXIF: white on top


def test_transparent_png_is_white_where_alpha_is_zero():
  a = np.zeros((8, 8, 4), np.uint8)
  a[..., 0] = 200  # red everywhere, but only the left half opaque
  a[:, :4, 3] = 255
  out = images.decode(encode(Image.fromarray(a, "RGBA"), "PNG"), 8)
  np.testing.assert_array_equal(out[:, :4], np.broadcast_to([200, 0, 0], (8, 4, 3)))
  np.testing.assert_array_equal(out[:, 4:], np.full((8, 4, 3), 255))


def test_la_half_alpha_blends_on_white():
  a = np.zeros((8, 8, 2), np.uint8)
  a[..., 0] = 0
  a[..., 1] = 128
  out = images.decode(encode(Image.fromarray(a, "LA"), "PNG"), 8)
  np.testing.assert_allclose(out, 127, atol=1)


def test_palette_with_transparency_and_plain_palette():
  im = Image.new("P", (8, 8), 1)
  im.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
  im.paste(0, (0, 0, 4, 8))
  out = images.decode(encode(im, "PNG", transparency=0), 8)
  np.testing.assert_array_equal(out[:, :4], np.full((8, 4, 3), 255))
  np.testing.assert_array_equal(out[:, 4:], np.broadcast_to([10, 20, 30], (8, 4, 3)))
  out = images.decode(encode(im, "PNG"), 8)
  np.testing.assert_array_equal(out[:, :4], np.zeros((8, 4, 3)))


def test_16bit_png_scales_to_8bit():
  a = np.array([[0, 65535], [32896, 257]], np.uint16).repeat(4, 0).repeat(4, 1)
  im = Image.fromarray(a)
  assert im.mode == "I;16"
  data = encode(im, "PNG")
  assert Image.open(io.BytesIO(data)).mode.startswith("I")
  out = images.decode(data, 8)
  np.testing.assert_array_equal(out[0, 0], [0, 0, 0])
  np.testing.assert_array_equal(out[0, -1], [255, 255, 255])
  np.testing.assert_array_equal(out[-1, 0], [128, 128, 128])
  np.testing.assert_array_equal(out[-1, -1], [1, 1, 1])


def test_cmyk_jpeg():
  im = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red in CMYK
  out = images.decode(encode(im, "JPEG", quality=95), 8)
  np.testing.assert_allclose(out.reshape(-1, 3).mean(0), [255, 0, 0], atol=4)


def test_animated_gif_takes_first_frame():
  frames = [Image.new("RGB", (8, 8), c) for c in [(255, 0, 0), (0, 255, 0)]]
  data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=10)
  assert Image.open(io.BytesIO(data)).n_frames == 2
  out = images.decode(data, 8)
  np.testing.assert_allclose(out.reshape(-1, 3).mean(0), [255, 0, 0], atol=1)


def test_greyscale_and_one_bit():
  out = images.decode(encode(Image.new("L", (8, 8), 77), "PNG"), 4)
  np.testing.assert_array_equal(out, np.full((4, 4, 3), 77))
  out = images.decode(encode(Image.new("1", (8, 8), 1), "PNG"), 4)
  np.testing.assert_array_equal(out, np.full((4, 4, 3), 255))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated(fmt):
  data = encode(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3),
                                                                   dtype=np.uint8)), fmt)
  with pytest.raises(images.ImageError) as e:
    images.decode(data[:len(data) // 2], 16)
  assert e.value.reason == "truncated"


def test_empty_and_corrupt():
  with pytest.raises(images.ImageError) as e:
    images.decode(b"", 16)
  assert e.value.reason == "empty"
  with pytest.raises(images.ImageError) as e:
    images.decode(b"this is not an image at all" * 10, 16)
  assert e.value.reason == "corrupt"
  png = bytearray(encode(Image.new("RGB", (32, 32), (1, 2, 3)), "PNG"))
  png[40:60] = b"\xff" * 20  # damaged IDAT: decoder error, not truncation
  with pytest.raises(images.ImageError) as e:
    images.decode(bytes(png), 16)
  assert e.value.reason in ("corrupt", "truncated")


def test_decompression_bomb_is_rejected_from_the_header():
  data = encode(Image.new("L", (3000, 3000), 0), "PNG")  # tiny file, 9 Mpx
  with pytest.raises(images.ImageError) as e:
    images.decode(data, 16, max_pixels=1_000_000)
  assert e.value.reason == "too_large" and "3000x3000" in str(e.value)
  assert images.decode(data, 16, max_pixels=10_000_000).shape == (16, 16, 3)
