"""Flags, input listing and the per-shard context shared by every converter.

A converter splits its input into `Unit`s (a file, a parquet row group, a range of TFDS
examples), the runner (`runner.py`) assigns contiguous runs of units to output shards,
and for each shard calls the converter's `convert_unit(unit, args, ctx)` which yields
records. `Context` counts dropped inputs by reason and checks images (validity, size,
exact duplicates by sha256 within the shard).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import glob
import hashlib
import os
import json
from typing import Any, Iterable, Iterator

from kosmos.data import images as pipeline_images
from kosmos.data.convert import images, lines

# Reasons for dropping an input, counted in manifest.json `dropped`. Converters may add
# their own (documented in data/README.md); these are the shared ones.
EMPTY_TEXT = "empty_text"
INVALID_UTF8 = "invalid_utf8"
INVALID_JSON = "invalid_json"
MISSING_FIELD = "missing_field"
MISSING_IMAGE = "missing_image"
DUPLICATE_IMAGE = "duplicate_image"


def add_common_arguments(parser: argparse.ArgumentParser, *, input_help: str,
                         min_image_size: int = 1) -> None:
  """Adds the flags every converter shares (--input, --output, --shards, ...)."""
  parser.add_argument("--input", nargs="+", action="extend", required=True, metavar="PATH",
                      help=input_help)
  parser.add_argument("--output", required=True, metavar="DIR",
                      help="output directory for *.array_record shards and manifest.json")
  parser.add_argument("--shards", type=int, default=0,
                      help="number of output shards; 0 = about one per 256 MiB of input, "
                           "at most one per input unit (file / row group)")
  parser.add_argument("--workers", type=int, default=1,
                      help="processes converting shards in parallel (does not change the output)")
  parser.add_argument("--source", default=None,
                      help="record `source` name and shard file prefix (default: the format)")
  parser.add_argument("--max-records", type=int, default=0,
                      help="write at most this many records (split evenly over shards; 0 = all)")
  parser.add_argument("--min-image-size", type=int, default=min_image_size,
                      help="drop images whose shorter side is below this many pixels")
  parser.add_argument("--max-image-bytes", type=int, default=32 << 20,
                      help="drop images whose encoded size exceeds this many bytes")
  parser.add_argument("--max-image-pixels", type=int,
                      default=pipeline_images.DEFAULT_MAX_PIXELS,
                      help="drop images with more pixels than this (default: the training "
                           "pipeline's limit, data.max_image_pixels, above which it skips them)")


@dataclasses.dataclass(frozen=True)
class Unit:
  """One piece of input converted by one shard worker.

  `key` names it uniquely (used for ordering and in the shard fingerprint), `size` is an
  estimate in bytes (used for the automatic shard count), `payload` is format-specific.
  """
  key: str
  size: int
  payload: Any = None


def expand_inputs(patterns: Iterable[str], suffixes: tuple[str, ...]) -> list[tuple[str, str]]:
  """Files named by paths, directories (searched recursively) or globs, sorted.

  Only files whose lowercased name ends with one of `suffixes` are kept from directories
  and globs; a file named explicitly must match too. Returns (path, key) pairs where key
  is the path relative to the directory given (or the basename for files and globs).
  Raises FileNotFoundError naming the pattern that matched nothing.
  """
  found: dict[str, str] = {}
  for pattern in patterns:
    matches: list[tuple[str, str]] = []
    if os.path.isdir(pattern):
      for root, dirs, files in os.walk(pattern):
        dirs.sort()
        for name in files:
          path = os.path.join(root, name)
          matches.append((path, os.path.relpath(path, pattern)))
    elif os.path.isfile(pattern):
      matches.append((pattern, os.path.basename(pattern)))
    else:
      matches.extend((p, os.path.basename(p)) for p in glob.glob(pattern, recursive=True)
                     if os.path.isfile(p))
    matches = [(p, k) for p, k in matches if p.lower().endswith(suffixes)]
    if not matches:
      raise FileNotFoundError(
          f"--input {pattern!r} names no file ending in one of {', '.join(suffixes)}")
    for path, key in matches:
      found.setdefault(os.path.abspath(path), key.replace(os.sep, "/"))
  return sorted(((p, k) for p, k in found.items()), key=lambda pk: (pk[1], pk[0]))


def file_units(patterns: Iterable[str], suffixes: tuple[str, ...]) -> list[Unit]:
  """One Unit per input file; payload is the absolute path."""
  return [Unit(key=key, size=os.path.getsize(path), payload=path)
          for path, key in expand_inputs(patterns, suffixes)]


def source_name(args: argparse.Namespace) -> str:
  return args.source or args.format


class Context:
  """Per-shard state: drop counters and the set of image hashes already written.

  Duplicate detection covers one output shard (one worker pass); images of records that
  were dropped for other reasons are not remembered.
  """

  def __init__(self, args: argparse.Namespace):
    self.args = args
    self.dropped: collections.Counter[str] = collections.Counter()
    self._seen: set[bytes] = set()

  def drop(self, reason: str, count: int = 1) -> None:
    if count:
      self.dropped[reason] += count

  def check_image(self, data: bytes | None, pending: set[bytes] | None = None) -> bytes | None:
    """The bytes to store if `data` is a usable image not yet written, else counts why -> None.

    The bytes are `data`, or for a JPEG the part up to its first image's end marker
    (`images.check`); duplicates are found on those. `pending` holds digests of images
    already accepted into the record being built, so a document that repeats an image keeps
    only its first copy.
    """
    if data is None:
      self.drop(MISSING_IMAGE)
      return None
    data, reason = images.check(data, min_size=self.args.min_image_size,
                                max_bytes=self.args.max_image_bytes,
                                max_pixels=self.args.max_image_pixels)
    if reason:
      self.drop(reason)
      return None
    digest = hashlib.sha256(data).digest()
    if digest in self._seen or (pending is not None and digest in pending):
      self.drop(DUPLICATE_IMAGE)
      return None
    if pending is not None:
      pending.add(digest)
    return data

  def commit(self, record: dict[str, Any]) -> None:
    """Remembers the images of a record that is being written."""
    for segment in record["segments"]:
      if "image" in segment:
        self._seen.add(hashlib.sha256(segment["image"]).digest())


def decode_text(data: bytes, ctx: Context, encoding: str = "utf-8") -> str | None:
  """Decodes bytes strictly; counts `invalid_utf8` (or the encoding's failure) and returns None."""
  try:
    return data.decode(encoding)
  except UnicodeDecodeError:
    ctx.drop(INVALID_UTF8 if encoding.replace("-", "").lower() == "utf8" else "invalid_encoding")
    return None


def json_objects(path: str, ctx: Context) -> Iterator[tuple[str, dict[str, Any]]]:
  """(location, object) of a jsonl file's lines (`lines.iter_lines`); blank lines skipped,
  undecodable ones counted (`invalid_utf8`, `invalid_json` also for a non-object)."""
  for location, line in lines.iter_lines(path):
    if not line.strip():
      continue  # blank lines separate nothing in jsonl
    decoded = decode_text(line, ctx)
    if decoded is None:
      continue
    try:
      obj = json.loads(decoded)
    except ValueError:
      obj = None
    if not isinstance(obj, dict):
      ctx.drop(INVALID_JSON)
      continue
    yield location, obj


def caption(value: Any, ctx: Context) -> str | None:
  """A caption cell (str, or UTF-8 bytes) as is, or None after counting why it is unusable
  (`invalid_utf8`, `missing_field`, `empty_text` for whitespace only)."""
  if isinstance(value, bytes):
    value = decode_text(value, ctx)
    if value is None:
      return None
  if not isinstance(value, str):
    ctx.drop(MISSING_FIELD)
    return None
  if not value.strip():
    ctx.drop(EMPTY_TEXT)
    return None
  return value


def field(obj: Any, path: str) -> Any:
  """Follows a '/'-separated path of keys (and integer list indices) into nested dicts.

  Returns None when a step is missing, e.g. field({"a": [{"b": 1}]}, "a/0/b") == 1.
  """
  for step in path.split("/") if path else []:
    if isinstance(obj, dict):
      obj = obj.get(step)
    elif isinstance(obj, (list, tuple)) and step.lstrip("-").isdigit():
      i = int(step)
      obj = obj[i] if -len(obj) <= i < len(obj) else None
    else:
      return None
    if obj is None:
      return None
  return obj


def meta_value(value: Any) -> Any:
  """A value storable in record meta (msgpack): JSON-like values as is, others as str."""
  if value is None or isinstance(value, (str, int, float, bool, bytes)):
    return value
  if isinstance(value, (list, tuple)):
    return [meta_value(v) for v in value]
  if isinstance(value, dict):
    return {str(k): meta_value(v) for k, v in value.items()}
  return str(value)
