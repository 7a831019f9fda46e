"""kosmos-compile: ahead-of-time compile of the real train step for a TPU topology, on any host.

    kosmos-compile --config configs/kosmos1.py --topology v5p-256 --out /tmp/k1.json \
        [--config.mesh.fsdp=-1 --config.data.global_batch_size=1024 ...]
    kosmos-compile --config configs/kosmos1.py --topology v5p-256 --search --out /tmp/best.json \
        [--search-mesh ... --search-remat ... --search-attention ... --search-accum ... --jobs N]

libtpu describes the target chips (`jax.experimental.topologies`), so a CPU-only machine
builds the config's mesh over them, takes the abstract state from `step.setup` and an
abstract batch of the config's global batch, and lowers + compiles `step.jit_train_step`
exactly as the trainer would (same shardings, same donation). Nothing is allocated.

The report is per chip (v4 / v5p run one megacore device per chip, v5e / v6e one core):
  memory   argument + output - alias + temporary + generated code = total, vs the chip's HBM;
           a config too large for HBM fails XLA's compile with RESOURCE_EXHAUSTED, and then
           the figures come from that error's message (source "oom_error").
  cost     XLA's `cost_analysis()` of the SPMD program, which is ONE device's partition:
           flops and bytes are per chip, `optimal_seconds` is its cost model's step time
           (without it, as on v5e: XLA flops / (peak * 0.5)). It sees nothing inside
           Pallas (Mosaic) kernels.
  loops    XLA's cost analysis counts a while loop's body once: every loop (scanned layers,
           gradient accumulation, loss chunks, and XLA:TPU's own windowed einsums) is
           recounted per iteration from the compiled HLO, with no further compile
           (kosmos.train.loop_cost.from_hlo); `--loop-variants` cross-checks the model's
           loops by compiling each unrolled by 2.
  kernels  every Pallas kernel in the compiled HLO (kosmos.train.hlo_costs) with its
           executions per step (while-loop trip counts multiply); splash-attention kernels
           get analytic FLOPs and HBM bytes (kosmos.train.splash_costs), and each adds
           executions * max(flops / peak, bytes / HBM bandwidth) to the step time and its
           FLOPs to XLA's. An unknown kernel is listed uncounted and MFU is then an upper
           bound (`mfu_is_upper_bound`, shown as "<=").
  collectives  all-gather, reduce-scatter, all-reduce, all-to-all, collective-permute
           bytes per chip per step (each op's larger of operand and result, times its
           executions); not part of the step time (XLA's cost model has its own view).
  hot ops  where XLA:TPU expects the time to go: its estimated cycles of each fusion times
           executions, grouped by JAX name scope and result shape; the top 8 are printed,
           15 are in the JSON (`hot_ops`). What to optimise next, before any profile.
  MFU      analytic model FLOPs of the global batch (kosmos.train.flops) /
           (step seconds * peak FLOP/s per chip * chips).
A config that does not fit gets suggestions computed from its numbers (remat, fsdp,
gradient accumulation, chips). `--search` compiles candidate plans, each in its own
process, and ranks them (kosmos.train.compile_search).

Topology names: v4-N and v5p-N count TensorCores (chips = N / 2; 3-D torus), v5e-N (also
v5litepod-N) and v6e-N count chips (2-D, at most 256 per slice); `KxNAME` is K slices
(multislice over DCN: `mesh.dcn_data` defaults to K).
"""

from __future__ import annotations

import os

# libtpu runs here only as a compiler: keep the runtime on the CPU and tell libtpu it is
# not on a TPU VM (otherwise it queries metadata and prints TPU_WORKER_HOSTNAMES warnings);
# several compiles may run at once (no chip is opened), so skip libtpu's process lockfile.
for _key, _value in (("JAX_PLATFORMS", "cpu"), ("TPU_SKIP_MDS_QUERY", "1"),
                     ("ALLOW_MULTIPLE_LIBTPU_LOAD", "1"),
                     ("TPU_ACCELERATOR_TYPE", "v5p-8"), ("TPU_WORKER_HOSTNAMES", "localhost"),
                     ("TPU_WORKER_ID", "0"), ("TF_CPP_MIN_LOG_LEVEL", "3")):
  os.environ.setdefault(_key, _value)

