"""Memory figures of a kosmos-compile report: XLA's memory analysis, its out-of-HBM error
message, argument bytes from shardings, and what would make a config fit."""

from __future__ import annotations

import math
import re
from typing import Any

import jax
import numpy as np

GIB = 1024 ** 3

_SIZE = r"([\d.]+)([KMGT]?)"
_OOM_TEMPS = re.compile(rf"HLO temporaries \({_SIZE}\) exceeds available HBM \({_SIZE}\)")
_OOM_USED = re.compile(rf"Used {_SIZE} of {_SIZE} hbm")
_UNITS = {"": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4}  # XLA's G is GiB


def oom_memory(message: str, arguments: int) -> dict[str, Any] | None:
  """Memory figures from XLA:TPU's out-of-HBM compile error, or None for another error.

  The message gives the temporaries (or the whole use) and XLA's usable HBM; the argument
  bytes are computed from the shardings, so `total` is a lower bound (no code, no outputs).
  """
  size = lambda value, unit: int(float(value) * _UNITS[unit])
  lines = [line for line in message.splitlines() if "memory" in line.lower()] or [message]
  out = {"source": "oom_error", "argument": arguments, "total_is_lower_bound": True,
         "message": lines[0].strip()[:400]}
  if found := _OOM_TEMPS.search(message):
    temporary = size(*found.group(1, 2))
    out.update(temporary=temporary, total=arguments + temporary,
               xla_usable_hbm=size(*found.group(3, 4)))
    return out
  if found := _OOM_USED.search(message):
    out.update(total=max(size(*found.group(1, 2)), arguments),
               xla_usable_hbm=size(*found.group(3, 4)))
    return out
  return None


def argument_bytes(tree: Any) -> int:
  """Bytes per device of ShapeDtypeStructs with NamedShardings (the largest shard)."""
  total = 0
  for leaf in jax.tree.leaves(tree):
    shard = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
    total += int(np.prod(shard, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize
  return total


def memory_figures(stats: Any) -> dict[str, Any]:
  parts = {"argument": stats.argument_size_in_bytes, "output": stats.output_size_in_bytes,
           "alias": stats.alias_size_in_bytes, "temporary": stats.temp_size_in_bytes,
           "generated_code": stats.generated_code_size_in_bytes}
  parts = {k: int(v) for k, v in parts.items()}
  total = (parts["argument"] + parts["output"] - parts["alias"] + parts["temporary"]
           + parts["generated_code"])
  out = dict(parts, source="memory_analysis", total=total)
  peak = getattr(stats, "peak_memory_in_bytes", None)
  if peak:
    out["xla_peak"] = int(peak)
  return out




def suggestions(report: dict[str, Any]) -> list[str]:
  """What would make a config fit, computed from the report's memory figures."""
  mem, hbm = report["memory_per_chip"], report["topology"]["hbm_bytes"]
  mesh, chips = report["mesh"], report["topology"]["chips"]
  budget = 0.9 * hbm  # leave room for XLA's reserved HBM and fragmentation
  total = mem["total"]
  args = mem.get("argument") or 0
  temp = mem.get("temporary")
  if temp is None:  # from an OOM message: the program part holds temporaries and code
    temp = max(total - args, 0)
  out = []
  dec_remat, vis_remat = report["remat"]["decoder"], report["remat"]["vision"]
  if temp >= args:
    if dec_remat != "full" or vis_remat != "full":
      out.append("temporary bytes dominate: rematerialise activations "
                 "(--config.model.decoder.remat=full --config.model.vision.remat=full)")
    rows = report["batch"]["global_batch_size"]
    shards = mesh["data"] * mesh["fsdp"]
    for accum in (2, 4, 8, 16, 32, 64):
      if rows % (accum * shards) == 0 and args + temp / accum <= budget:
        out.append(f"temporary bytes dominate: accumulate gradients over {accum} micro-batches "
                   f"(--config.optim.accum_steps={accum}; same global batch, about "
                   f"{gib(args + temp / accum)} per chip if temporaries scale with rows)")
        break
  else:
    if mesh["data"] > 1 or mesh["tensor"] > 1:
      out.append(f"arguments (parameters + optimizer state) dominate: shard them over every "
                 f"chip (--config.mesh.data=1 --config.mesh.fsdp=-1 --config.mesh.tensor=1; "
                 f"now data={mesh['data']} fsdp={mesh['fsdp']} tensor={mesh['tensor']})")
  need = total / budget
  if need > 1:
    more = 2 ** math.ceil(math.log2(need)) * chips
    out.append(f"more chips: about {more} ({report['topology']['generation']}, total "
               f"{gib(total)} vs {gib(budget)} usable per chip, assuming bytes per chip "
               f"fall as 1/chips at the same global batch)")
  return out


def gib(n: float) -> str:
  return f"{n / GIB:.2f} GiB" if abs(n) >= GIB / 10 else f"{n / 1024 ** 2:.1f} MiB"

