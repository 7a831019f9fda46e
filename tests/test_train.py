"""The train step: sharding parity, accumulation, freezing, the non-finite guard."""

import jax
import numpy as np
import pytest

import tiny
import train_fixture
from kosmos import sharding
from kosmos.train import step as step_lib


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("records"))
  train_fixture.write_records(root)
  return root


def _batch(config, seed=0):
  b = tiny.batch(config.model, b=8, l=32, seed=seed)
  b["targets"] = np.roll(b["tokens"], -1, axis=1)
  b["loss_mask"] = (b["targets"] >= 8).astype(np.float32)
  b["kind_ids"] = np.full(b["tokens"].shape, 2, np.int8)
  return b


def _run_steps(config, mesh, batches):
  run = step_lib.setup(config, mesh)
  state = step_lib.init_state(config, run)
  shapes = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batches[0].items()}
  train_step = step_lib.jit_train_step(config, run, mesh, shapes)
  metrics = []
  for b in batches:
    state, m = train_step(state, b)
    metrics.append(jax.device_get(m))
  return jax.device_get(state), metrics


def test_sharded_step_equals_single_device(data_root):
  config = train_fixture.config(data_root)
  # Adam's first steps are ~lr * sign(g): for near-zero gradients a rounding difference
  # flips the sign. A larger eps keeps the update continuous in g, so params compare tightly.
  config.optim.eps = 1e-2
  batches = [_batch(config, seed=1)]
  single = sharding.make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
  mesh = sharding.make_mesh(dict(data=2, fsdp=2, tensor=2))
  s1, m1 = _run_steps(config, single, batches)
  s8, m8 = _run_steps(config, mesh, batches)
  for key in ("loss", "grad_norm"):
    np.testing.assert_allclose(m8[0][key], m1[0][key], rtol=1e-5)
  # Updates are ~1e-3 (lr); differences are fp32 reduction order (< 0.2% of an update).
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-6), s8.params, s1.params)


def test_gradient_accumulation_equals_full_batch(data_root):
  config = train_fixture.config(data_root)
  config.optim.eps = 1e-2  # see test_sharded_step_equals_single_device
  batches = [_batch(config, seed=s) for s in range(2)]
  mesh = sharding.make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
  full, m_full = _run_steps(config, mesh, batches)
  config.optim.accum_steps = 4
  accum, m_accum = _run_steps(config, mesh, batches)
  np.testing.assert_allclose([m["loss"] for m in m_accum], [m["loss"] for m in m_full], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), accum.params, full.params)


def test_frozen_params_stay_bit_identical(data_root):
  config = train_fixture.config(data_root)
  config.optim.frozen = (r"^vision\.", r"^decoder\.blocks\.0\.")
  mesh = sharding.make_mesh(dict(data=2, fsdp=2, tensor=2))
  run = step_lib.setup(config, mesh)
  before = jax.device_get(step_lib.init_state(config, run))
  assert "vision" not in before.params and "vision" in before.frozen
  assert 0 in before.frozen["decoder"]["blocks"] and 0 not in before.params["decoder"]["blocks"]
  after, _ = _run_steps(config, mesh, [_batch(config, s) for s in range(3)])
  jax.tree.map(np.testing.assert_array_equal, after.frozen, before.frozen)
  changed = jax.tree.map(lambda a, b: bool(np.any(a != b)), after.params, before.params)
  assert all(jax.tree.leaves(changed["connector"]))
  # No optimizer state for frozen parameters.
  mu = after.opt_state[1][0].mu
  assert "vision" not in mu


def test_non_finite_step_leaves_state_unchanged(data_root):
  config = train_fixture.config(data_root)
  mesh = sharding.make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
  good = _batch(config)
  bad = dict(good, loss_mask=good["loss_mask"] * np.float32(np.nan))
  state, metrics = _run_steps(config, mesh, [good, bad])
  assert metrics[0]["finite"] == 1 and metrics[1]["finite"] == 0
  once, _ = _run_steps(config, mesh, [good])
  jax.tree.map(np.testing.assert_array_equal, state.params, once.params)
  assert int(state.step) == 1