# pylint: disable=g-import-not-at-top,wrong-import-position
import argparse
import dataclasses
import datetime
import importlib.metadata
import json
import math
import platform
import re
import sys
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import traverse_util

from kosmos import configs, sharding
from kosmos.train import compile_memory as memory_lib
from kosmos.train import compile_search
from kosmos.train import flops as flops_lib
from kosmos.train import hlo_costs
from kosmos.train import loop_cost
from kosmos.train import step as step_lib

GIB = 1024 ** 3


@dataclasses.dataclass(frozen=True)
class Generation:
  """A TPU generation: how its names count, its torus rank, chip config and HBM per chip."""
  prefix: str  # libtpu topology prefix, e.g. "v5p" in "v5p:4x4x8"
  dims: int  # 3 (v4, v5p: 3-D torus) or 2 (v5e, v6e)
  cores_per_chip: int  # what the name's number counts per chip (2: TensorCores, 1: chips)
  chip_config: str  # "megacore" (one device per chip of two cores) or "default"
  hbm_bytes: int
  hbm_bandwidth: float  # bytes/s per chip
  min_chips: int
  max_chips: int  # per slice


# HBM bandwidth per chip: Cloud TPU system-architecture pages (v4 1,200 GB/s, v5e 819 GB/s,
# v5p 2,765 GB/s, v6e 1,640 GB/s).
GENERATIONS = {
    "v4": Generation("v4", 3, 2, "megacore", 32 * GIB, 1.2e12, 4, 4096),
    "v5p": Generation("v5p", 3, 2, "megacore", 95 * GIB, 2.765e12, 4, 8192),
    "v5e": Generation("v5e", 2, 1, "default", 16 * GIB, 8.19e11, 1, 256),
    "v6e": Generation("v6e", 2, 1, "default", 32 * GIB, 1.64e12, 1, 256),
}
ALIASES = {"v5litepod": "v5e", "v6litepod": "v6e"}

# Used only when XLA gives no step-time estimate: step = XLA FLOPs / (peak * this).
ASSUMED_EFFICIENCY = 0.5


@dataclasses.dataclass(frozen=True)
class Topology:
  name: str  # as given, e.g. "2xv5p-256"
  generation: str  # key of GENERATIONS
  topology_name: str  # libtpu's, e.g. "v5p:4x4x8"
  chip_config: str
  chips_per_host_bounds: tuple[int, int, int]
  num_slices: int
  chips_per_slice: int
  hbm_bytes: int
  hbm_bandwidth: float

  @property
  def chips(self) -> int:
    return self.chips_per_slice * self.num_slices


class TopologyError(ValueError):
  """A topology name that does not name a TPU slice this module can describe."""


LOOP_ROWS = 6  # loop kinds printed (all are in the JSON)


def valid_names() -> list[str]:
  """Every single-slice name `parse_topology` accepts (prefix with `Kx` for K slices)."""
  out = []
  for gen_name, gen in GENERATIONS.items():
    chips = gen.min_chips
    while chips <= gen.max_chips:
      if gen.dims == 2 or chips >= 4:
        out.append(f"{gen_name}-{chips * gen.cores_per_chip}")
      chips *= 4 if chips == 1 else 2
  return out


def torus_shape(chips: int, dims: int) -> tuple[int, ...]:
  """Slice shape of a power-of-two chip count: start at 2x2(x1) and double the last of
  the smallest dims, which gives the standard shapes (v5p-256: 4x4x8, v5e-256: 16x16)."""
  if chips == 1:
    return (1,) * dims
  shape = [2, 2] + [1] * (dims - 2)
  while math.prod(shape) < chips:
    smallest = min(shape)
    last = max(i for i, s in enumerate(shape) if s == smallest)
    shape[last] *= 2
  return tuple(shape)


