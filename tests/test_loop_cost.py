"""XLA's cost of loops per iteration (kosmos.train.loop_cost), on a tiny step compiled for
TPU v5p chips described by libtpu (no TPU needed)."""

import pytest

import train_fixture
from kosmos.train import compile as compile_lib  # sets the libtpu environment first
from kosmos import sharding  # pylint: disable=g-bad-import-order
from kosmos.train import loop_cost
from kosmos.train import step as step_lib

import jax  # pylint: disable=g-bad-import-order


@pytest.mark.parametrize("length,unroll,bodies", [
    (24, 1, 1), (24, 2, 2), (23, 2, 3), (2, 2, 2), (1, 2, 1), (8, 4, 4), (9, 4, 5), (3, 4, 3)])
def test_counted_bodies_follow_jax_scan_lowering(length, unroll, bodies):
  assert loop_cost.counted_bodies(length, unroll) == bodies


@pytest.fixture(scope="module")
def step():
  try:
    devices = compile_lib.topology_devices(compile_lib.parse_topology("v5p-8"))
  except Exception as e:  # pylint: disable=broad-except
    pytest.skip(f"libtpu cannot describe TPU chips here: {e}")
  config = train_fixture.config("/unused")
  config.model.decoder.update(num_layers=8, scan_layers=True)
  config.model.vision.update(depth=5, scan_layers=True)
  config.optim.update(frozen=(r"^vision\.(?!blocks\.4\.|post_norm)",), accum_steps=2,
                      loss_chunk=config.data.seq_len // 4)
  config.data.global_batch_size = 16
  mesh = sharding.make_mesh(config.mesh, devices)
  run = step_lib.setup(config, mesh)
  batch = compile_lib.abstract_batch(config)
  shardings = step_lib.batch_shardings(mesh, batch)
  batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=shardings[k]) for k, v in batch.items()}

  def compiled(r):
    return step_lib.jit_train_step(config, r, mesh, batch).lower(r.abstract_state, batch).compile()

  def cost(r):
    return compile_lib._cost(compiled(r))  # pylint: disable=protected-access

  return config, run, cost, compiled


@pytest.mark.slow  # ~200 s on 2 cores: six compiles, two with every model loop unrolled
def test_loops_are_found_and_counted_per_iteration(step):
  config, run, cost, compiled = step
  found = loop_cost.loops(config, run)
  assert [(l.name, l.iterations) for l in found] == [
      ("decoder.blocks[trained]", 8), ("vision.blocks[frozen]", 4), ("loss_chunks", 4),
      ("micro_batches", 2)]
  base = cost(run)
  result = loop_cost.cost_with_loops(config, run, cost, base)
  # Ground truth for the FLOPs: every loop fully unrolled (XLA then counts every body).
  full = run
  for loop in found:
    full = loop_cost.unrolled(full, loop, unroll=loop.iterations)
  truth = cost(full)
  assert result["flops"] == pytest.approx(truth["flops"], rel=0.01)
  assert result["flops"] > 5 * base["flops"]  # XLA alone counted each body once
  # The recount from the HLO (kosmos-compile's default), without any variant compile. It
  # counts the program that runs, and the scanned decoder's program is not the unrolled one:
  # unrolling the decoder by 2 alone adds 2.7 % of the FLOPs here (measured; 0.1 % on
  # kosmos1 at full scale), so against the fully unrolled program only within 6 %, and
  # exactly when only the micro-batch loop is left to recount.
  recount = loop_cost.from_hlo(compiled(run).as_text(), base)
  assert recount["flops"] == pytest.approx(truth["flops"], rel=0.06)
  inner = run
  for loop in found:
    inner = loop_cost.unrolled(inner, loop, unroll=loop.iterations) if loop.path else inner
  program = compiled(inner)
  micro = loop_cost.from_hlo(program.as_text(), compile_lib._cost(program))  # pylint: disable=protected-access
  assert micro["flops"] == pytest.approx(truth["flops"], rel=0.01)  # measured 0.3 %
  assert [(l["trips"], l["executions"]) for l in micro["loops"]] == [(2, 2)]
  # The linear model predicts another unrolling of the same loop: decoder by 4 (4 bodies).
  # FLOPs closely; bytes and XLA's seconds move with fusion across the unrolled bodies
  # (on this tiny model: bytes 21 % under, docs/performance.md), so only within 30 %.
  by4 = cost(loop_cost.unrolled(run, found[0], unroll=4))
  body = result["per_iteration"]["decoder.blocks[trained]"]
  predict = lambda key: base[key] + 3 * body[key]
  assert predict("flops") == pytest.approx(by4["flops"], rel=0.03)  # measured 1.9 %
  for key in ("bytes_accessed", "optimal_seconds"):
    assert predict(key) == pytest.approx(by4[key], rel=0.3), (key, predict(key), by4[key])


