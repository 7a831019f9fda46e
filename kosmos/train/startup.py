"""Start-up checks every process runs before training: same software, same devices.

`summarize_and_check(config, mesh)` gathers a small record from every process (versions of
python, jax, jaxlib, flax, the kosmos git commit, the local device count and kind), stops
with one error that names the differing processes and values when they do not agree, and
has process 0 print a summary of the run (versions, devices per process, mesh shape, global
and per-process batch, where checkpoints go).

The record travels as a fixed-size uint8 vector (JSON, zero-padded to `RECORD_BYTES`)
through `jax.experimental.multihost_utils.process_allgather`, so every process receives
the same [process_count, RECORD_BYTES] array and reaches the same verdict.

Test hook: `KOSMOS_TEST_FAKE_VERSION="jax=0.0.0,flax=9"` overrides fields of this process's
record, so a test can make one process of a local multi-process run look different.
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import flax
import jax
import jaxlib
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

RECORD_BYTES = 1024
# Fields that must agree on every process, in the order errors list them.
CHECKED_FIELDS = ("python", "jax", "jaxlib", "flax", "kosmos_commit", "platform",
                  "device_kind", "local_device_count")
FAKE_VERSION_ENV = "KOSMOS_TEST_FAKE_VERSION"
COMMIT_ENV = "KOSMOS_GIT_COMMIT"
COMMIT_FILE = "KOSMOS_COMMIT"  # written at the repo root by launch/tpu_vm.sh install
UNKNOWN = "unknown"


class StartupMismatchError(RuntimeError):
  """Processes of one run differ in software versions or devices."""


def kosmos_commit() -> str:
  """The kosmos git commit: $KOSMOS_GIT_COMMIT, else repo-root KOSMOS_COMMIT, else git."""
  if os.environ.get(COMMIT_ENV):
    return os.environ[COMMIT_ENV].strip()
  root = pathlib.Path(__file__).resolve().parents[2]
  commit_file = root / COMMIT_FILE
  if commit_file.is_file():
    text = commit_file.read_text().strip()
    if text:
      return text
  try:
    out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                         text=True, timeout=10, check=False)
  except (OSError, subprocess.TimeoutExpired):
    return UNKNOWN
  commit = out.stdout.strip()
  return commit if out.returncode == 0 and commit else UNKNOWN


def _apply_fake_versions(record: dict[str, Any], spec: str) -> None:
  """Overrides record fields from `name=value,name=value` (tests only)."""
  for item in filter(None, (part.strip() for part in spec.split(","))):
    name, sep, value = item.partition("=")
    if not sep or name not in CHECKED_FIELDS:
      raise ValueError(f"{FAKE_VERSION_ENV}={spec!r}: item {item!r} must be NAME=VALUE with "
                       f"NAME one of {list(CHECKED_FIELDS)}")
    record[name] = int(value) if name == "local_device_count" else value


def local_record() -> dict[str, Any]:
  """This process's versions and devices (plain JSON values)."""
  devices = jax.local_devices()
  record: dict[str, Any] = {
      "process_index": jax.process_index(),
      "python": platform.python_version(),
      "jax": jax.__version__,
      "jaxlib": jaxlib.__version__,
      "flax": flax.__version__,
      "kosmos_commit": kosmos_commit(),
      "platform": devices[0].platform,
      "device_kind": devices[0].device_kind,
      "local_device_count": len(devices),
  }
  if os.environ.get(FAKE_VERSION_ENV):
    _apply_fake_versions(record, os.environ[FAKE_VERSION_ENV])
  return record


def encode_record(record: Mapping[str, Any]) -> np.ndarray:
  """JSON of `record` as a zero-padded uint8 vector of shape [RECORD_BYTES]."""
  data = json.dumps(record, sort_keys=True, separators=(",", ":")).encode()
  if len(data) > RECORD_BYTES:
    raise ValueError(f"start-up record is {len(data)} bytes, more than RECORD_BYTES="
                     f"{RECORD_BYTES}: {data[:200]!r}...")
  out = np.zeros(RECORD_BYTES, np.uint8)
  out[:len(data)] = np.frombuffer(data, np.uint8)
  return out


def decode_record(row: np.ndarray) -> dict[str, Any]:
  """Inverse of `encode_record` for one row of shape [RECORD_BYTES]."""
  data = np.asarray(row, np.uint8).tobytes().rstrip(b"\0")
  return json.loads(data.decode())