def parse_topology(name: str) -> Topology:
  """'v5p-256' -> Topology(topology_name='v5p:4x4x8', chips 128, ...); '2xv5e-256' = 2 slices."""
  match = re.fullmatch(r"(?:(\d+)x)?([a-z0-9]+)-(\d+)", name.strip().lower())
  gen_name = ALIASES.get(match.group(2), match.group(2)) if match else None
  if not match or gen_name not in GENERATIONS:
    raise TopologyError(f"unknown TPU topology {name!r}; valid: {', '.join(valid_names())} "
                        f"(v5litepod-N = v5e-N; prefix Kx for K slices, e.g. 2xv5p-256)")
  gen = GENERATIONS[gen_name]
  slices, count = int(match.group(1) or 1), int(match.group(3))
  chips, rest = divmod(count, gen.cores_per_chip)
  power_of_two = chips >= 1 and chips & (chips - 1) == 0
  if (rest or not power_of_two or not gen.min_chips <= chips <= gen.max_chips or chips == 2
      or (gen.dims == 3 and chips < 4) or slices < 1):
    sizes = [n for n in valid_names() if n.startswith(gen_name + "-")]
    raise TopologyError(f"TPU topology {name!r}: {gen_name}-{count} is not a slice size this "
                        f"tool knows; valid {gen_name} sizes: {', '.join(sizes)}")
  shape = torus_shape(chips, gen.dims)
  host = (1, 1, 1) if chips == 1 else (2, 4, 1) if chips == 8 and gen.dims == 2 else (2, 2, 1)
  return Topology(name=name, generation=gen_name,
                  topology_name=f"{gen.prefix}:{'x'.join(map(str, shape))}",
                  chip_config=gen.chip_config, chips_per_host_bounds=host, num_slices=slices,
                  chips_per_slice=chips, hbm_bytes=gen.hbm_bytes,
                  hbm_bandwidth=gen.hbm_bandwidth)


def topology_devices(topology: Topology) -> list[Any]:
  """The target TPU devices, described by libtpu (no TPU needed)."""
  from jax.experimental import topologies  # loads the TPU plugin as a compiler
  desc = topologies.get_topology_desc(
      platform="tpu", topology_name=topology.topology_name, chip_config_name=topology.chip_config,
      chips_per_host_bounds=topology.chips_per_host_bounds, num_slices=topology.num_slices)
  return list(desc.devices)


def abstract_batch(config: ml_collections.ConfigDict) -> dict[str, jax.ShapeDtypeStruct]:
  """The global batch's shapes (ARCHITECTURE.md batch format) for `config.data`."""
  data = config.data
  b, l, m, s = (data.global_batch_size, data.seq_len, data.max_images_per_row,
                config.model.vision.image_size)
  shapes = {k: ((b, l), jnp.int32) for k in ("tokens", "targets", "segment_ids", "positions")}
  shapes.update(loss_mask=((b, l), jnp.float32), kind_ids=((b, l), jnp.int8),
                images=((b, m, s, s, 3), jnp.uint8), image_mask=((b, m), jnp.bool_))
  if data.max_vectors_per_row > 0 and data.vector_dim > 0:
    v = data.max_vectors_per_row
    shapes.update(vectors=((b, v, data.vector_dim), jnp.float32), vector_mask=((b, v), jnp.bool_))
  return {k: jax.ShapeDtypeStruct(shape, dtype) for k, (shape, dtype) in shapes.items()}


def _count(tree: Any) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def param_counts(run: Any) -> dict[str, int]:
  """Trainable / frozen / total parameters of a step.Setup. A stacked param whose layers
  are partly frozen (`run.layer_masks`, e.g. a scanned ViT trained in its last block only)
  counts its frozen layers as frozen, although the optimizer holds the whole array."""
  trainable, frozen = 0, _count(run.abstract_state.frozen)
  for key, leaf in traverse_util.flatten_dict(run.abstract_state.params).items():
    size, mask = int(np.prod(leaf.shape)), run.layer_masks.get(key)
    trained = size if mask is None else size // len(mask) * int(np.sum(mask))
    trainable, frozen = trainable + trained, frozen + size - trained
  return {"trainable": trainable, "frozen": frozen, "total": trainable + frozen}


def _cost(compiled: Any) -> dict[str, float]:
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else {}
  keep = ("flops", "bytes accessed", "transcendentals", "optimal_seconds")
  return {k.replace(" ", "_"): float(analysis[k]) for k in keep if k in (analysis or {})}



