"""Every while loop of a compiled program counted per iteration from its HLO
(kosmos.train.loop_cost.from_hlo), against programs whose loops are unrolled."""

import jax
import jax.numpy as jnp
import pytest

from kosmos.train import compile as compile_lib
from kosmos.train import hlo_costs
from kosmos.train import loop_cost

# XLA:TPU's windowed einsums step their counter by 2 (two weight shards per iteration):
# `i < 16` from 0, step 2, is 8 iterations, not 16.
STEP2 = """HloModule m, entry_computation_layout={(f32[8,8]{1,0})->f32[8,8]{1,0}}

%cond (p: (s32[], f32[8,8])) -> pred[] {
  %p = (s32[], f32[8,8]{1,0}) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %n = s32[] constant(16)
  ROOT %lt = pred[] compare(%i, %n), direction=LT
}

%body (q: (s32[], f32[8,8])) -> (s32[], f32[8,8]) {
  %q = (s32[], f32[8,8]{1,0}) parameter(0)
  %j = s32[] get-tuple-element(%q), index=0
  %two = s32[] constant(2)
  %next = s32[] add(%j, %two)
  %x = f32[8,8]{1,0} get-tuple-element(%q), index=1
  %d = f32[8,8]{1,0} dot(%x, %x), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  ROOT %t = (s32[], f32[8,8]{1,0}) tuple(%next, %d)
}

ENTRY %main (a: f32[8,8]) -> f32[8,8] {
  %a = f32[8,8]{1,0} parameter(0)
  %zero = s32[] constant(0)
  %tuple = (s32[], f32[8,8]{1,0}) tuple(%zero, %a)
  %w = (s32[], f32[8,8]{1,0}) while(%tuple), condition=%cond, body=%body
  %r = f32[8,8]{1,0} get-tuple-element(%w), index=1
  ROOT %e = f32[8,8]{1,0} dot(%r, %a), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}
"""
DOT = 2 * 8 * 8 * 8


def test_a_counter_stepping_by_two_counts_half_the_limit():
  comps, entry = hlo_costs.parse(STEP2)
  runs, unknown = hlo_costs.executions(comps, entry)
  assert runs["body"] == 8 and runs["cond"] == 9 and not unknown
  # XLA's analysis counts the body and the condition once; a scalar add or compare is 1 FLOP.
  counted = loop_cost.from_hlo(STEP2, {"flops": 2 * DOT + 2})
  assert counted["check"]["flops_summed_once"] == 2 * DOT + 2
  assert counted["flops"] == 9 * DOT + 8 + 9  # 8 bodies (dot, add), 9 conditions, the entry
  assert [(l["trips"], l["executions"], l["flops"]) for l in counted["loops"]] == [
      (8, 8, 8 * (DOT + 1))]


def _program(unroll):
  """Nested scans as a train step has them: 3 micro-batches around a 5-layer stack, with
  a transcendental in every layer."""
  def layer(h, w):
    return jnp.tanh(h @ w), None

  def micro(carry, x):
    h, _ = jax.lax.scan(layer, x, carry, unroll=unroll)
    return carry, h.sum()

  def f(ws, xs):
    return jax.lax.scan(micro, ws, xs, unroll=unroll)[1].sum()

  ws = jax.ShapeDtypeStruct((5, 32, 32), jnp.float32)
  xs = jax.ShapeDtypeStruct((3, 16, 32), jnp.float32)
  return jax.jit(jax.grad(f, argnums=(0, 1))).lower(ws, xs).compile()  # no dead code


def test_nested_scans_recounted_equal_the_unrolled_program():
  looped, unrolled = _program(1), _program(True)
  once, truth = compile_lib._cost(looped), compile_lib._cost(unrolled)  # pylint: disable=protected-access
  assert "while" in looped.as_text() and "while" not in unrolled.as_text()
  assert once["flops"] < 0.5 * truth["flops"]  # XLA counted each body once
  counted = loop_cost.from_hlo(looped.as_text(), once)
  assert counted["check"]["flops_summed_once"] == pytest.approx(once["flops"])
  assert counted["flops"] == pytest.approx(truth["flops"], rel=0.01)
  assert counted["transcendentals"] == pytest.approx(truth["transcendentals"], rel=0.01)
  trips = sorted(l["trips"] for l in counted["loops"])
  assert 3 in trips and 5 in trips
