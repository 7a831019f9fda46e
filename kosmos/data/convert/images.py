"""Cheap image checks, image-file lookup by URL, and array encoding for the converters.

Images are stored as their original encoded bytes (a JPEG cut after its first image's end
marker); nothing here decodes pixels except `encode_array`, which encodes already-decoded
arrays (TFDS) to PNG or JPEG.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import urllib.parse
import warnings

import numpy as np
from PIL import Image

from kosmos.data import images as pipeline_images
from kosmos.data.convert import jpeg

# Formats stored in records (Pillow's names). MPO is a JPEG whose further pictures follow
# its first image's end marker; decoders read the first picture.
FORMATS = ("JPEG", "MPO", "PNG", "WEBP")
EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
_EXT_VARIANTS = tuple(e for ext in EXTENSIONS for e in (ext, ext.upper())) + ("",)
# Container formats (HEIF, AVIF) and SVG, which this Pillow may not identify at all.
_ISO_BMFF_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1",
                    b"avif", b"avis")

EMPTY_IMAGE = "empty_image"
CORRUPT_IMAGE = "corrupt_image"
UNSUPPORTED_IMAGE_FORMAT = "unsupported_image_format"
IMAGE_TOO_LARGE = "image_too_large"
IMAGE_TOO_SMALL = "image_too_small"


def check(data: bytes, *, min_size: int = 1, max_bytes: int = 32 << 20,
          max_pixels: int = pipeline_images.DEFAULT_MAX_PIXELS) -> tuple[bytes | None, str | None]:
  """(bytes to store, None) for a usable encoded image, else (None, the drop reason).

  Reads only the header (size, format) and runs Pillow's `verify()` (PNG: chunk CRCs).
  A JPEG (or MPO) must hold its first image's end marker (which catches truncated
  downloads, see `jpeg.image_end`); what follows the marker (a Motion Photo's video, an
  MPO's further pictures, padding) is cut off, so the stored bytes decode to the same
  pixels. `max_pixels` defaults to the training pipeline's limit, `max_bytes` applies to
  the bytes stored. Pixels are not decoded.
  """
  if not data:
    return None, EMPTY_IMAGE
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", Image.DecompressionBombWarning)
      with Image.open(io.BytesIO(data)) as image:
        fmt, (width, height) = image.format, image.size
        if fmt not in FORMATS:
          return None, UNSUPPORTED_IMAGE_FORMAT
        if width * height > max_pixels:
          return None, IMAGE_TOO_LARGE
        if min(width, height) < min_size:
          return None, IMAGE_TOO_SMALL
        image.verify()
  except Image.DecompressionBombError:
    return None, IMAGE_TOO_LARGE
  except Image.UnidentifiedImageError:
    return None, UNSUPPORTED_IMAGE_FORMAT if _known_unsupported(data) else CORRUPT_IMAGE
  except Exception:  # Pillow raises many types for bad data
    return None, CORRUPT_IMAGE
  if fmt in ("JPEG", "MPO"):
    end = jpeg.image_end(data)
    if end is None:
      return None, CORRUPT_IMAGE
    data = data[:end]
  if len(data) > max_bytes:
    return None, IMAGE_TOO_LARGE
  return data, None


def _known_unsupported(data: bytes) -> bool:
  """Whether unidentified bytes are SVG, HEIF or AVIF (formats, not damage)."""
  if data[4:8] == b"ftyp" and data[8:12] in _ISO_BMFF_BRANDS:
    return True
  head = data[:1024].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
  return head.startswith((b"<svg", b"<?xml")) and b"<svg" in data[:4096].lower()


def url_stems(url: str) -> list[str]:
  """File stems an image downloaded from `url` may have been saved under.

  The URL's last path component (percent-decoded) as is and without its extension, and
  the sha1 and sha256 hex digests of the URL string.
  """
  stems = []
  path = urllib.parse.urlsplit(url).path if "://" in url else url.split("?")[0]
  base = urllib.parse.unquote(path.rstrip("/").rsplit("/", 1)[-1])
  if base and base not in (".", ".."):
    stems.append(base)
    root = os.path.splitext(base)[0]
    if root and root != base:
      stems.append(root)
  encoded = url.encode("utf-8", "surrogatepass")
  stems.append(hashlib.sha1(encoded).hexdigest())
  stems.append(hashlib.sha256(encoded).hexdigest())
  return stems


def find_file(url: str, directories: list[str]) -> str | None:
  """The first existing file `dir/stem[.ext]` for the URL's stems (see `url_stems`)."""
  for directory in directories:
    for stem in url_stems(url):
      if "/" in stem or "\\" in stem:
        continue
      for ext in _EXT_VARIANTS:
        path = os.path.join(directory, stem + ext)
        if os.path.isfile(path):
          return path
  return None


def read_file(path: str) -> bytes | None:
  try:
    with open(path, "rb") as f:
      return f.read()
  except OSError:
    return None


def decode_data_uri(uri: str) -> bytes | None:
  """The bytes of a `data:[<mime>][;base64],<data>` URI, or None if it is malformed."""
  header, sep, payload = uri.partition(",")
  if not sep or not header.lower().startswith("data:"):
    return None
  try:
    if header.lower().endswith(";base64"):
      return base64.b64decode("".join(payload.split()), validate=False)
    return urllib.parse.unquote_to_bytes(payload)
  except ValueError:
    return None


def encode_array(pixels: np.ndarray, fmt: str = "png", quality: int = 95) -> bytes:
  """Encodes a decoded image [H, W] or [H, W, C] (C in 1, 3, 4), uint8, to PNG or JPEG bytes."""
  array = np.asarray(pixels)
  if array.dtype != np.uint8:
    raise ValueError(f"image array dtype {array.dtype} is not uint8")
  if array.ndim == 3 and array.shape[-1] == 1:
    array = array[..., 0]
  if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
    raise ValueError(f"image array shape {array.shape} is not [H, W] or [H, W, 1|3|4]")
  image = Image.fromarray(array)
  out = io.BytesIO()
  if fmt == "jpeg":
    image.convert("RGB").save(out, format="JPEG", quality=quality)
  elif fmt == "png":
    image.save(out, format="PNG")
  else:
    raise ValueError(f"image encoding {fmt!r} is not one of 'png', 'jpeg'")
  return out.getvalue()