def compile_report(config: ml_collections.ConfigDict, topology: Topology | str,
                   loop_cost_variants: bool = False) -> dict[str, Any]:
  """AOT-compiles the train step of `config` for `topology`; returns the report dict.

  XLA's cost analysis counts each while loop's body once (scanned layers, gradient
  accumulation, the chunked loss, and XLA:TPU's own windowed einsums): the cost is recounted
  per iteration from the compiled HLO (kosmos.train.loop_cost.from_hlo). With
  `loop_cost_variants` the model's loops are also measured by compiling one variant per loop
  (kosmos.train.loop_cost.cost_with_loops), a cross-check reported under `variants`."""
  topo = parse_topology(topology) if isinstance(topology, str) else topology
  config = ml_collections.ConfigDict(config.to_dict())  # own copy; unlocked
  if topo.num_slices > 1 and int(config.mesh.get("dcn_data", 1)) == 1:
    config.mesh.dcn_data = topo.num_slices
  devices = topology_devices(topo)
  device_kind = devices[0].device_kind
  mesh = sharding.make_mesh(config.mesh, devices)
  run = step_lib.setup(config, mesh)
  batch = abstract_batch(config)
  batch_sh = step_lib.batch_shardings(mesh, batch)
  batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sh[k]) for k, v in batch.items()}

  params = param_counts(run)
  vision_layers = flops_lib.trainable_vision_layers(run.abstract_state.params, config.model.vision.depth,
                                                     run.layer_masks)
  analytic = flops_lib.step_flops(config, trainable_vision_layers=vision_layers)
  peak = flops_lib.peak_flops(device_kind)
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  report: dict[str, Any] = {
      "config": None, "overrides": [],
      "topology": dict(dataclasses.asdict(topo), chips=topo.chips, device_kind=device_kind,
                       peak_flops_per_chip=peak),
      "mesh": {k: int(v) for k, v in mesh.shape.items()},
      "batch": {"global_batch_size": config.data.global_batch_size,
                "seq_len": config.data.seq_len,
                "max_images_per_row": config.data.max_images_per_row,
                "rows_per_chip": config.data.global_batch_size / topo.chips,
                "rows_per_data_shard": config.data.global_batch_size // shards,
                "accum_steps": int(config.optim.accum_steps)},
      "remat": {"decoder": config.model.decoder.remat, "vision": config.model.vision.remat},
      "params": params,
      "analytic_flops": dict(analytic, trainable_vision_layers=vision_layers,
                             per_chip=analytic["total"] / topo.chips),
  }

  train_step = step_lib.jit_train_step(config, run, mesh, batch)
  start = time.perf_counter()
  lowered = train_step.lower(run.abstract_state, batch)
  lowered_at = time.perf_counter()
  try:
    compiled = lowered.compile()
    error = None
  except Exception as e:  # pylint: disable=broad-except
    compiled, error = None, e
    if "RESOURCE_EXHAUSTED" not in str(e) and "Ran out of memory" not in str(e):
      raise
  done = time.perf_counter()
  report["compile_seconds"] = {"lower": round(lowered_at - start, 2),
                               "compile": round(done - lowered_at, 2)}

  hlo = None
  if compiled is not None:
    memory = memory_lib.memory_figures(compiled.memory_analysis())
    memory["argument_from_shardings"] = memory_lib.argument_bytes((run.abstract_state, batch))
    cost = _cost(compiled)
    hlo = hlo_costs.analyze(compiled)
    start = time.perf_counter()
    cost = _count_loops(compiled, cost)
    report["compile_seconds"]["loop_count"] = round(time.perf_counter() - start, 2)
    if loop_cost_variants and loop_cost.loops(config, run):
      def variant_cost(variant):
        return _cost(step_lib.jit_train_step(config, variant, mesh, batch).lower(
            variant.abstract_state, batch).compile())
      start = time.perf_counter()
      variants = loop_cost.cost_with_loops(config, run, variant_cost, cost["counted_once"])
      cost["variants"] = dict(variants, scope=(
          "the model's loops measured by compiling each unrolled by 2 (a cross-check; it "
          "does not see XLA's own loops)"))
      report["compile_seconds"]["loop_variants"] = round(time.perf_counter() - start, 2)
  else:
    memory = memory_lib.oom_memory(str(error),
                                   memory_lib.argument_bytes((run.abstract_state, batch)))
    if memory is None:
      raise error
    cost = {}
  memory["hbm"] = topo.hbm_bytes
  memory["fits"] = bool(compiled is not None and memory["total"] <= topo.hbm_bytes)
  memory["headroom"] = topo.hbm_bytes - memory["total"]
  report["memory_per_chip"] = memory
  report["fits"] = memory["fits"]
  report["xla_cost_per_chip"] = dict(cost, scope=(
      "per chip: cost_analysis of the SPMD-partitioned program (one device's partition); "
      "every while loop's body counted per iteration, from the compiled HLO "
      "(kosmos.train.loop_cost.from_hlo; `counted_once` is XLA's own figure, `loops` the "
      "loops, XLA:TPU's windowed einsums among them); sees nothing inside Pallas kernels "
      "(see `kernels`)"))
  kernels = program_extras(report, hlo, peak, topo.hbm_bandwidth)
  report.update(_step_time(cost, peak, analytic["total"], topo.chips, compiled is not None,
                           kernels))
  report["suggestions"] = [] if report["fits"] else memory_lib.suggestions(report)
  return report


