"""Real encoded image files for the converter tests, built in memory."""

import io
import struct
import zlib

import numpy as np
from PIL import Image


def encode(array: np.ndarray, fmt: str = "JPEG", **kwargs) -> bytes:
  """Pillow's encoding of an [H, W, 3] uint8 array (`kwargs` go to `Image.save`)."""
  out = io.BytesIO()
  Image.fromarray(array).save(out, format=fmt, **kwargs)
  return out.getvalue()


def noise(seed: int, shape: tuple[int, int] = (40, 56)) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 255, (*shape, 3), dtype=np.uint8)


def mp4(size: int, seed: int = 0) -> bytes:
  """What a Motion Photo appends after its JPEG: an ftyp box, then media bytes."""
  return b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + bytes(
      np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8))


def png_1bit(width: int, height: int) -> bytes:
  """A real, all-black 1-bit PNG of any declared size; a few KiB on disk for 64 Mpx."""
  def chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
  row = b"\x00" * (1 + (width + 7) // 8)  # filter byte 0, then the packed bits
  return (b"\x89PNG\r\n\x1a\n"
          + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
          + chunk(b"IDAT", zlib.compress(row * height, 9)) + chunk(b"IEND", b""))
