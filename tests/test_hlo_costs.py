"""Pallas kernel and collective accounting from compiled TPU HLO (programs compiled for
v5p-8 devices described by libtpu, on the CPU host; each compiles in about a second)."""

import functools

import numpy as np
import pytest

from kosmos.train import compile as compile_lib  # sets the libtpu env before jax loads
from kosmos.train import hlo_costs
from kosmos.train import splash_costs

import jax  # pylint: disable=g-bad-import-order,wrong-import-order
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_mask
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

B, H, T, K = 4, 4, 512, 128  # global batch, heads, sequence, head dim
BLOCK = 128
V5P_PEAK, V5P_HBM = 459e12, 2.765e12


@functools.lru_cache(maxsize=None)
def _devices():
  return compile_lib.topology_devices(compile_lib.parse_topology("v5p-8"))


def _attention_mesh():
  return Mesh(np.array(_devices()).reshape(2, 2), ("data", "heads"))


def _splash(q, k, v, seg, *, fused=False):
  """Causal splash attention with segment ids, vmapped over the local batch (per device)."""
  heads = q.shape[1]
  mask = splash_mask.MultiHeadMask([splash_mask.CausalMask((T, T)) for _ in range(heads)])
  blocks = splash.BlockSizes(
      block_q=BLOCK, block_kv=BLOCK, block_kv_compute=BLOCK, block_q_dkv=BLOCK,
      block_kv_dkv=BLOCK, block_kv_dkv_compute=BLOCK, block_q_dq=None if fused else BLOCK,
      block_kv_dq=None if fused else BLOCK, use_fused_bwd_kernel=fused)
  kernel = splash.make_splash_mha(mask, block_sizes=blocks, head_shards=1, q_seq_shards=1)
  one = lambda q, k, v, s: kernel(q, k, v, segment_ids=splash.SegmentIds(q=s, kv=s))
  return jax.vmap(one)(q, k, v, seg)


def _xla(q, k, v, seg):
  """The same attention in XLA ops: causal and same-segment mask, softmax in float32."""
  logits = jnp.einsum("bhtk,bhsk->bhts", q, k, preferred_element_type=jnp.float32)
  allowed = jnp.tril(jnp.ones((T, T), bool))[None, None] & (
      seg[:, None, :, None] == seg[:, None, None, :])
  weights = jax.nn.softmax(jnp.where(allowed, logits, -1e30), axis=-1).astype(q.dtype)
  return jnp.einsum("bhts,bhsk->bhtk", weights, v)


def _compile_attention(impl, layers=1, **kw):
  """jit(value_and_grad) of sum(attention(x)^2) under shard_map over (data, heads), with
  `layers` > 1 applying it in a lax.scan (a while loop of that trip count)."""
  mesh = _attention_mesh()
  spec = P("data", "heads", None, None)
  attend = jax.shard_map(functools.partial(impl, **kw), mesh=mesh,
                         in_specs=(spec, spec, spec, P("data", None)), out_specs=spec,
                         check_vma=False)

  def loss(q, k, v, seg):
    if layers == 1:
      out = attend(q, k, v, seg)
    else:
      out, _ = jax.lax.scan(lambda x, _: (attend(x, k, v, seg), None), q, None, length=layers)
    return jnp.sum(out.astype(jnp.float32) ** 2)

  x = jax.ShapeDtypeStruct((B, H, T, K), jnp.bfloat16, sharding=NamedSharding(mesh, spec))
  seg = jax.ShapeDtypeStruct((B, T), jnp.int32, sharding=NamedSharding(mesh, P("data", None)))
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2))).lower(x, x, x, seg).compile()


@functools.lru_cache(maxsize=None)
def _analysis(impl_name, layers=1, fused=False):
  impl = {"splash": _splash, "xla": _xla}[impl_name]
  kw = {"fused": fused} if impl_name == "splash" else {}
  compiled = _compile_attention(impl, layers, **kw)
  return compiled.cost_analysis(), hlo_costs.analyze(compiled)