def _count_loops(compiled: Any, counted_once: dict[str, float]) -> dict[str, Any]:
  """XLA's cost with every while loop counted per iteration (loop_cost.from_hlo); when the
  HLO cannot be read that way, XLA's own figure with the loops named as counted once."""
  try:
    counted = loop_cost.from_hlo(compiled.as_text(), counted_once)
  except Exception as e:  # pylint: disable=broad-except
    return dict(counted_once, counted_once=counted_once, loops_counted_once=[
        f"every loop (the HLO could not be recounted: {type(e).__name__}: {e})"])
  cost = {k: counted[k] for k in loop_cost.KEYS if k in counted}
  cost.update(counted_once=counted_once, loops=counted["loops"], check=counted["check"])
  if counted["unknown_trip_counts"]:
    cost["loops_counted_once"] = counted["unknown_trip_counts"]
  return cost


def program_extras(report: dict[str, Any], hlo: dict[str, Any] | None, peak: float | None,
                   hbm_bandwidth: float) -> dict[str, Any] | None:
  """Adds `kernels` (Pallas kernels XLA's cost analysis does not see, with their roofline
  seconds) and `collectives_per_chip` to `report`; returns the kernels' totals."""
  if hlo is None:
    report["kernels"] = report["collectives_per_chip"] = None
    return None
  totals = hlo_costs.kernel_seconds(hlo, peak, hbm_bandwidth)
  totals["unknown_trip_counts"] = hlo["unknown_trip_counts"]
  report["kernels"] = dict(totals, per_kernel=hlo["kernels"], hbm_bandwidth=hbm_bandwidth, scope=(
                               "per chip per step: executions x max(flops / peak, bytes / "
                               "HBM bandwidth) per kernel"))
  report["hot_ops"] = dict(hlo.get("hot_ops") or {}, scope=(
      "XLA:TPU's estimated_cycles of each fusion x executions per step, grouped by JAX name "
      "scope and result shape (kernels not included)"))
  report["collectives_per_chip"] = dict(hlo["collectives"], total_bytes=hlo["collective_bytes"],
                                        scope="bytes per chip per step: max(operand, result) "
                                              "bytes of each op x executions")
  cost = report["xla_cost_per_chip"]
  if "flops" in cost:
    cost["flops_with_kernels"] = cost["flops"] + totals["flops"]
  return totals


