"""Tensor-by-tensor I/O: safetensors shards (read and write) and Orbax params leaves.

Nothing here holds more than one tensor of a checkpoint at a time:

* `SafetensorsReader` parses the JSON headers of every shard of a Hugging Face directory
  (`model.safetensors`, or the files named by `model.safetensors.index.json`) and reads
  one tensor per `get` call with a seek and a `readinto` (bf16 through ml_dtypes, which
  the safetensors package's numpy API cannot return). An absent directory or shard, a
  truncated file or a malformed header is a `BadFile` naming the file.
* `ShardedWriter` plans the shards from the list of (name, shape, dtype) before any data
  exists, writes each shard's header first and then each tensor as it arrives, so an
  export never builds a state dict. Shards are named like `save_pretrained` names them
  (`model.safetensors`, or `model-00001-of-0000K.safetensors` + the index).
* `read_param` restores one leaf of a params-only Orbax checkpoint (partial restore).

The file format (https://github.com/huggingface/safetensors): 8-byte little-endian header
length N, N bytes of JSON {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__":
{...}} padded with spaces to a multiple of 8, then the raw little-endian tensor bytes.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any, Iterable, Sequence

import ml_dtypes
import numpy as np

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

_DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_NAMES = {v: k for k, v in _DTYPES.items()}


def dtype_name(dtype: Any) -> str:
  """numpy dtype -> safetensors dtype string ('F32', 'BF16', ...)."""
  dtype = np.dtype(dtype)
  if dtype not in _NAMES:
    raise ValueError(f"dtype {dtype} has no safetensors name; valid: {sorted(map(str, _NAMES))}")
  return _NAMES[dtype]


def parse_size(text: str | int) -> int:
  """'5GB', '500MB', '10KB' or a byte count -> bytes (decimal units, as transformers)."""
  if isinstance(text, int):
    return text
  units = {"TB": 10**12, "GB": 10**9, "MB": 10**6, "KB": 10**3, "B": 1}
  s = text.strip().upper()
  for unit, factor in units.items():
    if s.endswith(unit) and s[:-len(unit)].strip().replace(".", "", 1).isdigit():
      return int(float(s[:-len(unit)]) * factor)
  if s.isdigit():
    return int(s)
  raise ValueError(f"shard size {text!r} not understood; use e.g. 5GB, 500MB or a byte count")


# ----------------------------------------------------------------------------- reading


class BadFile(ValueError):
  """A checkpoint file or directory that is absent or malformed; the message names it."""


def _read_header(path: str) -> tuple[int, dict[str, Any]]:
  """(data start, header dict) of one safetensors file; BadFile naming `path` if malformed."""
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    head = f.read(8)
    if len(head) < 8:
      raise BadFile(f"{path}: {size} bytes, shorter than the 8-byte safetensors header length "
                    "(truncated or not a safetensors file)")
    (length,) = struct.unpack("<Q", head)
    if 8 + length > size:
      raise BadFile(f"{path}: safetensors header of {length} bytes does not fit in the file's "
                    f"{size} bytes (truncated or not a safetensors file)")
    try:
      header = json.loads(f.read(length))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
      raise BadFile(f"{path}: safetensors header is not valid JSON ({e})") from None
  if not isinstance(header, dict):
    raise BadFile(f"{path}: safetensors header is a {type(header).__name__}, not a JSON object")
  header.pop("__metadata__", None)
  for key, info in header.items():
    try:
      begin, end = info["data_offsets"]
      ok = 0 <= begin <= end and isinstance(info["dtype"], str) and isinstance(info["shape"], list)
    except (TypeError, KeyError, ValueError):
      ok = False
    if not ok:
      raise BadFile(f"{path}: header entry {key!r} = {info!r} is malformed "
                    "(want {dtype, shape, data_offsets: [begin, end]})")
    if 8 + length + end > size:
      raise BadFile(f"{path}: tensor {key!r} ends at byte {8 + length + end}, past the file's "
                    f"{size} bytes (truncated)")
  return 8 + length, header


class SafetensorsReader:
  """Random access to the tensors of one HF model directory (all its shards)."""

  def __init__(self, directory: str):
    self.directory = directory
    if not os.path.isdir(directory):
      raise BadFile(f"{directory!r} is not a directory (a transformers model directory)")
    index = os.path.join(directory, INDEX_FILE)
    if os.path.exists(index):
      try:
        with open(index) as f:
          files = sorted(set(json.load(f)["weight_map"].values()))
      except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise BadFile(f"{index}: not a safetensors index (want {{\"weight_map\": {{tensor: "
                      f"file}}}}): {type(e).__name__}: {e}") from None
    elif os.path.exists(os.path.join(directory, SINGLE_FILE)):
      files = [SINGLE_FILE]
    else:
      files = sorted(n for n in os.listdir(directory) if n.endswith(".safetensors"))
    if not files:
      raise BadFile(
          f"no safetensors weights in {directory!r} (expected {SINGLE_FILE} or {INDEX_FILE}; "
          "PyTorch .bin checkpoints are not read: re-save them with safe_serialization=True)")
    self._where: dict[str, tuple[str, int, str, tuple[int, ...], int, int]] = {}
    for name in files:
      path = os.path.join(directory, name)
      if not os.path.isfile(path):
        raise BadFile(f"{path} not found (named by {INDEX_FILE})")
      base, header = _read_header(path)
      for key, info in header.items():
        begin, end = info["data_offsets"]
        self._where[key] = (path, base, info["dtype"], tuple(info["shape"]), begin, end)

  def keys(self) -> list[str]:
    return sorted(self._where)

  def __contains__(self, name: str) -> bool:
    return name in self._where

  def shape(self, name: str) -> tuple[int, ...]:
    return self._where[name][3]

  def get(self, name: str) -> np.ndarray:
    """Reads exactly one tensor from disk."""
    if name not in self._where:
      raise KeyError(f"tensor {name!r} not in {self.directory!r}")
    path, base, dtype, shape, begin, end = self._where[name]
    if dtype not in _DTYPES:
      raise ValueError(f"tensor {name!r} has dtype {dtype}; readable: {sorted(_DTYPES)}")
    out = np.empty(shape, _DTYPES[dtype])
    if out.nbytes != end - begin:
      raise ValueError(f"tensor {name!r}: {end - begin} bytes on disk for shape {shape} {dtype}")
    with open(path, "rb") as f:
      f.seek(base + begin)
      view = memoryview(out.reshape(-1).view(np.uint8))
      if f.readinto(view) != out.nbytes:
        raise BadFile(f"{path}: tensor {name!r} is truncated")
    return out


# ----------------------------------------------------------------------------- writing


def _header(entries: Sequence[tuple[str, tuple[int, ...], np.dtype]]) -> bytes:
  header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
  offset = 0
  for name, shape, dtype in entries:
    size = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    header[name] = {"dtype": dtype_name(dtype), "shape": list(shape),
                    "data_offsets": [offset, offset + size]}
    offset += size
  raw = json.dumps(header, separators=(",", ":")).encode()
  raw += b" " * (-len(raw) % 8)
  return struct.pack("<Q", len(raw)) + raw


class ShardedWriter:
  """Writes tensors, in the planned order, into shards of at most `max_shard_bytes`.

  `plan` is [(name, shape, dtype)] in write order; a tensor larger than the limit gets a
  shard of its own (as `save_pretrained` does). Call `write(name, array)` for every
  planned tensor in order, then `close()` (writes the index when there are several shards).
  """

  def __init__(self, directory: str, plan: Iterable[tuple[str, tuple[int, ...], Any]],
               max_shard_bytes: int):
    self.directory = directory
    os.makedirs(directory, exist_ok=True)
    shards: list[list[tuple[str, tuple[int, ...], np.dtype]]] = [[]]
    size = 0
    self.total_size = 0
    for name, shape, dtype in plan:
      nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
      if shards[-1] and size + nbytes > max_shard_bytes:
        shards.append([])
        size = 0
      shards[-1].append((name, tuple(shape), np.dtype(dtype)))
      size += nbytes
      self.total_size += nbytes
    k = len(shards)
    self.files = ([SINGLE_FILE] if k == 1 else
                  [f"model-{i + 1:05d}-of-{k:05d}.safetensors" for i in range(k)])
    self._shards = shards
    self._order = [(i, e) for i, shard in enumerate(shards) for e in shard]
    self._next = 0
    self._file = None
    self._file_index = -1

  def write(self, name: str, array: np.ndarray) -> None:
    if self._next >= len(self._order):
      raise ValueError(f"tensor {name!r} was not planned (all {len(self._order)} written)")
    shard, (want, shape, dtype) = self._order[self._next]
    if name != want:
      raise ValueError(f"tensor {name!r} written out of order; expected {want!r}")
    if tuple(array.shape) != shape or array.dtype != dtype:
      raise ValueError(f"tensor {name!r}: got {array.shape} {array.dtype}, planned {shape} {dtype}")
    if shard != self._file_index:
      if self._file is not None:
        self._file.close()
      self._file = open(os.path.join(self.directory, self.files[shard]), "wb")
      self._file.write(_header(self._shards[shard]))
      self._file_index = shard
    self._file.write(np.ascontiguousarray(array).reshape(-1).view(np.uint8).data)
    self._next += 1

  def close(self) -> None:
    if self._next != len(self._order):
      missing = [e[1][0] for e in self._order[self._next:]][:5]
      raise ValueError(f"{len(self._order) - self._next} planned tensors never written, e.g. {missing}")
    if self._file is not None:
      self._file.close()
      self._file = None
    if len(self.files) > 1:
      weight_map = {name: self.files[i] for i, (name, _, _) in self._order}
      with open(os.path.join(self.directory, INDEX_FILE), "w") as f:
        json.dump({"metadata": {"total_size": self.total_size}, "weight_map": weight_map}, f,
                  indent=2, sort_keys=True)


# ----------------------------------------------------------------------------- Orbax leaves


def read_param(params_dir: str, path: Sequence[Any], abstract_leaf: Any) -> np.ndarray:
  """Restores one leaf of an Orbax params checkpoint (DIR/checkpoints/<step>/params) as numpy.

  `path` is the leaf's key path in the params pure dict (e.g. ('decoder', 'blocks', 0,
  'attn', 'q_proj', 'kernel')); only that array is read from disk.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  item: Any = jax.ShapeDtypeStruct(abstract_leaf.shape, abstract_leaf.dtype)
  restore: Any = ocp.RestoreArgs(restore_type=np.ndarray)
  for key in reversed(path):
    item, restore = {key: item}, {key: restore}
  restored = _checkpointer().restore(
      params_dir, args=ocp.args.PyTreeRestore(item=item, restore_args=restore, partial_restore=True))
  for key in path:
    restored = restored[key]
  return np.asarray(restored)


_CKPTR = None


def _checkpointer():
  global _CKPTR
  if _CKPTR is None:
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
    _CKPTR = ocp.PyTreeCheckpointer()
  return _CKPTR
