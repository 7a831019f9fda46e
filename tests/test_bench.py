"""Benchmarks write what they measured: the train step and generation on a tiny config."""

import json
import os

import numpy as np
import pytest

from kosmos.bench import generate as generate_bench
from kosmos.bench import train_step as train_bench
from kosmos.model import multimodal, summary
from kosmos.train import flops

CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny_train_config.py")


def test_train_step_batch_uses_every_image_slot():
  from kosmos import configs  # pylint: disable=g-import-not-at-top
  config = configs.load(f"{CONFIG}:/unused")
  batch = train_bench.make_batch(config)
  b, seq = config.data.global_batch_size, config.data.seq_len
  n, m = multimodal.tokens_per_image(config.model), config.data.max_images_per_row
  assert batch["tokens"].shape == (b, seq) and batch["images"].shape[:2] == (b, m)
  slots = batch["tokens"] == config.tokenizer.image_slot_id
  assert (slots.sum(axis=1) == m * n).all() and batch["image_mask"].all()
  assert not batch["loss_mask"][slots].any()  # no loss on or into image slots
  assert batch["loss_mask"].sum() > 0.5 * b * seq - b * m * (n + 2)
  with pytest.raises(ValueError, match="do not fit"):
    config.data.max_images_per_row = seq
    train_bench.make_batch(config)


def test_train_step_benchmark_json(tmp_path, capsys):
  out = str(tmp_path / "train.json")
  argv = ["--config", f"{CONFIG}:/unused", "--config.data.global_batch_size=16",
          "--steps", "3", "--out", out]
  assert train_bench.main(argv) == 0
  with open(out) as f:
    result = json.load(f)
  from kosmos import configs  # pylint: disable=g-import-not-at-top
  config = configs.load(f"{CONFIG}:/unused")
  config.data.global_batch_size = 16
  assert result["command"] == "python -m kosmos.bench.train_step " + " ".join(argv)
  assert result["global_batch_size"] == 16 and result["steps"] == 3 == len(result["step_s_all"])
  assert result["step_s"] == pytest.approx(float(np.median(result["step_s_all"])))
  assert result["tokens_per_s"] == pytest.approx(16 * config.data.seq_len / result["step_s"])
  assert result["images_per_s"] == pytest.approx(
      16 * config.data.max_images_per_row / result["step_s"])
  assert result["params"] == summary.count(config.model)["total"]
  assert result["analytic_flops"]["total"] == pytest.approx(flops.step_flops(config)["total"])
  assert result["mfu"] is None  # CPU: no known peak
  assert all(np.isfinite(result["losses"])) and result["losses"][-1] < result["losses"][0]
  with pytest.raises(SystemExit) as exit_info:
    train_bench.main(["--config", f"{CONFIG}:/unused", "--config.data.global_batch=4",
                      "--out", out])
  assert exit_info.value.code == 2 and "no field 'global_batch'" in capsys.readouterr().err


def test_generate_benchmark_json(tmp_path):
  out = str(tmp_path / "gen.json")
  argv = ["--config", f"{CONFIG}:/unused", "--batch-sizes", "2", "--prompt-len", "24",
          "--new-tokens", "4", "--repeats", "1", "--images", "1", "--out", out]
  assert generate_bench.main(argv) == 0
  with open(out) as f:
    result = json.load(f)
  assert result["command"].endswith(" ".join(argv)) and result["benchmark"] == "generate"
  assert [r["batch_size"] for r in result["results"]] == [2]
  for row in result["results"]:
    assert row["prefill_tokens_per_s"] == pytest.approx(row["batch_size"] * 24 / row["prefill_s"])
    assert row["decode_ms_per_step"] == pytest.approx(
        1e3 * max(row["total_s"] - row["one_token_s"], 1e-9) / 3)