def _step_time(cost: dict[str, float], peak: float | None, model_flops: float, chips: int,
               compiled: bool, kernels: dict[str, Any] | None = None) -> dict[str, Any]:
  if not compiled:
    return {"step_seconds": None, "step_seconds_source": None, "mfu": None,
            "mfu_reason": "the program does not fit in HBM, so XLA gives no cost analysis"}
  if cost.get("optimal_seconds", 0) > 0:
    seconds = cost["optimal_seconds"]
    source = "xla: cost_analysis optimal_seconds (XLA:TPU cost model of one chip's program)"
    if cost.get("loops"):
      source += ", every loop body x its executions (kosmos.train.loop_cost.from_hlo)"
  elif cost.get("flops", 0) > 0 and peak:
    seconds = cost["flops"] / (peak * ASSUMED_EFFICIENCY)
    source = f"derived: XLA flops per chip / (peak * assumed efficiency {ASSUMED_EFFICIENCY})"
  else:
    return {"step_seconds": None, "step_seconds_source": None, "mfu": None,
            "mfu_reason": "no step-time estimate (XLA reported neither optimal_seconds nor flops)"}
  out = {"xla_step_seconds": seconds}
  kernels = kernels or {"seconds": 0.0, "uncounted": [], "flops": 0.0}
  if kernels["seconds"] > 0:
    seconds += kernels["seconds"]
    source += " + Pallas kernels: sum of executions x max(flops / peak, bytes / HBM bandwidth)"
  out.update(step_seconds=seconds, step_seconds_source=source)
  mfu = model_flops / (seconds * peak * chips) if peak else None
  out["mfu"] = mfu
  out["mfu_reason"] = None if mfu is not None else "unknown peak FLOP/s for this device kind"
  # The model's own FLOPs are a floor on the work a chip does (remat only adds): a cost
  # model that counts fewer has missed work (measured: kosmos1 at 16 rows per chip on
  # v5p-64, XLA counts 0.27x), and its step time cannot be trusted to be long enough.
  counted = cost.get("flops", 0.0) + kernels["flops"]
  short = bool(counted) and counted < 0.95 * model_flops / chips
  out["counted_flops_vs_model"] = counted / (model_flops / chips) if model_flops else None
  out["mfu_is_upper_bound"] = bool(kernels["uncounted"] or kernels.get("unknown_trip_counts")
                                   or cost.get("loops_counted_once") or short)
  if out["mfu_is_upper_bound"]:
    out["mfu_reason"] = "upper bound: " + "; ".join(filter(None, (
        short and f"XLA + kernels count {counted:.3g} FLOPs per chip, "
        f"{out['counted_flops_vs_model']:.2f}x the model's {model_flops / chips:.3g}: "
        "the cost model misses work",
        cost.get("loops_counted_once") and "XLA counted these loops' bodies once: "
        + ", ".join(cost["loops_counted_once"]),
        kernels["uncounted"] and "kernels whose work is not counted: "
        + ", ".join(sorted(set(kernels["uncounted"]))),
        kernels.get("unknown_trip_counts") and "while loops of unknown trip count (counted "
        "once): " + ", ".join(kernels["unknown_trip_counts"]))))
  if peak and cost.get("flops"):
    out["xla_flops_seconds_at_peak"] = (cost["flops"] + kernels["flops"]) / peak
  return out


