"""Fault tolerance through the real CLI: kill -9 and resume, SIGTERM, half-written saves,
and a 2-process run equal to one process with the same global batch."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import train_fixture
from kosmos import workdir as workdir_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "tests", "tiny_train_config.py")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("records"))
  train_fixture.write_records(root)
  return root


def _env(devices: int = 4) -> dict[str, str]:
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  env.pop("KOSMOS_COORDINATOR", None)
  return env


def _cmd(data_root, workdir, *overrides):
  return [sys.executable, "-m", "kosmos.train.main", f"--config={CONFIG}:{data_root}",
          f"--workdir={workdir}", *overrides]


def _train(data_root, workdir, *overrides, devices=4):
  proc = subprocess.run(_cmd(data_root, workdir, *overrides), env=_env(devices), cwd=REPO,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


def _log(workdir) -> dict[int, float]:
  """step -> loss from train_log.jsonl; each step once (a resumed run drops the lines it
  logged past the checkpoint it restarts from)."""
  out: dict[int, float] = {}
  with open(os.path.join(workdir, "metrics", "train_log.jsonl")) as f:
    for line in f:
      record = json.loads(line)
      assert record["step"] not in out, f"step {record['step']} logged twice"
      out[record["step"]] = record["loss"]
  return out


def _params(workdir):
  step, params = workdir_lib.restore_params(workdir)
  return step, jax.device_get(params)


def _wait_for(predicate, proc, timeout=300):
  end = time.time() + timeout
  while time.time() < end:
    if predicate():
      return
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    time.sleep(0.2)
  raise TimeoutError("condition not reached")


def _complete_steps(workdir) -> list[int]:
  path = workdir_lib.checkpoint_dir(workdir)
  return sorted(int(d) for d in os.listdir(path) if d.isdigit()) if os.path.isdir(path) else []


@pytest.fixture(scope="module")
def reference(data_root, tmp_path_factory):
  """An uninterrupted 12-step run: checkpoints every 2 steps."""
  workdir = str(tmp_path_factory.mktemp("reference"))
  _train(data_root, workdir, "--config.train.checkpoint_every=2")
  return workdir


def test_kill_9_then_resume_is_bit_exact(data_root, reference, tmp_path):
  workdir = str(tmp_path / "killed")
  proc = subprocess.Popen(_cmd(data_root, workdir, "--config.train.checkpoint_every=2"),
                          env=_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)
  _wait_for(lambda: _complete_steps(workdir), proc)
  time.sleep(random.Random(os.getpid()).uniform(0.0, 1.5))  # a random later moment
  proc.send_signal(signal.SIGKILL)
  proc.communicate()
  killed_at = _complete_steps(workdir)[-1]
  assert killed_at < 12, "the run finished before the kill; nothing was tested"
  _train(data_root, workdir, "--config.train.checkpoint_every=2")
  ref_step, ref_params = _params(reference)
  step, params = _params(workdir)
  assert step == ref_step == 12
  jax.tree.map(np.testing.assert_array_equal, params, ref_params)
  ref_log, log = _log(reference), _log(workdir)
  assert sorted(log) == sorted(ref_log) == [2, 4, 6, 8, 10, 12]
  assert log == ref_log  # bit-identical losses, before and after the resume


def test_sigterm_saves_a_checkpoint_and_exits_0(data_root, tmp_path):
  workdir = str(tmp_path / "term")
  proc = subprocess.Popen(
      _cmd(data_root, workdir, "--config.train.steps=100000", "--config.train.checkpoint_every=100000",
           "--config.train.log_every=1"),
      env=_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  log = os.path.join(workdir, "metrics", "train_log.jsonl")
  _wait_for(lambda: os.path.exists(log) and len(open(log).readlines()) >= 2, proc)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-3000:]
  steps = _complete_steps(workdir)
  assert len(steps) == 1 and 2 <= steps[0] < 100000
  assert max(_log(workdir)) == steps[0]  # saved at the step the processes agreed on


def test_sigterm_before_the_first_step_exits_0_without_a_checkpoint(data_root, tmp_path):
  """A pre-emption notice during set-up (init, compile, first batch) is a clean exit."""
  workdir = str(tmp_path / "early")
  proc = subprocess.Popen(_cmd(data_root, workdir), env=_env(), cwd=REPO,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  _wait_for(lambda: os.path.exists(os.path.join(workdir, "config.json")), proc)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-3000:]
  assert "Traceback" not in err
  assert _complete_steps(workdir) == []


def test_half_written_save_resumes_from_the_previous_checkpoint(data_root, reference, tmp_path):
  workdir = str(tmp_path / "partial")
  shutil.copytree(reference, workdir)
  ckpt = workdir_lib.checkpoint_dir(workdir)
  for step in (10, 12):
    shutil.rmtree(os.path.join(ckpt, str(step)))
  # Step 10's save died half-way: its temporary directory holds only some items.
  partial = os.path.join(ckpt, "10.orbax-checkpoint-tmp")
  shutil.copytree(os.path.join(ckpt, "8"), partial)
  shutil.rmtree(os.path.join(partial, "params"))
  _train(data_root, workdir, "--config.train.checkpoint_every=2")
  assert _complete_steps(workdir)[-1] == 12
  jax.tree.map(np.testing.assert_array_equal, _params(workdir)[1], _params(reference)[1])


@pytest.mark.slow  # ~2 min: three processes start jax and compile; `make test-all`
def test_two_processes_equal_one_with_the_same_global_batch(data_root, tmp_path):
  one = str(tmp_path / "one")
  _train(data_root, one, "--config.train.steps=6", "--config.data.num_shards=2", devices=4)
  two = str(tmp_path / "two")
  proc = subprocess.run(
      ["bash", os.path.join(REPO, "launch", "local.sh"), "2", "--devices", "2", "--",
       f"--config={CONFIG}:{data_root}", f"--workdir={two}", "--config.train.steps=6",
       "--config.data.num_shards=2"],
      env=dict(_env(2), KOSMOS_LOCAL_ENTRY=f"{sys.executable} -m kosmos.train.main"), cwd=REPO,
      capture_output=True, text=True, timeout=600)
  logs = "".join(open(os.path.join(two, "logs", f)).read()[-2000:]
                 for f in sorted(os.listdir(os.path.join(two, "logs"))))
  assert proc.returncode == 0, proc.stderr[-2000:] + logs
  one_log, two_log = _log(one), _log(two)
  assert sorted(one_log) == sorted(two_log) == [2, 4, 6]
  np.testing.assert_allclose([two_log[s] for s in (2, 4, 6)], [one_log[s] for s in (2, 4, 6)],
                             rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-6),
               _params(two)[1], _params(one)[1])


@pytest.mark.slow  # prepares a small shapes world and a tokenizer, then 3 processes train
def test_local_sh_2_trains_the_demo_config_like_one_process(tmp_path):
  from kosmos.demo import runner as demo  # pylint: disable=import-outside-toplevel
  data = str(tmp_path / "data")
  plan = demo.Plan(pairs=400, pages=150, texts=60, steps=4, coco_queries=1, vqa_queries=1,
                   binding_episodes=4)
  demo.prepare(data, plan, demo.Narrator())
  common = [f"--config=configs/demo.py:{data}", "--config.train.steps=4",
            "--config.train.log_every=2", "--config.data.num_shards=2",
            "--config.data.global_batch_size=8"]
  one = str(tmp_path / "one")
  proc = subprocess.run([sys.executable, "-m", "kosmos.train.main", *common, f"--workdir={one}"],
                        env=_env(4), cwd=REPO, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  two = str(tmp_path / "two")
  proc = subprocess.run(
      ["bash", os.path.join(REPO, "launch", "local.sh"), "2", "--devices", "2", "--",
       *common, f"--workdir={two}"],
      env=dict(_env(2), KOSMOS_LOCAL_ENTRY=f"{sys.executable} -m kosmos.train.main"), cwd=REPO,
      capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  one_log, two_log = _log(one), _log(two)
  assert sorted(one_log) == sorted(two_log) == [2, 4]
  np.testing.assert_allclose([two_log[s] for s in (2, 4)], [one_log[s] for s in (2, 4)], rtol=1e-5)
