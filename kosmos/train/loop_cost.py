"""XLA's cost of a program with loops, counted per executed iteration.

XLA's `cost_analysis()` counts a while loop's body ONCE, whatever its trip count (measured:
a 16-layer `lax.scan` reports the FLOPs and `optimal_seconds` of one layer). A scanned
model (`scan_layers`), gradient accumulation, the chunked loss, and the loops XLA:TPU
writes itself (a windowed einsum, "collective matmul", is a while loop over weight shards:
kosmos1 on v5p-64 had 53 of them, 8 iterations each, inside its layers) therefore look
many times cheaper than they are.

`from_hlo(text, counted_once)` (the default, no extra compile) counts every loop of the
compiled program, the model's and XLA's own, from its HLO:

  regions     the entry computation and every while body and condition; a region's
              exclusive cost is XLA's cost analysis of the region as a module of its own
              (run by the CPU client on the TPU module's text: the same FLOP count,
              checked: the regions sum to `cost_analysis()`'s figure) minus the loops
              nested in it
  executions  of each region per step: the product of the trip counts around it
              (kosmos.train.hlo_costs.executions: known_trip_count, else the condition's
              `counter < N` and the counter's step)
  flops, transcendentals   sum over regions of exclusive cost x executions
  bytes_accessed           XLA:TPU's figure x the same ratio for the CPU client's bytes
                           (the two count layouts differently, so only the ratio is used)
  optimal_seconds          XLA:TPU's figure x the ratio of XLA:TPU's own `estimated_cycles`
                           (on every top-level fusion) summed per execution over summed once

`cost_with_loops` (kosmos-compile --loop-variants, the cross-check) measures instead: it
compiles the same step with one of the model's loops unrolled by 2 (`lax.scan(unroll=2)`):
the extra bodies counted in that variant, over the extra bodies it has, is the cost of one
iteration, and

    cost = counted + sum over loops (iterations - 1) x cost of one iteration

(nested: the micro-batch loop multiplies the stacks inside it). It sees only the loops the
model writes, not XLA's own. Pallas kernels are invisible to both and are counted apart
(kernel accounting, kosmos.train.hlo_costs).

Loops: each scanned stack has a frozen and a trained segment (kosmos.model.stack), each a
`lax.scan` (forward, and its transpose in the backward pass: both take the unroll); the
loss's chunks (`optim.loss_chunk`, kosmos.train.loss); the step's micro-batch loop when
`optim.accum_steps` > 1 (the others run inside it).
"""

from __future__ import annotations

import collections
import dataclasses
import re
from typing import Any, Callable

from flax import nnx

from kosmos.model import stack as stack_lib
from kosmos.train import hlo_costs

KEYS = ("flops", "bytes_accessed", "transcendentals", "optimal_seconds")


@dataclasses.dataclass(frozen=True)
class Loop:
  name: str  # e.g. "decoder.blocks[trained]", "vision.blocks[frozen]", "loss_chunks", "micro_batches"
  iterations: int
  path: tuple = ()  # module path of the stack; ("loss",) the loss's chunks; () micro-batches
  segment: int = 0  # 0 frozen, 1 trained


def counted_bodies(length: int, unroll: int) -> int:
  """How many copies of a scan body XLA's cost analysis sees (jax's `_scan_impl`)."""
  if unroll == 1:
    return 1 if length else 0
  trips, remainder = divmod(length, unroll)
  if trips == 0 or (trips == 1 and remainder == 0):
    return length  # fully unrolled: no while loop
  return unroll + remainder


def _abstract_model(run: Any) -> nnx.Module:
  return nnx.merge(run.graphdef, run.abstract_state.params, run.abstract_state.frozen)


