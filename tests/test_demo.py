"""`make demo` end to end: prepare -> train -> few-shot eval -> HF export -> report.

The short plan (`python -m kosmos.demo --short`, < 3 minutes on 2 cores) runs in the default
tests and asserts that the model learns, with margins measured over repeated runs
(docs/performance.md, "Demo"): the loss drops, VQA colour questions are answered far
better with the real images than with gray ones, and fast binding at 4 shots beats
0 shots. The full plan (what `make demo` runs) is marked slow.
"""

from __future__ import annotations

import json
import os

import pytest

from kosmos import demo


def _check_outputs(out: str, summary: dict) -> None:
  report = open(os.path.join(out, "report.md"), encoding="utf-8").read()
  assert "![training loss](loss.png)" in report
  with open(os.path.join(out, "loss.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  for name in ("coco", "coco_blank", "vqav2", "vqav2_blank", "binding"):
    with open(os.path.join(out, "eval", f"{name}.json")) as f:
      saved = json.load(f)
    assert saved["rows"] == summary["results"][name]["rows"]
    assert saved["blank_images"] == name.endswith("_blank")
  export = summary["export"]
  assert export["class"] == "Kosmos2ForConditionalGeneration"
  assert export["tokens_equal"], (export["jax_tokens"], export["hf_tokens"])
  assert {"config.json", "model.safetensors", "tokenizer_config.json"} <= set(export["files"])


def _check_learning(summary: dict, *, vqa_margin: float, binding_margin: float) -> None:
  losses = summary["losses"]
  assert losses[-1] < 0.5 * losses[0], losses
  results = summary["results"]
  real = {r["shots"]: r["colour_accuracy"] for r in results["vqav2"]["rows"]}
  blank = {r["shots"]: r["colour_accuracy"] for r in results["vqav2_blank"]["rows"]}
  for shots in real:
    assert real[shots] > blank[shots] + vqa_margin, (shots, real, blank)
  binding = {r["shots"]: r["mean"] for r in results["binding"]["rows"]}
  assert binding[4] > binding[0] + binding_margin, binding
  assert 30.0 <= binding[0] <= 70.0, binding  # 0 shots: no information about the words


def test_demo_short(tmp_path):
  out = str(tmp_path / "demo")
  summary = demo.run(out, demo.SHORT)
  _check_outputs(out, summary)
  _check_learning(summary, vqa_margin=15.0, binding_margin=8.0)
  assert summary["timings"]["total"] < 180 * 1.5  # the short plan's budget, with slack for load


@pytest.mark.slow
def test_demo_full(tmp_path):
  out = str(tmp_path / "demo")
  summary = demo.run(out, demo.FULL)
  _check_outputs(out, summary)
  _check_learning(summary, vqa_margin=20.0, binding_margin=10.0)
  captions = {r["shots"]: r["mean"] for r in summary["results"]["coco"]["rows"]}
  blank = {r["shots"]: r["mean"] for r in summary["results"]["coco_blank"]["rows"]}
  assert captions[4] > blank[4] + 10.0, (captions, blank)
