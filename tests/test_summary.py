"""Parameter counts from eval_shape (nothing allocated) against the papers' figures."""

import json
import subprocess
import sys

import pytest

from kosmos import configs
from kosmos.model import summary


@pytest.fixture(scope="module")
def kosmos1_counts():
  return summary.count(configs.load("configs/kosmos1.py").model)


def test_kosmos1_is_1_6b_params_within_5_percent(kosmos1_counts):
  counts = kosmos1_counts
  assert abs(counts["total"] - 1.6e9) <= 0.05 * 1.6e9, counts
  # The paper: about 1.3B in the decoder; CLIP ViT-L/14 is 303M.
  assert 1.25e9 <= counts["decoder"] <= 1.40e9, counts
  assert counts["vision"] == 303_179_776, counts
  assert counts["total"] == counts["vision"] + counts["connector"] + counts["decoder"]


def test_kosmos2_matches_the_public_model_size():
  counts = summary.count(configs.load("configs/kosmos2.py").model)
  # microsoft/kosmos-2-patch14-224: 1.66B parameters (its decoder ties the output head).
  assert 1.65e9 <= counts["total"] <= 1.67e9, counts


def test_summary_command_prints_the_breakdown(tmp_path, kosmos1_counts):
  out = tmp_path / "s.json"
  proc = subprocess.run([sys.executable, "-m", "kosmos.model.summary", "--config",
                         "configs/kosmos1.py", "--out", str(out)],
                        capture_output=True, text=True, timeout=300, check=True)
  for part in ("vision", "connector", "decoder", "total", "tokens per image: 64"):
    assert part in proc.stdout
  report = json.loads(out.read_text())
  assert report["params"] == kosmos1_counts


def test_scanned_stacks_count_the_same():
  config = configs.load("configs/kosmos1.py")
  scanned = config.model.copy_and_resolve_references()
  scanned.decoder.scan_layers = scanned.vision.scan_layers = True
  assert summary.count(scanned) == summary.count(config.model)
