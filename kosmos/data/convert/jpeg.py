"""Where a JPEG's first image ends: a walk over its markers, without decoding pixels.

Phones append data after a JPEG's end-of-image marker (EOI, FF D9): the video of a Motion
Photo, the further pictures of a multi-picture (MPO) file, the gain map of an Ultra HDR
photo; other files carry padding or garbage there. Decoders stop at the first image's EOI,
so the bytes up to it decode to the same pixels. A file without that EOI was cut short
(a truncated download), which the training pipeline rejects as `truncated`.

The walk follows libjpeg's reading: a marker is FF (any number of FF fill bytes) and a byte
that is neither 00 nor FF; SOI, TEM and RST0-7 stand alone, every other marker before EOI
carries a 2-byte big-endian length that counts itself. FF 00 (a stuffed FF inside
entropy-coded scan data) and bytes between segments are skipped, as libjpeg skips them
(with a warning). Application segments are jumped over by their length, so the EOI of an
EXIF thumbnail embedded in APP1 is not mistaken for the image's own.
"""

from __future__ import annotations

import re

SOI = b"\xff\xd8"
_EOI, _TEM = 0xD9, 0x01
_STANDALONE = frozenset((0xD8, _TEM, *range(0xD0, 0xD8)))  # SOI, TEM, RST0-7
_MARKER = re.compile(rb"\xff+([^\x00\xff])")


def image_end(data: bytes) -> int | None:
  """The offset just past the first image's EOI marker, or None if there is none.

  None also when the data does not start with SOI or a segment length is invalid or runs
  past the end of the data (a truncated file).
  """
  if not data.startswith(SOI):
    return None
  pos = len(SOI)
  while True:
    found = _MARKER.search(data, pos)
    if found is None:
      return None
    marker, pos = found.group(1)[0], found.end()
    if marker == _EOI:
      return pos
    if marker in _STANDALONE:
      continue
    if pos + 2 > len(data):
      return None
    length = int.from_bytes(data[pos:pos + 2], "big")
    if length < 2 or pos + length > len(data):
      return None
    pos += length