def test_auto_attention_compiles_splash_for_tpu_and_counts_its_kernels():
  config = train_fixture.config("/unused")
  config.model.decoder.update(attention="auto", scan_layers=True, num_layers=3)
  try:
    report = compile_lib.compile_report(config, "v5p-8")
  except RuntimeError as e:  # pragma: no cover - libtpu absent
    pytest.skip(f"libtpu cannot compile here: {e}")
  names = {k["name"] for k in report["kernels"]["per_kernel"]}
  assert any(n.startswith("splash_mha_fwd") for n in names), names
  assert all(k["executions"] % 3 == 0 for k in report["kernels"]["per_kernel"])  # x3 layers
  cost = report["xla_cost_per_chip"]  # the decoder's loop recounted from the HLO
  assert not report["mfu_is_upper_bound"], report["mfu_reason"]
  assert cost["flops"] > 1.5 * cost["counted_once"]["flops"]  # measured 1.68x
  assert 3 in [loop["trips"] for loop in cost["loops"]]


def test_a_cost_model_that_counts_less_than_the_model_flops_gives_an_upper_bound():
  """The analytic FLOPs are a floor on a chip's work: fewer counted means missed work."""
  step_time = compile_lib._step_time  # pylint: disable=protected-access
  kernels = {"seconds": 0.1, "uncounted": [], "flops": 1e12, "unknown_trip_counts": []}
  ok = step_time({"optimal_seconds": 1.0, "flops": 9e12}, 1e14, 8 * 1e13, 8, True, kernels)
  assert not ok["mfu_is_upper_bound"] and ok["mfu"] == pytest.approx(1e13 / (1.1 * 1e14))
  short = step_time({"optimal_seconds": 1.0, "flops": 2e12}, 1e14, 8 * 1e13, 8, True, kernels)
  assert short["mfu_is_upper_bound"] and short["counted_flops_vs_model"] == pytest.approx(0.3)
  assert "0.30x the model's 1e+13" in short["mfu_reason"]


def test_figures_xla_does_not_give_are_not_extrapolated():
  loops = [loop_cost.Loop("decoder.blocks[trained]", 24, ("decoder", "blocks"), 1)]
  base = {"flops": 10.0, "optimal_seconds": -1.0}
  variant = {"flops": 12.0, "optimal_seconds": -1.0}
  out = loop_cost.corrected(base, {"decoder.blocks[trained]": variant}, loops)
  assert out["flops"] == 10.0 + 23 * 2.0 and "optimal_seconds" not in out


def test_xla_options_reach_the_compile_and_tpu_ones_stay_on_tpu():
  config = train_fixture.config("/unused")
  config.train.xla_options = ("xla_tpu_enable_windowed_einsum_for_all_gather=false, "
                              "xla_cpu_enable_fast_math=false")
  cpu = sharding.make_mesh(config.mesh, jax.devices("cpu")[:1])
  assert step_lib.compiler_options(config, cpu) == {"xla_cpu_enable_fast_math": "false"}
  try:
    tpu = sharding.make_mesh(config.mesh, compile_lib.topology_devices(
        compile_lib.parse_topology("v5p-8")))
  except Exception as e:  # pylint: disable=broad-except
    pytest.skip(f"libtpu cannot describe TPU chips here: {e}")
  assert step_lib.compiler_options(config, tpu)[
      "xla_tpu_enable_windowed_einsum_for_all_gather"] == "false"
  config.train.xla_options = "xla_tpu_enable_windowed_einsum_for_all_gather"
  with pytest.raises(ValueError, match="expected name=value"):
    step_lib.compiler_options(config, tpu)