def gather_records() -> list[dict[str, Any]]:
  """Every process's `local_record()`, indexed by process index (a collective call)."""
  rows = np.asarray(multihost_utils.process_allgather(encode_record(local_record())))
  rows = rows.reshape(jax.process_count(), RECORD_BYTES)
  return [decode_record(row) for row in rows]


def _ranges(indices: Sequence[int]) -> str:
  """[0, 1, 2, 5, 7, 8] -> '0-2, 5, 7-8'."""
  parts: list[str] = []
  start = prev = None
  for i in sorted(indices):
    if start is None:
      start = prev = i
    elif i == prev + 1:
      prev = i
    else:
      parts.append(f"{start}" if start == prev else f"{start}-{prev}")
      start = prev = i
  if start is not None:
    parts.append(f"{start}" if start == prev else f"{start}-{prev}")
  return ", ".join(parts)


def find_mismatches(records: Sequence[Mapping[str, Any]]) -> list[str]:
  """One line per field whose value differs across processes, naming who has what."""
  lines = []
  for field in CHECKED_FIELDS:
    by_value: dict[str, list[int]] = {}
    for i, record in enumerate(records):
      by_value.setdefault(str(record.get(field)), []).append(i)
    if len(by_value) > 1:
      # Most common value first: the odd processes out are then easy to spot.
      groups = sorted(by_value.items(), key=lambda kv: (-len(kv[1]), kv[1][0]))
      described = "; ".join(
          f"process{'es' if len(procs) > 1 else ''} {_ranges(procs)}: {value}"
          for value, procs in groups)
      lines.append(f"{field} differs: {described}")
  return lines


def _mesh_shape(mesh: jax.sharding.Mesh) -> dict[str, int]:
  return {str(name): int(size) for name, size in mesh.shape.items()}


def summarize_and_check(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
                        workdir: str | None = None, *, printer=print) -> dict[str, Any]:
  """Checks that all processes agree; process 0 prints the run summary.

  Args:
    config: needs `config.data.global_batch_size` and `config.mesh` (recorded as given).
    mesh: the device mesh training uses.
    workdir: where the run writes; checkpoints go to `workdir/checkpoints`.
    printer: where process 0 writes the summary lines (one call per line).

  Returns:
    The summary as a dict (the same on every process).

  Raises:
    StartupMismatchError: processes differ in versions, device kind or device count.
    ValueError: the global batch does not divide over the processes.
  """
  records = gather_records()
  mismatches = find_mismatches(records)
  if mismatches:
    raise StartupMismatchError(
        f"the {len(records)} processes of this run do not agree; every host must run the "
        "same software on the same kind and number of devices (reinstall the odd hosts, "
        "e.g. `launch/tpu_vm.sh install`):\n  " + "\n  ".join(mismatches))
  process_count = len(records)
  global_batch = int(config.data.global_batch_size)
  if global_batch % process_count:
    raise ValueError(
        f"config.data.global_batch_size={global_batch} does not divide over "
        f"{process_count} processes; use a multiple of {process_count}")
  first = records[0]
  summary: dict[str, Any] = {
      "process_count": process_count,
      "versions": {k: first[k] for k in ("python", "jax", "jaxlib", "flax", "kosmos_commit")},
      "platform": first["platform"],
      "device_kind": first["device_kind"],
      "devices_per_process": int(first["local_device_count"]),
      "global_device_count": int(first["local_device_count"]) * process_count,
      "mesh_shape": _mesh_shape(mesh),
      "mesh_config": config.mesh.to_dict() if hasattr(config.mesh, "to_dict") else
                     dict(config.mesh),
      "global_batch": global_batch,
      "per_process_batch": global_batch // process_count,
      "checkpoint_dir": (workdir.rstrip("/") + "/checkpoints") if workdir else None,
  }
  if jax.process_index() == 0:
    for line in format_summary(summary):
      printer(line)
    sys.stdout.flush()
  return summary


def format_summary(summary: Mapping[str, Any]) -> list[str]:
  """Human-readable lines of a `summarize_and_check` summary."""
  versions = " ".join(f"{k}={v}" for k, v in summary["versions"].items())
  mesh = " ".join(f"{k}={v}" for k, v in summary["mesh_shape"].items())
  return [
      "kosmos start-up: all processes agree",
      f"  versions: {versions}",
      f"  processes: {summary['process_count']} x {summary['devices_per_process']} "
      f"{summary['platform']} devices ({summary['device_kind']}) = "
      f"{summary['global_device_count']} devices",
      f"  mesh: {mesh}",
      f"  batch: global {summary['global_batch']}, per process {summary['per_process_batch']}",
      f"  checkpoints: {summary['checkpoint_dir'] or '(no workdir given)'}",
  ]
