"""Image decoding: encoded bytes -> RGB uint8 [S, S, 3] (shorter side resized, center crop).

Repaired (decoded correctly, not counted as bad):
  EXIF orientation (ImageOps.exif_transpose), CMYK, 16-bit greyscale (I;16*, I: scaled by
  1/257 so 65535 -> 255), 32-bit float (clipped to 0..255), palette, 1-bit, LA / RGBA / PA /
  palette with transparency (composited on white), animated GIF/PNG/WebP (first frame).
Rejected with `ImageError.reason` (one of `REASONS`), which the pipeline counts:
  empty       zero bytes
  too_large   width*height above `max_pixels`, checked from the header before decoding
  truncated   the data ends early (a cut JPEG/PNG)
  corrupt     not an image Pillow can identify, or a decoder error
"""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
from PIL import Image, ImageOps

REASONS = ("empty", "too_large", "truncated", "corrupt")
# About 8000 x 8000. The one limit: config.data.max_image_pixels and the converters'
# --max-image-pixels default to it, so no record is written that training would skip.
DEFAULT_MAX_PIXELS = 64_000_000


class ImageError(ValueError):
  """An image that cannot be decoded; `reason` is one of REASONS."""

  def __init__(self, reason: str, message: str):
    super().__init__(message)
    assert reason in REASONS, reason
    self.reason = reason


def _to_rgb(im: Image.Image) -> Image.Image:
  """Any Pillow mode -> RGB; alpha composited on white, 16/32-bit greyscale scaled to 8 bit."""
  mode = im.mode
  if mode == "RGB":
    return im
  if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
    grey = np.asarray(im, dtype=np.float64)
    # I;16*: 16-bit. I (32-bit int): 16-bit range assumed unless every value fits 8 bits.
    scaled = grey if mode == "I" and grey.max(initial=0) <= 255 else grey / 257.0
    grey8 = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return Image.fromarray(grey8, "L").convert("RGB")
  if mode == "F":
    grey8 = np.clip(np.rint(np.asarray(im, dtype=np.float64)), 0, 255).astype(np.uint8)
    return Image.fromarray(grey8, "L").convert("RGB")
  if mode == "P":
    im = im.convert("RGBA" if "transparency" in im.info else "RGB")
  elif mode in ("LA", "La", "PA", "RGBa"):
    im = im.convert("RGBA")
  elif mode == "L" and "transparency" in im.info:
    im = im.convert("RGBA")
  elif mode == "RGB" and "transparency" in im.info:
    im = im.convert("RGBA")
  if im.mode == "RGBA":
    white = Image.new("RGBA", im.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, im).convert("RGB")
  return im.convert("RGB")


