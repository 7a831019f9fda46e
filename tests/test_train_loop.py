"""The training loop end to end: learning, NaN policy, init_from, resume checks, eval hook."""

import json

import jax
import numpy as np
import pytest

import train_fixture
from kosmos.train import trainer


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("records"))
  train_fixture.write_records(root)
  return root


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
  config.eval.tasks = ({"task": "coco", "data": str(coco), "shots": (0, 2), "num_queries": 2,
                        "options": {"prompt": "A picture of", "separator": "."}},)
  trainer.train_and_evaluate(config, str(tmp_path / "run"))
  for step in (2, 4):
    result = json.load(open(tmp_path / "run" / "eval" / str(step) / "coco.json"))
    assert [row["shots"] for row in result["rows"]] == [0, 2]
    assert result["template"]["prompt"] == "A picture of"  # the task options reach the runner
    assert result["template"]["separator"] == "."
    assert result["step"] == step and all(np.isfinite(r["mean"]) for r in result["rows"])


def test_resume_does_not_log_a_step_twice(data_root, tmp_path):
  """Steps logged after the checkpoint a run resumes from are logged once, by the resume."""
  import shutil  # pylint: disable=g-import-not-at-top
  from kosmos import workdir  # pylint: disable=g-import-not-at-top
  config = train_fixture.config(data_root, steps=4, log_every=1, checkpoint_every=2)
  trainer.train_and_evaluate(config, str(tmp_path))
  # as if killed after logging step 4 but before its save completed
  shutil.rmtree(f"{workdir.checkpoint_dir(str(tmp_path))}/4")
  trainer.train_and_evaluate(config, str(tmp_path))
  steps = [json.loads(l)["step"] for l in open(tmp_path / "metrics" / "train_log.jsonl")]
  assert steps == [1, 2, 3, 4]

