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
  return resize_crop(im, image_size)


def _has_rotation(im: Image.Image) -> bool:
  try:
    return im.getexif().get(0x0112, 1) != 1
  except Exception:  # a broken EXIF block: decode without draft, exif_transpose decides
    return True


def resize_crop(im: Image.Image, image_size: int) -> np.ndarray:
  """RGB image -> uint8 [image_size, image_size, 3]: shorter side to size (bicubic), center crop."""
  width, height = im.size
  scale = image_size / min(width, height)
  new_w = max(image_size, round(width * scale))
  new_h = max(image_size, round(height * scale))
  if (new_w, new_h) != (width, height):
    im = im.resize((new_w, new_h), Image.Resampling.BICUBIC, reducing_gap=3.0)
  left = (new_w - image_size) // 2
  top = (new_h - image_size) // 2
  im = im.crop((left, top, left + image_size, top + image_size))
  return np.asarray(im, dtype=np.uint8)
