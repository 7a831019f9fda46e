"""kosmos-eval split over 2 processes (launch/local.sh: jax.distributed, gloo, 2 fake CPU
devices each) gives the predictions of 1 process.

The shares are deliberately uneven: 3 VQA queries split 2 / 1 (with RICES demonstrations),
and multiple-choice questions with 2-5 choices, so the processes hold different numbers of
candidate rows and would run different numbers of batches if the Engine did not agree on
them (with fsdp over all devices, a hang in the first collective of the host that runs
more batches)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx

import test_eval_e2e as e2e
import tiny
from kosmos import defaults
from kosmos import workdir as workdir_lib
from kosmos.data import tokenizer as tokenizer_lib
from kosmos.eval import main as eval_main
from kosmos.model import multimodal

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHOICES = [["yes", "no"], ["red", "green", "blue", "cat", "dog"], ["one", "two", "three"],
           ["a", "b", "c", "d"], ["up", "down"]]


def _write_text_mc(root: str) -> None:
  os.makedirs(root)
  for split, count in (("train", 6), ("test", 5)):
    with open(os.path.join(root, f"{split}.jsonl"), "w") as f:
      for i in range(count):
        choices = CHOICES[i % len(CHOICES)]
        f.write(json.dumps({"question": f"which one is number {i}?", "choices": choices,
                            "label": i % len(choices)}) + "\n")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("mp")
  directory = str(root / "wd")
  config = defaults.base()
  config.model = tiny.model_config("magneto", "resampler", "xpos")
  config.model.decoder.update(vocab_size=tokenizer_lib.BYTE_VOCAB_SIZE, max_len=512)
  # Params sharded over every device of both processes: each forward pass needs collectives,
  # so hosts that ran different numbers of batches would wait for each other forever.
  config.mesh.update(data=1, fsdp=-1, tensor=1)
  model = multimodal.Multimodal(config.model, rngs=nnx.Rngs(0))
  workdir_lib.save_config(config, directory)
  workdir_lib.save_params(directory, 3, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  vqa, mc = str(root / "vqa"), str(root / "mc")
  e2e._make_vqav2(vqa, np.random.default_rng(0))  # pylint: disable=protected-access
  _write_text_mc(mc)
  return {"workdir": directory, "vqav2": vqa, "text_mc": mc, "root": root}


RUNS = {"vqav2": ["--shots", "0,2", "--rices", "--vqa-tokens", "4"],
        "text_mc": ["--shots", "0,1", "--trials", "2"]}


def _args(setup, task: str, out: str) -> list[str]:
  return ["--workdir", setup["workdir"], "--task", task, "--data", setup[task], "--out", out,
          "--batch-size", "2", "--no-progress", *RUNS[task]]


def _predictions(out: str) -> dict:
  with open(out) as f:
    result = json.load(f)
  with open(os.path.join(os.path.dirname(out), result["predictions_file"])) as f:
    return result, json.load(f)


@pytest.mark.parametrize("task", sorted(RUNS))
def test_two_processes_give_the_predictions_of_one(setup, task):
  one = str(setup["root"] / f"one_{task}.json")
  assert eval_main.main(_args(setup, task, one)) == 0
  two = str(setup["root"] / f"two_{task}.json")
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
             XLA_FLAGS="--xla_force_host_platform_device_count=2",
             KOSMOS_LOCAL_ENTRY=f"{sys.executable} -m kosmos.eval.main",
             KOSMOS_LOG_DIR=str(setup["root"] / f"logs_{task}"))
  env.pop("KOSMOS_COORDINATOR", None)
  proc = subprocess.run(["bash", os.path.join(REPO, "launch", "local.sh"), "2", "--devices", "2",
                         "--", *_args(setup, task, two)],
                        env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
  logs = "".join(open(os.path.join(env["KOSMOS_LOG_DIR"], f)).read()[-1500:]
                 for f in sorted(os.listdir(env["KOSMOS_LOG_DIR"])))
  assert proc.returncode == 0, proc.stderr[-1500:] + logs
  (r1, p1), (r2, p2) = _predictions(one), _predictions(two)
  assert [r["shots"] for r in r2["rows"]] == [r["shots"] for r in r1["rows"]]
  for shots, trials in p1.items():
    assert len(p2[shots]) == len(trials)
    for mine, theirs in zip(trials, p2[shots]):
      mine, theirs = (sorted(t, key=lambda p: p["id"]) for t in (mine, theirs))
      assert [p["id"] for p in theirs] == [p["id"] for p in mine]  # every query, once
      assert [p["prediction"] for p in theirs] == [p["prediction"] for p in mine]
      for a, b in zip(theirs, mine):
        if "logprobs" in a:
          np.testing.assert_allclose(a["logprobs"], b["logprobs"], atol=1e-4, rtol=1e-5)
  for a, b in zip(r2["rows"], r1["rows"]):
    assert a["values"] == pytest.approx(b["values"], abs=1e-9)