def loops(config: Any, run: Any) -> list[Loop]:
  """The loops of the train step whose bodies XLA counts once (more than one iteration)."""
  out = []
  model = _abstract_model(run)
  stops = {"decoder": config.model.decoder.num_layers,
           "vision": config.model.vision.feature_layer % (config.model.vision.depth + 1)}
  for path, module in nnx.iter_graph(model):
    if not stack_lib.is_stack(module):
      continue
    name = ".".join(map(str, path))
    stop = stops.get(str(path[0]), module.scan_num_layers)
    frozen = min(module.frozen_prefix, stop)
    for segment, length in enumerate((frozen, stop - frozen)):
      if length > 1:
        out.append(Loop(f"{name}[{('frozen', 'trained')[segment]}]", length, tuple(path), segment))
  chunk, seq_len = int(config.optim.get("loss_chunk", 0)), int(config.data.seq_len)
  if 0 < chunk < seq_len and seq_len // chunk > 1:
    out.append(Loop("loss_chunks", seq_len // chunk, ("loss",)))
  accum = int(config.optim.accum_steps)
  if accum > 1:
    out.append(Loop("micro_batches", accum))
  return out


def unrolled(run: Any, loop: Loop, unroll: int = 2) -> Any:
  """`run` (a step.Setup) whose step unrolls `loop` by `unroll`."""
  if not loop.path:
    return dataclasses.replace(run, accum_unroll=unroll)
  if loop.path == ("loss",):
    return dataclasses.replace(run, loss_unroll=unroll)
  model = _abstract_model(run)
  module = model
  for key in loop.path:
    module = getattr(module, str(key)) if not isinstance(key, int) else module[key]
  factors = list(module.scan_unroll)
  factors[loop.segment] = unroll
  module.scan_unroll = tuple(factors)
  graphdef = nnx.split(model, run.trainable, ...)[0]
  return dataclasses.replace(run, graphdef=graphdef)


def corrected(base: dict[str, float], variants: dict[str, dict[str, float]],
              found: list[Loop], unroll: int = 2) -> dict[str, Any]:
  """Per-iteration totals from the base cost and each loop's unrolled variant.

  Stacks inside the micro-batch loop run `accum` times per step; the micro-batch body
  measured from its variant already holds each inner stack's body once.
  """
  accum = next((l.iterations for l in found if not l.path), 1)
  # A figure XLA does not give (v5e: optimal_seconds is negative) is not extrapolated.
  out = {k: base[k] for k in KEYS if base.get(k, -1.0) >= 0}
  per_iteration = {}
  for loop in found:
    extra = counted_bodies(loop.iterations, unroll) - counted_bodies(loop.iterations, 1)
    body = {k: (variants[loop.name].get(k, 0.0) - base.get(k, 0.0)) / extra for k in out}
    per_iteration[loop.name] = body
    repeats = (loop.iterations - 1) * (accum if loop.path else 1)
    for k in out:
      out[k] += repeats * body[k]
  return dict(out, per_iteration=per_iteration,
              loops={l.name: l.iterations for l in found})


def cost_with_loops(config: Any, run: Any, compile_cost: Callable[[Any], dict[str, float]],
                    base: dict[str, float]) -> dict[str, Any] | None:
  """`base` corrected for every loop (None when the step has none); `compile_cost(run)`
  compiles the step of a variant Setup and returns its cost dict."""
  found = loops(config, run)
  if not found:
    return None
  variants = {loop.name: compile_cost(unrolled(run, loop)) for loop in found}
  return corrected(base, variants, found)



# ---------------------------------------------------------------------------- from the HLO

_FRAME = re.compile(r",?\s*stack_frame_id=\d+")


def _reachable(comps: dict[str, list[hlo_costs.Instr]], root: str, into_loops: bool = True
               ) -> list[str]:
  """Computations `root` runs (itself first); `into_loops=False`: not into while bodies."""
  seen, stack = [], [root]
  while stack:
    name = stack.pop()
    if name in seen or name not in comps:
      continue
    seen.append(name)
    for instr in comps[name]:
      if into_loops or instr.opcode != "while":
        stack += [callee for callee, _ in hlo_costs._callees(instr)]  # pylint: disable=protected-access
  return seen


class _CpuCost:
  """XLA's HloCostAnalysis of HLO text, run by the CPU client (any module: the analysis
  counts the ops as written; a TPU module gives the FLOPs XLA:TPU reports)."""

  def __init__(self, texts: dict[str, list[str]], comps: dict[str, list[hlo_costs.Instr]]):
    from jax._src.lib import _jax  # pylint: disable=import-outside-toplevel
    from jax._src.lib import xla_client  # pylint: disable=import-outside-toplevel
    from jaxlib import _hlo  # pylint: disable=import-outside-toplevel
    self.texts, self.comps = texts, comps
    self.client = xla_client.make_cpu_client()  # not jax's backends: no TPU init here
    self.analysis, self.parse = _jax.hlo_module_cost_analysis, _hlo.hlo_module_from_text

  def __call__(self, root: str) -> dict[str, float]:
    """Cost of computation `root` run once (its own loops' bodies counted once)."""
    lines = ["HloModule region"]
    for name in reversed(_reachable(self.comps, root)):  # callees first, as XLA prints them
      body = self.texts[name]
      lines += [("ENTRY " if name == root else "") + _FRAME.sub("", body[0])]
      lines += [_FRAME.sub("", line) for line in body[1:]]
    cost = self.analysis(self.client, self.parse("\n".join(lines)))
    return {"flops": cost.get("flops", 0.0), "transcendentals": cost.get("transcendentals", 0.0),
            "bytes_accessed": cost.get("bytes accessed", 0.0)}


def _loop_name(instr: hlo_costs.Instr, body: str) -> str:
  """A while loop's readable name: XLA's own loops by their body (windowed_dot_general_
  body_ag: an all-gather windowed einsum), the program's by their JAX scope."""
  own = re.match(r"(?:wide\.)*([a-z_]+(?:_body)?(?:_[a-z]+)?)", body)
  op_name = re.search(r'op_name="([^"]*)"', instr.attrs)
  if "windowed" in body or not op_name:
    return own.group(1) if own else body
  scope = op_name.group(1).replace("jit(wrapped)/", "")
  return re.sub(r"/?(body/)?closed_call", "", scope)


def from_hlo(text: str, counted_once: dict[str, float]) -> dict[str, Any]:
  """XLA's cost per step with every while loop counted per iteration (module docstring).

  `text`: the compiled (per-device) module's HLO; `counted_once`: its `cost_analysis()`.
  Returns the corrected KEYS that `counted_once` has, and `loops` (one row per loop kind:
  trips, executions per step, FLOPs per execution, share of the estimated cycles) and
  `unknown_trip_counts` (whiles counted once) and `check` (the regions' FLOPs summed once
  against XLA's own figure)."""
  comps, entry = hlo_costs.parse(text)
  if entry is None:
    raise ValueError("no ENTRY computation in the HLO text")
  runs, unknown = hlo_costs.executions(comps, entry)
  once, _ = hlo_costs.executions(comps, entry, count_trips=False)
  cost = _CpuCost(hlo_costs.computation_texts(text), comps)

  # region -> the computations it runs itself (not into loops), and the bodies and
  # conditions of the loops among them; a body shared by two whiles is one region (its
  # `runs` already sum both callers).
  members: dict[str, list[str]] = {}
  nested: dict[str, list[str]] = {}
  loops: list[tuple[hlo_costs.Instr, int | None, str]] = []  # (while, trip count, body)
  pending = [entry]
  while pending:
    region = pending.pop()
    if region in members:
      continue
    members[region] = _reachable(comps, region, into_loops=False)
    nested[region] = []
    for name in members[region]:
      for instr in comps[name]:
        if instr.opcode != "while":
          continue
        body = re.search(r"\bbody=%([\w.\-]+)", instr.attrs).group(1)
        cond = re.search(r"\bcondition=%([\w.\-]+)", instr.attrs).group(1)
        loops.append((instr, hlo_costs.trip_count(instr, comps, comps[name]), body))
        nested[region] += [body, cond]
        pending += [body, cond]
  inclusive = {r: cost(r) for r in members}
  exclusive = {}
  for region in members:
    exclusive[region] = {k: inclusive[region][k] - sum(inclusive[n][k] for n in nested[region])
                         for k in inclusive[region]}
  # A region's runs are those of its first computation: `runs` already multiplies trips.
  total = collections.Counter()
  counted = collections.Counter()
  for region in members:
    for k, v in exclusive[region].items():
      total[k] += v * runs.get(region, 0)
      counted[k] += v * once.get(region, 0)
  cycles = _cycles(comps, runs), _cycles(comps, once)

  out: dict[str, Any] = {}
  for k in KEYS:
    base = counted_once.get(k, -1.0)
    if base < 0:  # a figure XLA does not give (v5e: optimal_seconds is negative)
      continue
    if k in ("flops", "transcendentals"):
      out[k] = float(total[k])
    elif k == "bytes_accessed":
      out[k] = base * (total[k] / counted[k] if counted[k] else 1.0)
    else:
      out[k] = base * (cycles[0] / cycles[1] if cycles[1] else 1.0)
  out["check"] = {"flops_summed_once": float(counted["flops"]),
                  "xla_flops": counted_once.get("flops"),
                  "estimated_cycles": cycles[0], "estimated_cycles_once": cycles[1]}
  out["loops"] = _loop_rows(loops, exclusive, members, comps, runs, cycles[0])
  out["unknown_trip_counts"] = unknown
  return out


def _cycles(comps: dict[str, list[hlo_costs.Instr]], runs: dict[str, int]) -> float:
  """XLA:TPU's `estimated_cycles` of every op that carries one, times its executions."""
  total = 0.0
  for name, comp in comps.items():
    n = runs.get(name, 0)
    for instr in comp if n else ():
      found = hlo_costs._CYCLES.search(instr.attrs)  # pylint: disable=protected-access
      total += n * int(found.group(1)) if found else 0
  return total


def _loop_rows(loops, exclusive, members, comps, runs, all_cycles) -> list[dict[str, Any]]:
  """One row per loop kind (same name and trip count), largest share of cycles first; a
  loop's FLOPs and cycles are its body's own ops (loops nested in it have their own rows)."""
  rows: dict[tuple[str, int | None], dict[str, Any]] = {}
  for instr, trips, body in loops:
    key = (_loop_name(instr, body), trips)
    row = rows.setdefault(key, {"name": key[0], "trips": trips, "loops": 0, "executions": 0,
                                "flops": 0.0, "cycles": 0.0})
    n = runs.get(body, 0)
    row["loops"] += 1
    row["executions"] += n
    row["flops"] += exclusive[body]["flops"] * n
    row["cycles"] += _cycles({c: comps[c] for c in members[body]}, dict.fromkeys(comps, n))
  out = sorted(rows.values(), key=lambda r: -r["cycles"])
  for row in out:
    row["cycles_share"] = row.pop("cycles") / all_cycles if all_cycles else None
  return out