def decode(data: bytes, image_size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
  """Decodes one encoded image to RGB uint8 [image_size, image_size, 3].

  Resizes the shorter side to `image_size` (bicubic; JPEGs are first DCT-downscaled by
  `draft` to no less than that size) and center-crops the longer side. Raises ImageError.
  """
  return decode_sized(data, image_size, max_pixels)[0]


def decode_sized(data: bytes, image_size: int, max_pixels: int = DEFAULT_MAX_PIXELS
                 ) -> tuple[np.ndarray, tuple[int, int]]:
  """`decode`, and the (width, height) of the upright image it resized (for `crop_box`; a
  JPEG may be DCT-downscaled first, which changes the size, not the normalised boxes)."""
  if not data:
    raise ImageError("empty", "image has zero bytes")
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
    try:
      im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
      raise ImageError("too_large", f"decompression bomb: {e}") from e
    except Exception as e:  # UnidentifiedImageError, SyntaxError, struct.error ...
      reason = "truncated" if "truncated" in str(e) else "corrupt"
      raise ImageError(reason, f"cannot identify image ({len(data)} bytes): {e}") from e
    width, height = im.size
    if width * height > max_pixels or width <= 0 or height <= 0:
      raise ImageError("too_large", f"image is {width}x{height} = {width * height} pixels, "
                       f"above the limit max_pixels={max_pixels}")
    try:
      if im.format == "JPEG" and im.mode in ("RGB", "L", "CMYK") and not _has_rotation(im):
        scale = image_size / min(width, height)
        im.draft(im.mode, (math.ceil(width * scale), math.ceil(height * scale)))
      im.load()  # first frame of an animation
      im = ImageOps.exif_transpose(im)
      im = _to_rgb(im)
    except Image.DecompressionBombError as e:
      raise ImageError("too_large", f"decompression bomb: {e}") from e
    except Exception as e:  # OSError('image file is truncated'), decoder errors
      reason = "truncated" if "truncated" in str(e) or isinstance(e, EOFError) else "corrupt"
      raise ImageError(reason, f"cannot decode {im.format} {width}x{height}: {e}") from e
  return resize_crop(im, image_size), im.size  # upright (and maybe drafted): what is cropped


def _exif_orientation(im: Image.Image) -> int | None:
  """The EXIF orientation tag (1 when absent); None when the EXIF block is broken."""
  try:
    return im.getexif().get(0x0112, 1)
  except Exception:  # pylint: disable=broad-except
    return None


def _has_rotation(im: Image.Image) -> bool:
  # A broken EXIF block counts: decode without draft, exif_transpose decides.
  return _exif_orientation(im) != 1


# EXIF orientation (tag 0x0112) -> how a normalised point of the stored image lands on the
# upright image that ImageOps.exif_transpose makes: (swap x and y, then flip x, flip y).
# 6 is "rotate 90 degrees clockwise to view": (x, y) -> (1 - y, x).
_ORIENTATIONS = {1: (False, False, False), 2: (False, True, False), 3: (False, True, True),
                 4: (False, False, True), 5: (True, False, False), 6: (True, True, False),
                 7: (True, True, True), 8: (True, False, True)}


def orientation(im: Image.Image) -> int:
  """The EXIF orientation (1-8) that `decode` applies to show `im` upright; 1 when there is
  none, it is out of range, or the EXIF block is broken."""
  value = _exif_orientation(im)
  return value if value in _ORIENTATIONS else 1


def swaps_axes(orientation_: int) -> bool:
  """Whether the upright image is the stored one's height x width (orientations 5-8)."""
  return _ORIENTATIONS.get(orientation_, _ORIENTATIONS[1])[0]


def orient_box(box, orientation_: int, inverse: bool = False):
  """A box normalised on the stored image -> normalised on the upright image `decode` shows
  (EXIF `orientation_`); `inverse`: upright -> stored."""
  swap, flip_x, flip_y = _ORIENTATIONS.get(orientation_, _ORIENTATIONS[1])
  x1, y1, x2, y2 = (float(v) for v in box)
  if swap and not inverse:
    x1, y1, x2, y2 = y1, x1, y2, x2
  if flip_x:  # the flips act on the upright axes both ways
    x1, x2 = 1.0 - x2, 1.0 - x1
  if flip_y:
    y1, y2 = 1.0 - y2, 1.0 - y1
  if swap and inverse:
    x1, y1, x2, y2 = y1, x1, y2, x2
  return (x1, y1, x2, y2)


def _window(width: int, height: int, image_size: int) -> tuple[int, int, int, int]:
  """(resized width, resized height, crop left, crop top) of `resize_crop`."""
  scale = image_size / min(width, height)
  new_w = max(image_size, round(width * scale))
  new_h = max(image_size, round(height * scale))
  return new_w, new_h, (new_w - image_size) // 2, (new_h - image_size) // 2


def resize_crop(im: Image.Image, image_size: int) -> np.ndarray:
  """RGB image -> uint8 [image_size, image_size, 3]: shorter side to size (bicubic), center crop."""
  new_w, new_h, left, top = _window(*im.size, image_size)
  if (new_w, new_h) != im.size:
    im = im.resize((new_w, new_h), Image.Resampling.BICUBIC, reducing_gap=3.0)
  im = im.crop((left, top, left + image_size, top + image_size))
  return np.asarray(im, dtype=np.uint8)


# A box less visible than this after the centre crop is dropped (`crop_box`).
MIN_VISIBLE_FRACTION = 0.5


def crop_box(box, width: int, height: int, image_size: int,
             min_visible: float = MIN_VISIBLE_FRACTION):
  """A box normalised on a width x height image -> normalised on its `resize_crop`, clipped
  to the crop; None when less than `min_visible` of its area (and at least some) remains."""
  new_w, new_h, left, top = _window(width, height, image_size)
  x1, y1, x2, y2 = (float(v) for v in box)
  x1, x2 = (x1 * new_w - left) / image_size, (x2 * new_w - left) / image_size
  y1, y2 = (y1 * new_h - top) / image_size, (y2 * new_h - top) / image_size
  area = (x2 - x1) * (y2 - y1)
  c = [min(max(v, 0.0), 1.0) for v in (x1, y1, x2, y2)]
  visible = max(c[2] - c[0], 0.0) * max(c[3] - c[1], 0.0)
  if area <= 0 or visible <= 0 or visible < min_visible * area:
    return None
  return tuple(c)


def uncrop_box(box, width: int, height: int, image_size: int):
  """The inverse of `crop_box` (without clipping): a box normalised on the crop of a
  width x height image -> normalised on the whole image."""
  new_w, new_h, left, top = _window(width, height, image_size)
  x1, y1, x2, y2 = (float(v) for v in box)
  return ((x1 * image_size + left) / new_w, (y1 * image_size + top) / new_h,
          (x2 * image_size + left) / new_w, (y2 * image_size + top) / new_h)
