"""Trainer behaviour: learning, sharding parity, accumulation, freezing, NaN guard."""

import json
import os

import jax
import numpy as np
import pytest

import tiny
import train_fixture
from kosmos import sharding
from kosmos.train import step as step_lib
from kosmos.train import trainer


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


def test_loss_falls_on_real_records(data_root, tmp_path):
  config = train_fixture.config(data_root, steps=30, log_every=5, checkpoint_every=30)
  result = trainer.train_and_evaluate(config, str(tmp_path))
  losses = result["losses"]
  assert len(losses) == 6
  assert losses[-1] < 0.75 * losses[0], losses
  assert all(b < a for a, b in zip(losses, losses[1:])), losses
  log = [json.loads(l) for l in open(tmp_path / "metrics" / "train_log.jsonl")]
  assert [r["step"] for r in log] == [5, 10, 15, 20, 25, 30]
  assert {"loss/pair", "loss/text", "grad_norm", "lr", "tokens_per_s", "data/pair/records"} <= set(log[0])


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


def test_nan_policy_stop_keeps_last_good_checkpoint(data_root, tmp_path):
  config = train_fixture.config(data_root, steps=8, log_every=1, checkpoint_every=1)
  config.optim.update(peak_lr=1e30, warmup_steps=0, grad_clip=0.0)  # blows up after step 1
  with pytest.raises(trainer.NonFiniteError, match="last good checkpoint is step 1"):
    trainer.train_and_evaluate(config, str(tmp_path))
  from kosmos import workdir
  assert workdir.latest_step(str(tmp_path)) == 1
  # "skip" goes on past bad steps, but a model that stays non-finite stops the run.
  config.train.update(nan_policy="skip", max_consecutive_skips=3)
  with pytest.raises(trainer.NonFiniteError, match="4 consecutive non-finite steps at step 1"):
    trainer.train_and_evaluate(config, str(tmp_path / "skip"))


def test_init_from_loads_matching_paths_only(data_root, tmp_path):
  from kosmos import workdir
  source = train_fixture.config(data_root, steps=2, checkpoint_every=2)
  source.seed = 7
  trainer.train_and_evaluate(source, str(tmp_path / "source"))
  _, saved = workdir.restore_params(str(tmp_path / "source"))
  config = train_fixture.config(data_root, steps=0, init_from=str(tmp_path / "source"),
                                init_patterns=(r"^decoder\.",))
  state = jax.device_get(trainer.train_and_evaluate(config, str(tmp_path / "run"))["state"])
  np.testing.assert_array_equal(state.params["decoder"]["norm"]["scale"],
                                saved["decoder"]["norm"]["scale"])
  np.testing.assert_array_equal(state.params["decoder"]["embed_tokens"]["embedding"],
                                saved["decoder"]["embed_tokens"]["embedding"])
  # Not matched: the vision tower keeps its fresh (seed 0) values.
  assert not np.array_equal(state.params["vision"]["pos_embed"], saved["vision"]["pos_embed"])


def test_resuming_with_a_different_model_fails_clearly(data_root, tmp_path):
  config = train_fixture.config(data_root, steps=2, checkpoint_every=2)
  trainer.train_and_evaluate(config, str(tmp_path))
  config.model.decoder.num_layers = 3
  config.train.steps = 4
  with pytest.raises(ValueError, match=r"model.decoder.num_layers: saved 2, now 3"):
    trainer.train_and_evaluate(config, str(tmp_path))


def test_eval_every_k_steps_writes_results(data_root, tmp_path):
  from test_eval_e2e import _make_coco  # a Karpathy-layout COCO set with JPEGs
  coco = tmp_path / "coco"
  _make_coco(str(coco), np.random.default_rng(0))
  config = train_fixture.config(data_root, steps=4, eval_every=2, checkpoint_every=4)
  config.model.decoder.max_len = 512  # byte-level prompts with demonstrations are long
  config.eval.tasks = ({"task": "coco", "data": str(coco), "shots": (0, 2), "num_queries": 2},)
  trainer.train_and_evaluate(config, str(tmp_path / "run"))
  for step in (2, 4):
    result = json.load(open(tmp_path / "run" / "eval" / str(step) / "coco.json"))
    assert [row["shots"] for row in result["rows"]] == [0, 2]
    assert result["step"] == step and all(np.isfinite(r["mean"]) for r in result["rows"])