def format_table(report: dict[str, Any]) -> str:
  """A readable summary of a report."""
  topo, mem, mesh = report["topology"], report["memory_per_chip"], report["mesh"]
  cost = report["xla_cost_per_chip"]
  gib = memory_lib.gib
  g = lambda n: "-" if n is None else gib(n)
  rows = [
      ("config", f"{report['config']} {' '.join(report['overrides'])}".strip()),
      ("topology", f"{topo['name']} = {topo['topology_name']} x{topo['num_slices']} slice(s), "
                   f"{topo['chips']} chips ({topo['device_kind']}, {gib(topo['hbm_bytes'])} HBM)"),
      ("mesh", f"data={mesh['data']} fsdp={mesh['fsdp']} tensor={mesh['tensor']}"),
      ("batch", f"{report['batch']['global_batch_size']} x {report['batch']['seq_len']} tokens, "
                f"{report['batch']['rows_per_chip']:g} rows per chip, "
                f"accum_steps {report['batch']['accum_steps']}"),
      ("params", f"{report['params']['total'] / 1e9:.3f}B "
                 f"({report['params']['trainable'] / 1e9:.3f}B trainable)"),
      ("memory per chip", f"argument {g(mem.get('argument'))}, output {g(mem.get('output'))}, "
                          f"alias {g(mem.get('alias'))}, temporary {g(mem.get('temporary'))}, "
                          f"code {g(mem.get('generated_code'))}"),
      ("total / HBM", f"{'>= ' if mem.get('total_is_lower_bound') else ''}{g(mem['total'])} / "
                      f"{g(mem['hbm'])} -> "
                      f"{'FITS' if report['fits'] else 'DOES NOT FIT'} ({mem['source']})"),
  ]
  kernels, coll = report.get("kernels"), report.get("collectives_per_chip")
  if cost.get("flops") is not None:
    extra = (f" + Pallas kernels {kernels['flops']:.4g} = {cost['flops_with_kernels']:.4g}"
             if kernels and kernels["per_kernel"] else "")
    rows.append(("XLA FLOPs per chip", f"{cost['flops']:.4g}{extra}"))
  for k in (kernels or {}).get("per_kernel", []):
    rows.append(("kernel", f"{k['name']} x{k['executions']}: " + (
        f"{k['flops']:.4g} FLOPs, {gib(k['bytes'])}, {k['seconds'] * 1e3:.3g} ms each "
        f"({k['bound']}-bound; {k['mask']})" if k.get("counted") else
        "NOT COUNTED (unknown kernel: MFU is an upper bound)")))
  if coll is not None:
    parts = [f"{kind} {gib(v['bytes'])} ({v['executions']}x)" for kind, v in coll.items()
             if isinstance(v, dict)]
    rows.append(("collectives per chip", f"{gib(coll['total_bytes'])} per step"
                 + (f": {', '.join(parts)}" if parts else "")))
  rows.append(("analytic FLOPs", f"{report['analytic_flops']['total']:.4g} per step, "
                                 f"{report['analytic_flops']['per_chip']:.4g} per chip"))
  if report.get("step_seconds") is not None:
    rows.append(("step time", f"{report['step_seconds']:.4g} s [{report['step_seconds_source']}]"))
  mfu = report.get("mfu")
  shown = ("-" if mfu is None else
           f"<= {mfu:.1%}" if report.get("mfu_is_upper_bound") else f"{mfu:.1%}")
  rows.append(("predicted MFU", shown + (f" ({report['mfu_reason']})"
                                         if report.get("mfu_reason") else "")))
  seconds = report["compile_seconds"]
  rows.append(("compile", f"lower {seconds['lower']} s, compile {seconds['compile']} s"
               + (f", loops recounted in {seconds['loop_count']} s" if "loop_count" in seconds
                  else "")
               + (f" (+ {seconds['loop_variants']} s for the loop-cost variants)"
                  if "loop_variants" in seconds else "")))
  if cost.get("loops"):
    rows.append(("loops", f"XLA counted each body once ({cost['counted_once']['flops']:.4g} "
                          f"FLOPs); per iteration: {cost['flops']:.4g}"))
    for loop in cost["loops"][:LOOP_ROWS]:
      rows.append(("loop", f"{loop['cycles_share']:5.1%}  {loop['name'][-60:]}  "
                           f"x{loop['trips']} ({loop['loops']} loop(s), {loop['executions']} "
                           f"executions per step, {loop['flops']:.3g} FLOPs)"))
  if "variants" in cost:
    rows.append(("loop variants", f"{cost['variants']['flops']:.4g} FLOPs, "
                                  f"{cost['variants'].get('optimal_seconds', 0):.4g} s "
                                  "(the model's loops only; cross-check)"))
  for op in (report.get("hot_ops") or {}).get("top", [])[:8]:
    rows.append(("hot op", f"{op['share']:5.1%}  {op['op'][-70:]}  {op['result']}"))
  for s in report["suggestions"]:
    rows.append(("suggestion", s))
  width = max(len(k) for k, _ in rows)
  return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _versions() -> dict[str, str]:
  out = {"jax": jax.__version__}
  try:
    out["libtpu"] = importlib.metadata.version("libtpu")
  except importlib.metadata.PackageNotFoundError:
    out["libtpu"] = "not installed"
  return out


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="kosmos-compile", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", required=True, help="configs/X.py[:arg]")
  parser.add_argument("--topology", required=True, help="e.g. v4-8, v5p-256, v5e-256, 2xv5p-256")
  parser.add_argument("--out", help="write the report as JSON here (with --search: the "
                                      "winner's overrides and report, and every candidate)")
  parser.add_argument("--loop-variants", action="store_true",
                      help="also compile one variant per model loop (unrolled by 2) and report "
                           "their per-iteration cost beside the HLO recount (a cross-check; "
                           "one more compile per loop)")
  parser.add_argument("--no-loop-variants", action="store_true", help=argparse.SUPPRESS)
  compile_search.add_flags(parser)
  args, rest = parser.parse_known_args(argv)
  try:
    topo = parse_topology(args.topology)
    config = configs.load(args.config)
    configs.apply_overrides(config, rest)
  except (TopologyError, ValueError, FileNotFoundError, TypeError) as e:
    parser.error(str(e))
  if args.search:
    return compile_search.run(args, topo, rest)
  report = compile_report(config, topo, loop_cost_variants=args.loop_variants)
  report["config"], report["overrides"] = args.config, list(rest)
  report["host"] = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, no TPU (AOT compile)",
                    "date": datetime.date.today().isoformat(), **_versions()}
  print(format_table(report))
  if args.out:
    with open(args.out, "w") as f:
      json.dump(report, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
