"""XLA's cost of a program with loops, counted per executed iteration.

XLA's `cost_analysis()` counts a while loop's body ONCE, whatever its trip count (measured:
a 16-layer `lax.scan` reports the FLOPs and `optimal_seconds` of one layer). A scanned
model (`scan_layers`) or gradient accumulation therefore looks 24x cheaper than it is.
This module recovers the per-iteration cost the way XLA itself would count it, from
compiles of the same step with one loop unrolled by 2 (`lax.scan(unroll=2)`): the extra
bodies counted in that variant, over the extra bodies it has, is the cost of one
iteration, and

    cost = counted + sum over loops (iterations - 1) x cost of one iteration

(nested: the micro-batch loop multiplies the stacks inside it). It is XLA's own cost model
of the program that runs (a loop body keeps its carries in HBM, so it costs more than a
layer of the unrolled program: measured 2x the bytes for a one-matmul body), not a guess;
Pallas kernels are invisible to it either way and are counted apart (kernel accounting).

Loops: each scanned stack has a frozen and a trained segment (kosmos.model.stack), each a
`lax.scan` (forward, and its transpose in the backward pass: both take the unroll); the
loss's chunks (`optim.loss_chunk`, kosmos.train.loss); the step's micro-batch loop when
`optim.accum_steps` > 1 (the others run inside it).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from flax import nnx

from kosmos.model import stack as stack_lib

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

