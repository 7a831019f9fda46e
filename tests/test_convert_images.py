"""The converters' image check agrees with what the training pipeline decodes.

Real encoded files built with Pillow (JPEG, progressive JPEG, JPEG with restart markers,
MPO) or by hand (PNG chunks, a JPEG with an embedded thumbnail); every kept image is
decoded by `kosmos.data.images` and compared with the original's pixels.
"""

import argparse
import io
import struct

import numpy as np
import pytest
from PIL import Image

from kosmos import defaults
from kosmos.data import images as pipeline_images
from kosmos.data.convert import common, images, jpeg

from image_files import encode, mp4, noise, png_1bit

RNG = np.random.default_rng(17)
NOISE = noise(17, (48, 72))
JPG = encode(NOISE, quality=90)
PROGRESSIVE = encode(NOISE, quality=90, progressive=True)
RESTARTS = encode(NOISE, quality=90, restart_marker_blocks=1)
MPO = encode(NOISE, "MPO", save_all=True,
              append_images=[Image.fromarray(NOISE[::-1, ::2].copy())])
# A Motion Photo: the JPEG, then an MP4 (ftyp box and media bytes, which hold FF D9 pairs).
MP4 = mp4(64 << 10)
TRAILERS = {"motion_photo": MP4, "zero_padding": b"\x00" * 8192,
            "garbage": bytes(RNG.integers(0, 256, 5000, dtype=np.uint8)) + b"\xff\xd9" * 3}


def _pixels(data):
  """Full-resolution RGB pixels of the first picture."""
  with Image.open(io.BytesIO(data)) as im:
    return np.asarray(im.convert("RGB"))


def _pipeline_ok(data):
  try:
    pipeline_images.decode(data, 16)
    return True
  except pipeline_images.ImageError:
    return False


@pytest.mark.parametrize("trailer", sorted(TRAILERS))
@pytest.mark.parametrize("base", ["baseline", "progressive", "restarts"])
def test_jpeg_with_data_after_its_end_is_kept_without_it(trailer, base):
  jpg = {"baseline": JPG, "progressive": PROGRESSIVE, "restarts": RESTARTS}[base]
  data = jpg + TRAILERS[trailer]
  assert len(data) - len(jpg) > 4096
  stored, reason = images.check(data)
  assert reason is None and stored == jpg  # the trailer is cut off, nothing else
  np.testing.assert_array_equal(_pixels(stored), _pixels(data))
  np.testing.assert_array_equal(pipeline_images.decode(stored, 24),
                                pipeline_images.decode(data, 24))


@pytest.mark.parametrize("base", ["baseline", "progressive", "restarts"])
def test_kept_exactly_when_the_pipeline_decodes_at_every_cut(base):
  jpg = {"baseline": JPG, "progressive": PROGRESSIVE, "restarts": RESTARTS}[base]
  data = jpg + MP4[:6000]
  cuts = sorted(set(range(1, len(data) + 1, 23)) | set(range(len(jpg) - 4, len(jpg) + 5)))
  kept = [k for k in cuts if images.check(data[:k])[1] is None]
  assert kept == [k for k in cuts if _pipeline_ok(data[:k])]
  assert kept and min(kept) == len(jpg)  # every cut before the end marker is dropped
  assert all(images.check(data[:k]) == (None, images.CORRUPT_IMAGE)
             for k in cuts if 100 < k < len(jpg))


def test_end_marker_of_an_embedded_thumbnail_does_not_hide_truncation():
  # A COM segment holding a whole small JPEG (like an EXIF thumbnail): its FF D9 lies within
  # the last 4 KiB of the cut file, but the picture's own scan data is cut short.
  thumbnail = encode(NOISE[:8, :8])
  data = JPG[:2] + b"\xff\xfe" + struct.pack(">H", len(thumbnail) + 2) + thumbnail + JPG[2:]
  assert images.check(data) == (data, None)
  cut = data[:len(data) - 600]
  assert b"\xff\xd9" in cut[-4096:]
  assert not _pipeline_ok(cut)
  assert images.check(cut) == (None, images.CORRUPT_IMAGE)
  assert jpeg.image_end(cut) is None and jpeg.image_end(data) == len(data)


def test_mpo_keeps_its_first_picture():
  assert Image.open(io.BytesIO(MPO)).format == "MPO"
  stored, reason = images.check(MPO)
  assert reason is None and MPO.startswith(stored) and len(stored) < len(MPO)
  assert MPO[len(stored):].startswith(b"\xff\xd8")  # the second picture is what was cut
  np.testing.assert_array_equal(_pixels(stored), _pixels(MPO))
  np.testing.assert_array_equal(pipeline_images.decode(stored, 24),
                                pipeline_images.decode(MPO, 24))
  # Cut inside the second picture: the first is whole, the pipeline decodes it; kept.
  assert _pipeline_ok(MPO[:-100]) and images.check(MPO[:-100]) == (stored, None)
  # Cut inside the first picture: dropped, as the pipeline cannot decode it.
  assert not _pipeline_ok(MPO[:len(stored) - 50])
  assert images.check(MPO[:len(stored) - 50]) == (None, images.CORRUPT_IMAGE)


def test_one_pixel_limit_shared_with_the_pipeline():
  parser = argparse.ArgumentParser()
  common.add_common_arguments(parser, input_help="x")
  args = parser.parse_args(["--input", "a", "--output", "b"])
  assert args.max_image_pixels == pipeline_images.DEFAULT_MAX_PIXELS == 64_000_000
  assert defaults.data().max_image_pixels == pipeline_images.DEFAULT_MAX_PIXELS


def test_image_above_the_pipeline_limit_is_dropped():
  np.testing.assert_array_equal(_pixels(png_1bit(5, 3)), np.zeros((3, 5, 3)))  # a real PNG
  over, at = png_1bit(8001, 8000), png_1bit(8000, 8000)  # 64.008 and 64.0 Mpx
  with pytest.raises(pipeline_images.ImageError) as e:
    pipeline_images.decode(over, 16)
  assert e.value.reason == "too_large"
  assert images.check(over) == (None, images.IMAGE_TOO_LARGE)
  assert images.check(at) == (at, None)
  small = encode(NOISE)
  assert images.check(small, max_pixels=48 * 72 - 1) == (None, images.IMAGE_TOO_LARGE)
  assert images.check(small, max_pixels=48 * 72) == (small, None)


def test_max_bytes_counts_the_stored_bytes():
  data = JPG + MP4
  assert images.check(data, max_bytes=len(JPG)) == (JPG, None)
  assert images.check(data, max_bytes=len(JPG) - 1) == (None, images.IMAGE_TOO_LARGE)


def test_other_formats_are_unsupported_not_corrupt():
  gif = encode(NOISE, "GIF")
  svg = b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="4"/>'
  heic = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64
  for data in (gif, svg, b"  <svg width='1'></svg>", heic, encode(NOISE, "BMP")):
    assert images.check(data) == (None, images.UNSUPPORTED_IMAGE_FORMAT), data[:16]
  for data in (b"\xff\xd8 not a jpeg", b"<html>no svg here</html>", b"garbage" * 10):
    assert images.check(data) == (None, images.CORRUPT_IMAGE), data[:16]
  assert images.check(b"") == (None, images.EMPTY_IMAGE)
