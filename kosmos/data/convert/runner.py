"""Runs a converter: plans output shards, converts them in worker processes, writes the manifest.

Units (files, row groups, example ranges) are split into `--shards` contiguous runs, one
per output shard, so the output depends only on the inputs and the arguments, not on
`--workers`. Each finished shard is renamed into place by `records.ShardWriter` and gets
a small `<shard>.stats.json` beside it (counts, sha256, drops and a fingerprint of the
inputs and arguments); a rerun skips shards whose file and stats exist with the same
fingerprint, and refuses to mix in shards made from other inputs or arguments.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import math
import multiprocessing
import os
import sys
from typing import Any, Callable

import tqdm

from kosmos.data import records
from kosmos.data.convert.common import Context, Unit, source_name

TARGET_SHARD_BYTES = 256 << 20
STATS_SUFFIX = ".stats.json"
# Arguments that do not change the records.
_NOT_CONTENT = ("workers", "output", "input")


def _arguments(args: argparse.Namespace) -> dict[str, Any]:
  """The JSON-serialisable arguments of a run, as stored in manifest.json."""
  out = {}
  for key, value in sorted(vars(args).items()):
    try:
      json.dumps(value)
    except TypeError:
      continue
    out[key] = value
  return out


def _fingerprint(args: argparse.Namespace, units: list[Unit], quota: int) -> str:
  content = {k: v for k, v in _arguments(args).items() if k not in _NOT_CONTENT}
  text = json.dumps({"arguments": content, "quota": quota,
                     "units": [[u.key, u.size, repr(u.payload)] for u in units]},
                    sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()


def plan_shards(units: list[Unit], requested: int) -> list[list[Unit]]:
  """Splits units into contiguous runs; 0 requested = about one per 256 MiB of input."""
  if not units:
    raise ValueError("no input units to convert")
  if requested < 0:
    raise ValueError(f"--shards {requested} must be >= 0")
  count = requested or math.ceil(sum(u.size for u in units) / TARGET_SHARD_BYTES)
  count = max(1, min(count, len(units)))
  if requested > len(units):
    print(f"note: --shards {requested} exceeds the {len(units)} input units; "
          f"writing {count} shards", file=sys.stderr)
  return [units[i * len(units) // count:(i + 1) * len(units) // count] for i in range(count)]


def _quotas(max_records: int, count: int) -> list[int]:
  if max_records <= 0:
    return [0] * count
  return [max_records // count + (i < max_records % count) or -1 for i in range(count)]


def _read_stats(path: str) -> dict[str, Any] | None:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _convert_shard(task: dict[str, Any]) -> dict[str, Any]:
  """Worker: converts one shard's units into one ArrayRecord file plus its stats file."""
  module = importlib.import_module(task["module"])
  convert_unit: Callable = module.convert_unit
  args, quota = task["args"], task["quota"]
  ctx = Context(args)
  written = 0
  with records.ShardWriter(task["path"]) as writer:
    for unit in task["units"]:
      if quota and written >= max(quota, 0):
        break
      try:
        for record in convert_unit(unit, args, ctx):
          ctx.commit(record)
          writer.write(record)
          written += 1
          if quota and written >= quota:
            break
      except Exception as e:
        raise RuntimeError(f"converting input {unit.key!r} into {task['path']!r}: "
                           f"{type(e).__name__}: {e}") from e
  stats = {"name": os.path.basename(task["path"]), "records": written, "bytes": writer.bytes,
           "sha256": records.sha256(task["path"]), "kinds": dict(sorted(writer.counts.items())),
           "dropped": dict(sorted(ctx.dropped.items())), "fingerprint": task["fingerprint"]}
  tmp = task["path"] + STATS_SUFFIX + ".tmp"
  with open(tmp, "w") as f:
    json.dump(stats, f, indent=1, sort_keys=True)
  os.replace(tmp, task["path"] + STATS_SUFFIX)
  return stats


def run(args: argparse.Namespace, *, module: str,
        list_units: Callable[[argparse.Namespace], list[Unit]]) -> int:
  """Converts `args.input` into `args.output`; returns a process exit code.

  `module` is the converter's module name; it must define
  `convert_unit(unit, args, ctx) -> Iterator[record]`.
  """
  if not getattr(args, "format", None):
    args.format = module.rsplit(".", 1)[-1].replace("_", "-")
  if args.workers < 1:
    raise ValueError(f"--workers {args.workers} must be >= 1")
  plan = plan_shards(list_units(args), args.shards)
  quotas = _quotas(args.max_records, len(plan))
  prefix = source_name(args)
  os.makedirs(args.output, exist_ok=True)
  names = [records.shard_name(prefix, i, len(plan)) for i in range(len(plan))]
  stale = sorted(set(f for f in os.listdir(args.output) if f.endswith(records.SUFFIX))
                 - set(names))
  if stale:
    raise FileExistsError(
        f"--output {args.output!r} holds shards of another run ({', '.join(stale[:3])}"
        f"{' ...' if len(stale) > 3 else ''}); this run writes {names[0]} ... — use an empty "
        f"directory or delete them")
  tasks, done = [], []
  for name, units, quota in zip(names, plan, quotas):
    path = os.path.join(args.output, name)
    fingerprint = _fingerprint(args, units, quota)
    stats = _read_stats(path + STATS_SUFFIX) if os.path.exists(path) else None
    if stats is not None:
      if stats.get("fingerprint") != fingerprint:
        raise FileExistsError(
            f"shard {path!r} was written from other inputs or arguments; use an empty "
            f"--output directory or delete the shard and its {STATS_SUFFIX} to rewrite it")
      done.append(stats)
      continue
    tasks.append({"module": module, "path": path, "units": units, "quota": quota,
                  "args": args, "fingerprint": fingerprint})
  bar = tqdm.tqdm(total=len(plan), initial=len(done), unit="shard", desc=args.format,
                  file=sys.stderr, disable=None)
  results = []
  if args.workers == 1 or len(tasks) <= 1:
    stream = map(_convert_shard, tasks)
    pool = None
  else:
    pool = multiprocessing.get_context("spawn").Pool(min(args.workers, len(tasks)))
    stream = pool.imap_unordered(_convert_shard, tasks)
  try:
    for stats in stream:
      results.append(stats)
      bar.update(1)
      bar.set_postfix(records=sum(s["records"] for s in results + done))
  except BaseException:
    if pool is not None:
      pool.terminate()  # finished shards stay; a rerun resumes from them
    raise
  finally:
    bar.close()
    if pool is not None:
      pool.close()
      pool.join()
  every = done + results
  dropped: dict[str, int] = {}
  for stats in every:
    for reason, n in stats["dropped"].items():
      dropped[reason] = dropped.get(reason, 0) + n
  manifest = records.write_manifest(
      args.output,
      [records.ShardInfo(name=s["name"], records=s["records"], bytes=s["bytes"],
                         sha256=s["sha256"], kinds=s["kinds"]) for s in every],
      converter=args.format, arguments=_arguments(args), dropped=dropped)
  print(f"{args.format}: {manifest['records']} records {manifest['kinds']} in {len(plan)} "
        f"shards ({len(done)} already complete, skipped) -> {args.output}; "
        f"dropped {manifest['dropped']}", file=sys.stderr)
  if manifest["records"] == 0:
    print(f"error: no records were written; see the dropped counts above", file=sys.stderr)
    return 1
  return 0
