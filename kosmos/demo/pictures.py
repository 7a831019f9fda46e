"""The demo report's pictures: OUT/examples.png (eval images with the model's outputs at
0 and k shots beside the references) and OUT/shots.png (each task's metric against shots,
real against blank images), from the eval results and predictions `kosmos.demo.runner`
writes to OUT/eval/ (`<run>.json`, `<run>.predictions.json`).
"""

from __future__ import annotations

import json
import os
import textwrap
from typing import Any, Sequence

# Runs shown in examples.png, in row order: (run name, row title).
EXAMPLE_RUNS = (("coco", "captioning"), ("vqav2_colour", "VQA, colour"),
                ("induction", "task induction"))


def pyplot():
  """matplotlib.pyplot on the Agg backend (files only, no display), imported when drawn."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  return plt


def _predictions(eval_dir: str, run: str) -> dict[int, dict[str, dict[str, Any]]]:
  """{shots: {example id: prediction}} of a run's first trial."""
  with open(os.path.join(eval_dir, f"{run}.predictions.json"), encoding="utf-8") as f:
    saved = json.load(f)
  return {int(shots): {p["id"]: p for p in trials[0]} for shots, trials in saved.items()}


def _answer(task: Any, example: Any, prediction: dict[str, Any] | None) -> str:
  """A prediction as text: generated text, or the ranked choice."""
  if prediction is None:
    return "–"
  if "logprobs" in prediction:
    return task.candidates(example)[prediction["prediction"]]
  return prediction["prediction"]


def _reference(example: Any) -> str:
  if example.choices:
    return example.choices[example.label]
  return example.references[0] if example.references else "–"


def examples(out: str, tasks: dict[str, Any], shots: tuple[int, int] = (0, 4),
             per_row: int = 4, path: str | None = None) -> str:
  """OUT/examples.png: for each run of `EXAMPLE_RUNS` present in `tasks` ({run name: its
  loaded kosmos.eval Task}), the first `per_row` queries it answered at both shot counts:
  the query image, the reference, and the outputs at `shots`. Returns the path."""
  plt = pyplot()
  from PIL import Image  # pylint: disable=import-outside-toplevel
  eval_dir = os.path.join(out, "eval")
  rows = []
  for run, title in EXAMPLE_RUNS:
    if run not in tasks:
      continue
    preds = _predictions(eval_dir, run)
    if not all(s in preds for s in shots):
      raise ValueError(f"run {run!r} has shots {sorted(preds)}; examples need {shots}")
    task = tasks[run]
    ids = [i for i in preds[shots[0]] if i in preds[shots[1]]]
    by_id = {e.id: e for e in task.test}
    rows.append((title, task, [(by_id[i], [preds[s][i] for s in shots]) for i in ids[:per_row]]))
  fig, axes = plt.subplots(len(rows), per_row, figsize=(3.2 * per_row, 4.0 * len(rows)),
                           dpi=90, squeeze=False)
  for r, (title, task, items) in enumerate(rows):
    for c in range(per_row):
      ax = axes[r][c]
      ax.axis("off")
      if c >= len(items):
        continue
      example, (first, second) = items[c]
      with Image.open(example.image_paths[0]) as img:
        ax.imshow(img.convert("RGB"), interpolation="nearest")
      asked = example.fields.get("question", "")
      lines = [f"{title}" + (f": {asked}" if asked else ""),
               f"reference: {_reference(example)}",
               f"{shots[0]}-shot: {_answer(task, example, first)}",
               f"{shots[1]}-shot: {_answer(task, example, second)}"]
      ax.set_title("\n".join(textwrap.shorten(line, 44, placeholder="…") for line in lines),
                   fontsize=8, loc="left")
  fig.tight_layout()
  path = path or os.path.join(out, "examples.png")
  fig.savefig(path)
  plt.close(fig)
  return path


def shots_plot(results: dict[str, Any], runs: Sequence[tuple[str, str]], path: str) -> str:
  """OUT/shots.png: one panel per (run name, label) in `runs` that `results` holds: its
  metric (x100) against shots, real images and, when run, blank (gray) images."""
  plt = pyplot()
  present = [(name, label) for name, label in runs if name in results]
  fig, axes = plt.subplots(1, len(present), figsize=(3.3 * len(present), 3.2), dpi=90,
                           squeeze=False)
  for ax, (name, label) in zip(axes[0], present):
    for run, style, what in ((name, "o-", "real"), (name + "_blank", "s--", "blank (gray)")):
      if run in results:
        rows = results[run]["rows"]
        ax.plot([r["shots"] for r in rows], [r["mean"] for r in rows], style, label=what)
    ax.set_title(label, fontsize=9)
    ax.set_xlabel("shots")
    ax.set_xticks(sorted({r["shots"] for r in results[name]["rows"]}))
    ax.set_ylabel(results[name]["metric"] + " x100")
    ax.set_ylim(bottom=0)  # small differences keep their scale (binding is at chance)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
  return path
