"""The demo's report: OUT/report.md and OUT/loss.png from the summary `kosmos.demo.run` makes.

The summary holds: timings {stage: s}, losses (mean per `log_every` steps, from
DIR/metrics/train_log.jsonl), results {run: kosmos-eval results without predictions},
export {class, answers, tokens_equal, files}, plan, parameters, world, config.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

CHANCE_BINDING = 50.0
BINDING_BENCH = "python -m kosmos.bench.binding"  # where binding is studied (symbolic keys)


def loss_plot(workdir: str, path: str) -> list[tuple[int, float]]:
  """Training loss against step from DIR/metrics/train_log.jsonl -> PNG; returns the points."""
  from kosmos.demo import pictures  # pylint: disable=import-outside-toplevel
  plt = pictures.pyplot()
  points = []
  with open(os.path.join(workdir, "metrics", "train_log.jsonl"), encoding="utf-8") as f:
    for line in f:
      row = json.loads(line)
      points.append((int(row["step"]), float(row["loss"])))
  fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
  ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3)
  ax.set_xlabel("step")
  ax.set_ylabel("training loss (nats / text token)")
  ax.set_title("configs/demo.py on the shapes world")
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
  return points


def _row(cells: list[str]) -> str:
  return "| " + " | ".join(cells) + " |"


def _means(result: dict[str, Any], key: str = "mean") -> dict[int, float]:
  return {r["shots"]: r[key] for r in result["rows"]}


# (run name, table label): each run also has a "<name>_blank" run with gray images.
RUNS = (("coco", "captioning (CIDEr)"), ("vqav2", "VQA, all questions (accuracy)"),
        ("vqav2_colour", "VQA, colour questions (accuracy)"),
        ("induction", "task induction (accuracy)"), ("refcoco", "referring (acc@IoU0.5)"))
# Runs whose demonstrations come from each episode's own support set (no gray run).
OWN_DEMO_RUNS = (("binding", "fast binding, 2-way (accuracy)"),)


def results_table(results: dict[str, Any]) -> list[str]:
  """Rows: task/metric; columns: shots; trained vs blanked images side by side."""
  shots = sorted({r["shots"] for res in results.values() for r in res["rows"]})
  lines = [_row(["task (metric, x100)", "images"] + [f"{s}-shot" for s in shots]),
           _row(["---"] * (len(shots) + 2))]

  def add(label: str, images: str, values: dict[int, float]) -> None:
    lines.append(_row([label, images] + [f"{values[s]:.1f}" if s in values else "–"
                                         for s in shots]))

  for name, label in RUNS:
    if name in results:
      add(label, "real", _means(results[name]))
      add(label, "blank (gray)", _means(results[name + "_blank"]))
  for name, label in OWN_DEMO_RUNS:
    if name in results:
      add(label, "real", _means(results[name]))
  return lines


def _two_se(p: float, q: float, n: int) -> float:
  """Two standard errors (points) of the difference of two accuracies p, q (x100) on n
  queries each, as if independent."""
  a, b = p / 100, q / 100
  return 200 * math.sqrt((a * (1 - a) + b * (1 - b)) / n)


GROUP_WORDS = ("two", "three")  # a group caption starts with its count: "two large red circles"


def group_captions(out: str) -> dict[int, tuple[int, int]]:
  """{shots: (queries whose canonical reference is a group caption, of them captioned as a
  group)} from OUT/eval/coco.predictions.json (first trial): demonstrations make this
  model describe groups of alike shapes one by one (docs/performance.md, Demo, ninth
  session)."""
  with open(os.path.join(out, "eval", "coco.predictions.json"), encoding="utf-8") as f:
    saved = json.load(f)
  counts = {}
  for shots, trials in saved.items():
    groups = [p for p in trials[0] if p["references"][0].partition(" ")[0] in GROUP_WORDS]
    counts[int(shots)] = (len(groups),
                          sum(p["prediction"].partition(" ")[0] in GROUP_WORDS for p in groups))
  return counts


def evidence(summary: dict[str, Any], out_dir: str | None = None) -> list[str]:
  """The claims of learning, each with its numbers and whether it holds; with `out_dir`
  (the demo's OUT) also why captioning loses with demonstrations, when it does."""
  res, losses = summary["results"], summary["losses"]
  out = []
  drop = losses[0] - losses[-1]
  out.append(f"- **Loss drops**: {losses[0]:.3f} (mean of the first {summary['log_every']} "
              f"steps) -> {losses[-1]:.3f} (last {summary['log_every']}): "
              f"{'yes' if drop > 0 else 'NO'}, by {drop:.3f}.")
  for name, what in (("coco", "Images are used (CIDEr)"),
                     ("vqav2", "Images are used (VQA accuracy)"),
                     ("vqav2_colour", "Colour questions (the answer is only in the pixels)")):
    real, blank = _means(res[name]), _means(res[name + "_blank"])
    gaps = ", ".join(f"{s}-shot {real[s]:.1f} vs {blank[s]:.1f}" for s in sorted(real))
    n = res[name]["rows"][0]["num_queries"]
    out.append(f"- **{what}**: real vs blanked images, {n} queries: {gaps}.")
  captions = _means(res["coco"])
  if out_dir and 0 in captions and 4 in captions and captions[4] < captions[0]:
    groups = ", ".join(f"{s}-shot {k}/{n}" for s, (n, k) in sorted(group_captions(out_dir).items()))
    out.append(f"- **Captioning with demonstrations**: CIDEr {captions[0]:.1f} at 0 shots, "
               f"{captions[4]:.1f} at 4. Measured cause: demonstrations make the model name "
               f"groups of alike shapes one by one (group scenes captioned as a group: "
               f"{groups}); on the seed-0 full run their text, not their images, did it (gray "
               "demonstration images lost as much; docs/performance.md, Demo, ninth session).")
  colour = _means(res["vqav2_colour"])
  if 0 in colour and 4 in colour and colour[4] < colour[0]:
    n = res["vqav2_colour"]["rows"][0]["num_queries"]
    noise = _two_se(colour[4], colour[0], n)
    out.append(f"- **Colour questions with demonstrations**: accuracy {colour[0]:.1f} at 0 shots, "
               f"{colour[4]:.1f} at 4: " + (
                   f"within the noise (2 SE = {noise:.1f} for {n} questions)" if
                   colour[0] - colour[4] <= noise else
                   f"lower beyond the noise (2 SE = {noise:.1f} for {n} questions); cause not "
                   "measured in this run") + ".")
  if "induction" in res:
    ind, gray = _means(res["induction"]), _means(res["induction_blank"])
    n = res["induction"]["rows"][0]["num_queries"]
    top = 4 if 4 in ind else max(ind)  # the comparison: 4 shots against 0
    noise = _two_se(ind[top], ind[0], n)
    diff = ind[top] - ind[0]
    out.append(
        f"- **Task induction** (label type per episode, only shown by the demonstrations; "
        f"{n} episodes): " + ", ".join(f"{s}-shot {ind[s]:.1f}" for s in sorted(ind))
        + " (gray images: " + ", ".join(f"{s}-shot {gray[s]:.1f}" for s in sorted(gray))
        + f"); {top} shots vs 0: {diff:+.1f} points ("
        + ("beyond" if diff > noise else "NOT beyond") + f" 2 SE = {noise:.1f}).")
  bind = _means(res["binding"])
  shots = sorted(bind)
  n = res["binding"]["rows"][0]["num_queries"]
  noise = _two_se(CHANCE_BINDING, CHANCE_BINDING, n)  # of a difference of two accuracies near 50%
  diff = bind[shots[-1]] - bind[shots[0]]
  verdict = (f"{shots[-1]} shots beat 0 shots by {diff:.1f} points (noise: +-{noise:.1f} at 2 SE "
             f"for {n} episodes)" if diff > noise else
             f"NOT learned: {shots[-1]} shots vs 0 shots differ by {diff:+.1f} points, within "
             f"noise (+-{noise:.1f} at 2 SE for {n} episodes); in-context binding does not "
             "emerge in this training budget (why: docs/performance.md, Demo; the copy "
             f"circuit itself is studied with `{BINDING_BENCH}`)")
  out.append(f"- **Fast binding** (nonce words bound to object kinds afresh per episode, chance {CHANCE_BINDING:.0f}%): "
             + ", ".join(f"{s}-shot {bind[s]:.1f}" for s in shots) + f"; {verdict}.")
  if "refcoco" in res:
    out.append(grounding_evidence(res["refcoco"], res["refcoco_blank"]))
  return out


def grounding_evidence(real: dict[str, Any], blank: dict[str, Any]) -> str:
  """The referring line: real vs gray accuracy and whether the gap exceeds 2 SE."""
  r, b = _means(real), _means(blank)
  n = real["rows"][0]["num_queries"]
  shots = sorted(r)
  gaps = ", ".join(f"{s}-shot {r[s]:.1f} vs {b[s]:.1f}" for s in shots)
  p = (r[shots[0]] + b[shots[0]]) / 200  # 2 SE of a difference of two accuracies near p
  noise = 2 * math.sqrt(2 * max(p * (1 - p), 0.01) / n) * 100
  held = all(r[s] - b[s] > noise for s in shots)
  return (f"- **Grounding** (the box of \"the small red circle\" among 1-3 shapes, accuracy at "
          f"IoU >= 0.5): real vs gray images, {n} expressions: {gaps}; "
          + (f"the images locate the objects (gaps above the noise, +-{noise:.1f} at 2 SE)"
             if held else f"NOT shown: gaps within the noise (+-{noise:.1f} at 2 SE)")
          + ". True (solid) vs predicted (dashed) boxes: boxes.png.")


def boxes_figure(out: str) -> str:
  """OUT/boxes.png from the referring run with real images (OUT/eval/refcoco.predictions.json
  at its fewest shots); returns its name relative to OUT."""
  from kosmos.demo import grounding  # pylint: disable=import-outside-toplevel
  with open(os.path.join(out, "eval", "refcoco.predictions.json"), encoding="utf-8") as f:
    predictions = json.load(f)
  first = predictions[min(predictions, key=int)][0]  # fewest shots, first trial
  grounding.boxes_picture(os.path.join(out, "data", "eval", "refexp"), first,
                          os.path.join(out, "boxes.png"))
  return "boxes.png"


def write(out: str, summary: dict[str, Any]) -> str:
  """Writes OUT/loss.png, OUT/boxes.png (with referring runs) and OUT/report.md; returns the
  report's path."""
  workdir = os.path.join(out, "workdir")
  loss_plot(workdir, os.path.join(out, "loss.png"))
  boxes = boxes_figure(out) if "refcoco" in summary["results"] else None
  t, ex, plan = summary["timings"], summary["export"], summary["plan"]
  counts, config = summary["parameters"], summary["config"]
  d, v, c = (config["model"][k] for k in ("decoder", "vision", "connector"))
  lines = [
      "# kosmos demo report", "",
      f"Whole stack on this machine in **{t['total']:.0f} s** (prepare {t['prepare']:.0f} s, "
      f"train {t['train']:.0f} s, eval {t['eval']:.0f} s, export {t['export']:.0f} s); "
      f"{'short' if plan['steps'] < 500 else 'full'} plan: {json.dumps(plan)}.", "",
      "## Evidence of learning", "", *evidence(summary, out), "",
      "## Training", "",
      f"`configs/demo.py`: {counts['total'] / 1e6:.2f}M parameters — CLIP ViT {v['image_size']} px, "
      f"patch {v['patch_size']}, width {v['width']}, {v['depth']} blocks; attention_pool connector, "
      f"{c['num_tokens']} tokens per image; magneto decoder {d['num_layers']} layers, d "
      f"{d['d_model']}, sinusoidal positions (offset {d['position_offset']}), vocab "
      f"{d['vocab_size']} (BPE SentencePiece trained on the world's text).",
      f"{summary['plan']['steps']} steps of {config['data']['global_batch_size']} rows x "
      f"{config['data']['seq_len']} tokens; sources (token share): "
      + ", ".join(f"{k} {s['weight']}" for k, s in config["data"]["sources"].items())
      + f"; records in the world: {json.dumps({k: v['records'] for k, v in summary['world'].items()})}.",
      "", "![training loss](loss.png)", "",
      "## Few-shot results (kosmos-eval)", "",
      "![metric against shots, real and gray images](shots.png)", "",
      "![eval images with the model's outputs at 0 and 4 shots](examples.png)", "",
      "Blank = the same model and prompts with every image (demonstrations' and query's) "
      "replaced by uniform gray (`kosmos-eval --blank-images`). 0-shot is the query alone "
      "(`--no-text-only-demos`: no text-only demonstrations, unlike Flamingo's protocol; "
      "for induction they would name the label type). Binding k-shot shows k images per nonce "
      "word, induction k-shot k labelled images, from the episode's own support set.", "",
      *results_table(summary["results"]), "",
      *([f"![true vs predicted boxes, referring expressions, real images]({boxes})", ""]
        if boxes else []),
      "Prompts: the world's own formats — captioning `[image]` -> `{caption}.`; VQA "
      "`[image]Question: {question} Answer: {answer}.`; binding `[image]{word}.`, "
      "induction `[image]{label}.` "
      "(kosmos-eval `--task-option prompt=/target=/separator=`). Commands:", "",
      "```", *[r["command"] for r in summary["results"].values()], "```", "",
      "## Export", "",
      f"`kosmos-export --workdir {workdir} --format hf --out {os.path.join(out, 'hf')}` wrote "
      f"{', '.join(ex['files'])}. transformers `{ex['class']}.from_pretrained` loads it "
      f"({ex['parameters']:,} parameters). Greedy answer to \"{ex['question']}\" on a held-out "
      f"image: JAX `{ex['jax_answer']}`, transformers `{ex['hf_answer']}` — generated token ids "
      f"{'identical' if ex['tokens_equal'] else 'DIFFERENT'} ({ex['jax_tokens']} vs {ex['hf_tokens']}).",
      "",
  ]
  path = os.path.join(out, "report.md")
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(lines))
  return path