# Per device: 2 rows x 2 heads; 4 x 4 blocks of 128, causal: 10 computed.
LOCAL, BLOCKS = (B // 2) * (H // 2), 10
PER_BLOCK = 2 * BLOCK * BLOCK * K  # one bq x bkv x K matmul


def test_splash_kernels_found_with_names_shapes_and_flops():
  _, analysis = _analysis("splash")
  kernels = {k["kind"]: k for k in analysis["kernels"]}
  assert set(kernels) == {"splash_fwd", "splash_dq", "splash_dkv"}
  fwd = kernels["splash_fwd"]
  assert fwd["name"] == "splash_mha_fwd_segmented_residuals" and fwd["executions"] == 1
  # q, k, v per device: [local batch 2, local heads 2, T, K] after the two s8 block-mask tables.
  assert fwd["operands"][:5] == ["s8[1,4,4]", "s8[1,4,4]"] + ["bf16[2,2,512,128]"] * 3
  assert kernels["splash_dq"]["name"] == "splash_mha_dq_segmented_no_residuals"
  assert kernels["splash_dkv"]["name"] == "splash_mha_dkv_segmented_no_residuals"
  for kind, matmuls in (("splash_fwd", 2), ("splash_dq", 3), ("splash_dkv", 4)):
    kernel = kernels[kind]
    assert kernel["computed_blocks_per_head"] == BLOCKS and kernel["dense_blocks_per_head"] == 16
    assert kernel["flops"] == LOCAL * BLOCKS * matmuls * PER_BLOCK, kind
  # fwd bytes: q and o once, the lane-broadcast f32 logsumexp, k and v once per computed
  # block, int32 segment ids (q side broadcast over 128 lanes, kv side over 8 sublanes).
  expected = LOCAL * (2 * T * K * 2 + T * 128 * 4 + BLOCKS * BLOCK * 2 * K * 2
                      + T * 128 * 4 + BLOCKS * BLOCK * 8 * 4)
  assert kernels["splash_fwd"]["bytes"] == expected


def test_fused_backward_kernel_counts_the_dq_matmul():
  _, analysis = _analysis("splash", fused=True)
  kernels = {k["kind"]: k for k in analysis["kernels"]}
  assert set(kernels) == {"splash_fwd", "splash_dkv_fused"}
  assert kernels["splash_dkv_fused"]["flops"] == LOCAL * BLOCKS * 5 * PER_BLOCK


def test_kernel_executions_multiply_by_loop_trip_counts():
  _, one = _analysis("splash")
  _, three = _analysis("splash", layers=3)
  assert not three["unknown_trip_counts"]
  runs = {k["kind"]: k["executions"] for k in three["kernels"]}
  assert runs == {"splash_fwd": 3, "splash_dq": 3, "splash_dkv": 3}
  total = lambda a: sum(k["executions"] * k["flops"] for k in a["kernels"])
  assert total(three) == 3 * total(one)


def test_hot_ops_are_xla_estimated_cycles_times_loop_trips():
  _, one = _analysis("xla")
  _, three = _analysis("xla", layers=3)
  assert one["hot_ops"]["total_cycles"] > 0
  top = one["hot_ops"]["top"]
  shares = sum(op["share"] for op in top)
  assert top and shares <= 1 + 1e-9
  assert len(top) == hlo_costs.HOT_OPS or abs(shares - 1) < 1e-9  # all groups listed
  assert top == sorted(top, key=lambda op: -op["cycles"])
  # In the scanned program the loop bodies' fusions count once per iteration (3 times).
  comps, entry = hlo_costs.parse(hlo_costs.module_text(_compile_attention(_xla, 3)))
  runs, _ = hlo_costs.executions(comps, entry)
  once = hlo_costs.hot_ops(comps, {name: 1 for name in runs})["total_cycles"]
  in_loops = sum(int(hlo_costs._CYCLES.search(i.attrs).group(1))  # pylint: disable=protected-access
                 for name, comp in comps.items() if runs[name] == 3 for i in comp
                 if hlo_costs._CYCLES.search(i.attrs))  # pylint: disable=protected-access
  assert in_loops > 0
  assert three["hot_ops"]["total_cycles"] == once + 2 * in_loops


def test_splash_work_is_not_hidden_from_the_prediction():
  """XLA's cost analysis misses the kernels' work; with it added, the splash program's
  FLOPs are the same order as XLA attention's (which computes all 16 blocks, not 10)."""
  xla_cost, xla_analysis = _analysis("xla")
  splash_cost, splash_analysis = _analysis("splash")
  assert xla_analysis["kernels"] == []
  assert splash_cost["flops"] < 0.01 * xla_cost["flops"]  # what XLA alone would claim
  kernels = hlo_costs.kernel_seconds(splash_analysis, V5P_PEAK, V5P_HBM)
  with_kernels = splash_cost["flops"] + kernels["flops"]
  assert 0.4 * xla_cost["flops"] < with_kernels < 1.5 * xla_cost["flops"]
  # The step time adds every kernel's roofline time, so MFU cannot rise by hiding work.
  step = compile_lib._step_time(  # pylint: disable=protected-access
      dict(splash_cost), V5P_PEAK, model_flops=1e9, chips=4, compiled=True, kernels=kernels)
  assert step["step_seconds"] == pytest.approx(splash_cost["optimal_seconds"] + kernels["seconds"])
  assert kernels["seconds"] >= kernels["flops"] / V5P_PEAK > 0
  assert "Pallas kernels" in step["step_seconds_source"] and not step["mfu_is_upper_bound"]


def test_unknown_kernel_makes_mfu_an_upper_bound():
  analysis = {"kernels": [{"name": "my_kernel", "executions": 2, "counted": False}],
              "unknown_trip_counts": []}
  kernels = hlo_costs.kernel_seconds(analysis, V5P_PEAK, V5P_HBM)
  assert kernels["uncounted"] == ["my_kernel"]
  step = compile_lib._step_time(  # pylint: disable=protected-access
      {"optimal_seconds": 1.0, "flops": 1e12}, V5P_PEAK, 1e12, 4, True, kernels)
  assert step["mfu_is_upper_bound"] and "my_kernel" in step["mfu_reason"]


D = 1024  # fsdp matmul: w [D, D] bf16 sharded over 4 devices on its first dim


def _fsdp_program(layers):
  """Per layer: all-gather the [D/4, D] weight shard (result D x D bf16 = 2 MiB), x @ w; the
  gradient reduce-scatters dw (input D x D bf16 = 2 MiB). Under lax.scan for layers > 1."""
  mesh = Mesh(np.array(_devices()), ("fsdp",))

  def layer(x, w_shard):
    w = jax.lax.all_gather(w_shard, "fsdp", axis=0, tiled=True)
    return jnp.tanh(x @ w)

  def local_loss(x, w):
    h, _ = jax.lax.scan(lambda h, w_l: (layer(h, w_l), None), x, w)
    return jax.lax.psum(jnp.sum(h.astype(jnp.float32)), "fsdp")

  def grad(x, w):
    return jax.grad(local_loss, argnums=1)(x, w)

  f = jax.shard_map(grad, mesh=mesh, in_specs=(P("fsdp"), P(None, "fsdp")),
                    out_specs=P(None, "fsdp"), check_vma=False)
  x = jax.ShapeDtypeStruct((64, D), jnp.bfloat16, sharding=NamedSharding(mesh, P("fsdp")))
  w = jax.ShapeDtypeStruct((layers, D, D), jnp.bfloat16,
                           sharding=NamedSharding(mesh, P(None, "fsdp")))
  return hlo_costs.analyze(jax.jit(f).lower(x, w).compile())


def test_collective_bytes_of_an_fsdp_matmul_by_hand():
  one, three = _fsdp_program(1), _fsdp_program(3)
  gathered = D * D * 2  # bf16 result of each layer's all-gather
  assert one["collectives"]["all-gather"]["bytes"] % gathered == 0
  gathers = one["collectives"]["all-gather"]["bytes"] // gathered
  assert gathers in (1, 2)  # forward, and maybe again for the backward
  assert one["collectives"]["reduce-scatter"]["bytes"] == gathered  # dw, bf16 input
  for kind in ("all-gather", "reduce-scatter"):
    assert three["collectives"][kind]["bytes"] == 3 * one["collectives"][kind]["bytes"], kind
    assert three["collectives"][kind]["executions"] == 3 * one["collectives"][kind]["executions"]
  assert not three["unknown_trip_counts"]
  assert three["collective_bytes"] == sum(v["bytes"] for v in three["collectives"].values())


HLO = """HloModule m, entry_computation_layout={()->f32[8]}

%cond (p: (s32[], f32[8])) -> pred[] {
  %p = (s32[], f32[8]{0}) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %n = s32[] constant(7)
  ROOT %lt = pred[] compare(%i, %n), direction=LT
}

%body (p.1: (s32[], f32[8])) -> (s32[], f32[8]) {
  %p.1 = (s32[], f32[8]{0}) parameter(0)
  %i.1 = s32[] get-tuple-element(%p.1), index=0
  %x = f32[8]{0} get-tuple-element(%p.1), index=1
  %ag-start = (f32[2]{0}, f32[8]{0}) all-gather-start(%x), dimensions={0}
  %ag-done = f32[8]{0} all-gather-done(%ag-start)
  %cp = f32[8]{0} collective-permute(%ag-done), source_target_pairs={{0,1},{1,0}}
  %k = f32[8]{0} custom-call(%cp), custom_call_target="tpu_custom_call", metadata={op_name="jit(f)/while/body/my_kernel/pallas_call"}
  ROOT %t = (s32[], f32[8]{0}) tuple(%i.1, %k)
}

ENTRY %main () -> f32[8] {
  %zero = s32[] constant(2)
  %init = f32[8]{0} constant({...})
  %tuple = (s32[], f32[8]{0}) tuple(%zero, %init)
  %w = (s32[], f32[8]{0}) while(%tuple), condition=%cond, body=%body
  %r = f32[8]{0} get-tuple-element(%w), index=1
  ROOT %ar = f32[8]{0} all-reduce(%r), to_apply=%cond
}
"""


def test_trip_count_from_condition_and_async_collectives_counted_once():
  """`i < 7` from i = 2: 5 trips; the -start/-done pair counts once, at its start."""
  analysis = hlo_costs.analyze_text(HLO)
  coll = analysis["collectives"]
  assert coll["all-gather"] == {"ops": 1, "executions": 5, "bytes": 5 * 32}
  assert coll["collective-permute"] == {"ops": 1, "executions": 5, "bytes": 5 * 32}
  assert coll["all-reduce"] == {"ops": 1, "executions": 1, "bytes": 32}
  assert analysis["collective_bytes"] == 11 * 32
  # A Pallas kernel this module cannot cost: listed, with its executions, as not counted.
  assert [(k["name"], k["executions"], k["counted"]) for k in analysis["kernels"]] == [
      ("my_kernel", 5, False)]


def test_sharded_mask_slice_is_read_as_a_density():
  """A kernel that gets a 1 x 4 x 4 slice of a 2 x 4 x 4 mask constant (two q shards, say)
  computes the constant's density of its 16 blocks."""
  causal = [1 if j <= i else 0 for i in range(4) for j in range(4)]
  operands = [("s8", (1, 4, 4)), ("s8", (1, 4, 4))] + [("bf16", (2, 512, 128))] * 3
  meta = {"block_q": 128, "block_kv": 128}
  kernel = splash_costs.kernel_cost("splash_mha_fwd_no_residuals", operands, [], meta,
                                    causal + [1] * 16)
  assert kernel["computed_blocks_per_head"] == (10 + 16) / 32 * 16
  assert kernel["flops"] == 2 * 13 * 2 * PER_BLOCK
  dense = splash_costs.kernel_cost("splash_mha_fwd_no_residuals", operands, [], meta, None)
  assert dense["computed_blocks_per_head"] == 16 and not dense["mask_read"]


def test_report_table_shows_kernels_and_their_time():
  """program_extras + _step_time + format_table on the splash program's analysis, as
  compile_report runs them: kernel rows, FLOPs with kernels, the step-time source."""
  cost, analysis = _analysis("splash")
  cost = {k: float(cost[k]) for k in ("flops", "optimal_seconds")}
  report = {"xla_cost_per_chip": dict(cost)}
  kernels = compile_lib.program_extras(report, analysis, V5P_PEAK, V5P_HBM)
  step = compile_lib._step_time(  # pylint: disable=protected-access
      cost, V5P_PEAK, 1e9, 4, True, kernels)
  assert report["xla_cost_per_chip"]["flops_with_kernels"] == cost["flops"] + kernels["flops"]
  assert step["xla_step_seconds"] == cost["optimal_seconds"] < step["step_seconds"]
  report.update(step, config="splash", overrides=[], suggestions=[], fits=True,
                topology=dict(name="v5p-8", topology_name="v5p:2x2x1", num_slices=1, chips=4,
                              device_kind="TPU v5", hbm_bytes=95 * 2 ** 30),
                mesh=dict(data=2, fsdp=1, tensor=2),
                batch=dict(global_batch_size=4, seq_len=T, rows_per_chip=1, accum_steps=1),
                params=dict(total=0, trainable=0), analytic_flops=dict(total=1e9, per_chip=2.5e8),
                compile_seconds=dict(lower=0, compile=0),
                memory_per_chip=dict(total=1, hbm=95 * 2 ** 30, source="memory_analysis"))
  table = compile_lib.format_table(report)
  rows = [l for l in table.splitlines() if l.startswith("kernel ")]
  assert len(rows) == 3 and all("x1:" in r and "10 of 16 blocks" in r for r in rows)
  assert "+ Pallas kernels 1.51e+09" in table and "Pallas kernels: sum of executions" in table
  assert "collectives per chip" in table and "<=" not in table
