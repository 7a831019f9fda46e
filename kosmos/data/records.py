"""The record format: msgpack dicts in ArrayRecord shards, plus a manifest per directory.

A record (ARCHITECTURE.md, "Record format"):

    {"id": str, "source": str, "kind": "text" | "pair" | "interleaved" | "conversation",
     "segments": [{"text": str} | {"image": bytes} | {"vector": [float, ...]}
                  | {"turn": "user" | "assistant"}, ...],
     "meta": {...}}

A conversation (`kind: "conversation"`, made by `data/prepare.py conversations`) keeps its
turn structure: each turn is a `{"turn": role}` segment followed by that turn's text and
image segments in order; turns alternate user, assistant, ..., and the last is the
assistant's. Only conversations hold turn segments. The chat template
(`kosmos.data.chat`) renders roles, separators and the system prompt at training time.

A shard directory holds `<prefix>-NNNNN-of-MMMMM.array_record` files and a
`manifest.json` (counts per kind, bytes and sha256 per shard, the converter and its
arguments, counts of dropped inputs by reason).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
from typing import Any, Iterable, Iterator

import msgpack
from array_record.python import array_record_module
from etils import epath

KINDS = ("text", "pair", "interleaved", "conversation")
SEGMENT_KEYS = ("text", "image", "vector", "turn")
CONVERSATION = "conversation"
USER, ASSISTANT = "user", "assistant"
ROLES = (USER, ASSISTANT)
MANIFEST = "manifest.json"
SUFFIX = ".array_record"


class RecordError(ValueError):
  """A record that does not follow the format."""


def validate(record: dict[str, Any]) -> dict[str, Any]:
  """Checks the record's fields; returns it unchanged or raises RecordError."""
  for key in ("id", "source", "kind", "segments"):
    if key not in record:
      raise RecordError(f"record {record.get('id')!r} lacks field {key!r}")
  if record["kind"] not in KINDS:
    raise RecordError(f"record {record['id']!r}: kind {record['kind']!r} not in {KINDS}")
  if not isinstance(record["segments"], list) or not record["segments"]:
    raise RecordError(f"record {record['id']!r}: segments must be a non-empty list")
  for segment in record["segments"]:
    if not isinstance(segment, dict) or len(segment) != 1 or next(iter(segment)) not in SEGMENT_KEYS:
      raise RecordError(
          f"record {record['id']!r}: segment {str(segment)[:80]!r} must be one of "
          f"{{'text': str}}, {{'image': bytes}}, {{'vector': [float]}}, {{'turn': role}}")
  turns = [s["turn"] for s in record["segments"] if "turn" in s]
  if record["kind"] == CONVERSATION:
    if ("turn" not in record["segments"][0] or not turns
        or turns != [ROLES[i % 2] for i in range(len(turns))] or turns[-1] != ASSISTANT):
      raise RecordError(f"record {record['id']!r}: a conversation starts with a turn segment "
                        f"and its turns alternate {ROLES}, ending on {ASSISTANT!r}; got {turns}")
  elif turns:
    raise RecordError(f"record {record['id']!r}: kind {record['kind']!r} has turn segments "
                      f"(only {CONVERSATION!r} records may)")
  return record


def encode(record: dict[str, Any]) -> bytes:
  """Validates and packs one record to msgpack bytes."""
  validate(record)
  return msgpack.packb({"meta": {}, **record}, use_bin_type=True)


def decode(data: bytes) -> dict[str, Any]:
  """Unpacks msgpack bytes into a record; raises RecordError on bytes that are not one."""
  try:
    record = msgpack.unpackb(data, raw=False)
  except Exception as e:  # msgpack raises several unrelated types
    raise RecordError(f"undecodable record ({len(data)} bytes): {e}") from e
  if not isinstance(record, dict):
    raise RecordError(f"undecodable record: top level is {type(record).__name__}, not a map")
  return validate(record)


def shard_name(prefix: str, index: int, count: int) -> str:
  return f"{prefix}-{index:05d}-of-{count:05d}{SUFFIX}"


class ShardWriter:
  """Writes records to one ArrayRecord shard; finishing writes to a temp name, then renames.

  The rename makes a shard either complete or absent, so a converter that is rerun can
  skip the shards that exist (idempotent per shard).
  """

  def __init__(self, path: str, group_size: int = 1):
    self.path = path
    self._tmp = path + ".tmp"
    self._writer = array_record_module.ArrayRecordWriter(self._tmp, f"group_size:{group_size}")
    self.counts: collections.Counter[str] = collections.Counter()
    self.bytes = 0

  def write(self, record: dict[str, Any]) -> None:
    data = encode(record)
    self._writer.write(data)
    self.counts[record["kind"]] += 1
    self.bytes += len(data)

  def close(self) -> None:
    self._writer.close()
    os.replace(self._tmp, self.path)

  def __enter__(self) -> "ShardWriter":
    return self

  def __exit__(self, exc_type, *_) -> None:
    if exc_type is None:
      self.close()
    else:
      self._writer.close()
      os.remove(self._tmp)


def read_shard(path: str) -> Iterator[dict[str, Any]]:
  """Yields the records of one shard in order (decoding each)."""
  reader = array_record_module.ArrayRecordReader(path)
  try:
    for i in range(reader.num_records()):
      yield decode(reader.read([i])[0])
  finally:
    reader.close()


def shard_paths(directory: str) -> list[str]:
  """The shard files of a record directory, sorted; raises if there are none."""
  paths = sorted(str(p) for p in epath.Path(directory).glob("*" + SUFFIX))
  if not paths:
    raise FileNotFoundError(f"no *{SUFFIX} shards in {directory!r}")
  return paths


def read_dir(directory: str) -> Iterator[dict[str, Any]]:
  """Yields every record of a directory, shard by shard."""
  for path in shard_paths(directory):
    yield from read_shard(path)


def sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


@dataclasses.dataclass
class ShardInfo:
  name: str
  records: int
  bytes: int
  sha256: str
  kinds: dict[str, int]


def write_manifest(directory: str, shards: Iterable[ShardInfo], *, converter: str,
                   arguments: dict[str, Any], dropped: dict[str, int]) -> dict[str, Any]:
  """Writes `manifest.json` for a finished record directory and returns it."""
  shards = sorted(shards, key=lambda s: s.name)
  kinds: collections.Counter[str] = collections.Counter()
  for s in shards:
    kinds.update(s.kinds)
  manifest = {
      "format": "kosmos-records-v1",
      "converter": converter,
      "arguments": arguments,
      "records": sum(s.records for s in shards),
      "kinds": dict(kinds),
      "bytes": sum(s.bytes for s in shards),
      "shards": [dataclasses.asdict(s) for s in shards],
      "dropped": dict(sorted(dropped.items())),
  }
  tmp = os.path.join(directory, MANIFEST + ".tmp")
  with open(tmp, "w") as f:
    json.dump(manifest, f, indent=1, sort_keys=True)
  os.replace(tmp, os.path.join(directory, MANIFEST))
  return manifest


def read_manifest(directory: str) -> dict[str, Any]:
  with open(os.path.join(directory, MANIFEST)) as f:
    return json.load(f)
