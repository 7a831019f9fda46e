"""Streams the lines of plain, gzip, zstd and zip-packed text files as raw bytes.

Lines are yielded as bytes so the caller decides what an undecodable line means (it is
counted as `invalid_utf8`, not fatal). Memory is bounded by the longest line.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import zipfile
from typing import BinaryIO, Iterator

# Lowercased name endings readable by `iter_lines`.
COMPRESSED = (".gz", ".zst", ".zstd", ".zip")


def _zstd_reader(raw: BinaryIO) -> BinaryIO:
  try:
    import zstandard  # optional dependency
  except ImportError as e:
    raise RuntimeError(
        "reading .zst files needs the `zstandard` package: pip install zstandard") from e
  return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)


@contextlib.contextmanager
def open_binary(path: str) -> Iterator[BinaryIO]:
  """Opens a file for reading, decompressing .gz / .zst by name (case-insensitive)."""
  lower = path.lower()
  with open(path, "rb") as raw:
    if lower.endswith(".gz"):
      with gzip.GzipFile(fileobj=raw) as f:
        yield f
    elif lower.endswith((".zst", ".zstd")):
      with _zstd_reader(raw) as f:
        yield io.BufferedReader(f)
    else:
      yield raw


def iter_lines(path: str) -> Iterator[tuple[str, bytes]]:
  """Yields (location, line) for every line, without its line ending.

  `location` is "<line number>" (1-based), or "<zip member>:<line number>" for a .zip
  archive, whose members are read in name order.
  """
  if path.lower().endswith(".zip"):
    with zipfile.ZipFile(path) as archive:
      for name in sorted(archive.namelist()):
        if name.endswith("/"):
          continue
        with archive.open(name) as f:
          for n, line in enumerate(f, 1):
            yield f"{name}:{n}", line.rstrip(b"\r\n")
    return
  with open_binary(path) as f:
    for n, line in enumerate(f, 1):
      yield str(n), line.rstrip(b"\r\n")
