"""Few-shot metrics: CIDEr, VQA accuracy, ROC AUC, accuracy, POPE; answer post-processing.

Every metric takes predictions + references and returns one float on the metric's raw
scale (CIDEr as pycocoevalcap computes it, about 0..10; the others in [0, 1]);
`score(metric, ...)` returns the number papers report (x100), and `mean_std` summarizes
trials as OpenFlamingo does (nanmean, population nanstd).

Post-processing (the kosmos protocol) follows OpenFlamingo's eval: captions are cut at the
first newline or "Output"/"Question" marker and lose double quotes; VQA answers are cut at the first
"Question"/"Answer"/"Short" marker, newline, or ", " (the first short answer), and lose
trailing periods and whitespace: the official VQA script compares the raw prediction when
all references agree, so "red." would score 0 against ten "red".
`postprocess_caption_openflamingo` / `postprocess_vqa_openflamingo` are OpenFlamingo's own
(captions: cut at "Output", no quotes; VQA: `postprocess_vqa_generation`, markers then
", "; nothing stripped -- its metric normalizes every answer).
"""

from __future__ import annotations

import math
import re
from typing import Callable, Mapping, Sequence

import numpy as np

from kosmos.data import grounding
from kosmos.eval import ptb_tokenizer
from kosmos.eval import vqa_normalize

CIDER, VQA_ACCURACY, ROC_AUC, ACCURACY = "cider", "vqa_accuracy", "roc_auc", "accuracy"
BOX_ACCURACY = "box_accuracy"
POPE_F1 = "pope_f1"
METRICS = (CIDER, VQA_ACCURACY, ROC_AUC, ACCURACY, POPE_F1, BOX_ACCURACY)
# Flickr30k Entities' two protocols for a phrase with several boxes (MDETR's flickr_eval.py):
# a hit when the prediction matches any of them, or the box enclosing them all.
ANY_BOX, MERGED_BOX = "any_box", "merged_box"

_CAPTION_CUT = re.compile(r"\n|Output|Question")
_VQA_CUT = re.compile(r"Question|Answer|Short|\n")
_OF_VQA_CUT = re.compile(r"Question|Answer|Short")
_TRAILING = re.compile(r"[\s.]+$")


def postprocess_caption(text: str) -> str:
  """A generated continuation -> the caption: cut at the first "\\n"/"Output"/"Question",
  drop double quotes, strip."""
  return _CAPTION_CUT.split(text, maxsplit=1)[0].replace('"', "").strip()


def postprocess_caption_openflamingo(text: str) -> str:
  """OpenFlamingo's caption post-processing: the text before the first "Output", without
  double quotes; no other cut, no stripping."""
  return text.split("Output", 1)[0].replace('"', "")


def cut_run_on(text: str) -> str:
  """A generated continuation before the next "Question"/"Answer"/"Short" marker or newline:
  a model prompted "Question: ... Answer:" without a chat template goes on to ask and answer
  questions of its own ("yes Question: is there a car? Answer: no")."""
  return _VQA_CUT.split(text, maxsplit=1)[0]


def postprocess_vqa(text: str) -> str:
  """A generated continuation -> the first short answer (before any "Question"/"Answer"/
  "Short" marker, newline or ", "), stripped of whitespace and trailing periods."""
  answer = cut_run_on(text)
  return _TRAILING.sub("", answer.split(", ", 1)[0].strip())


def postprocess_vqa_openflamingo(text: str) -> str:
  """OpenFlamingo's `postprocess_vqa_generation`: the text before the first "Question"/
  "Answer"/"Short" marker, then before the first ", "; no stripping."""
  answer = _OF_VQA_CUT.split(text, maxsplit=1)[0]
  return answer.split(", ", 1)[0]


def cider(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]], *,
          tokenizer: str = "auto") -> float:
  """Corpus CIDEr-D (pycocoevalcap's `Cider`: n=4, sigma=6, x10) over the predicted keys.

  Args:
    predictions: {image key: generated caption} (post-processed, not tokenized).
    references: {image key: [reference caption, ...]}; must hold every predicted key.
      Document frequencies come from the references of the predicted keys only, as in
      pycocoevalcap's COCOEvalCap.
    tokenizer: "auto" (Stanford PTBTokenizer through java if on PATH, else the Python
      twin), "java" or "python" (see kosmos.eval.ptb_tokenizer).

  Returns:
    CIDEr on pycocoevalcap's scale (papers report x100).
  """
  from pycocoevalcap.cider.cider import Cider  # pylint: disable=import-outside-toplevel
  if not predictions:
    raise ValueError("cider needs at least one prediction")
  missing = [k for k in predictions if not references.get(k)]
  if missing:
    raise ValueError(f"cider: {len(missing)} predicted keys lack references, e.g. "
                     f"{missing[:3]!r}")
  keys = list(predictions)
  gts = ptb_tokenizer.tokenize({k: list(references[k]) for k in keys}, tokenizer)
  res = ptb_tokenizer.tokenize({k: [predictions[k]] for k in keys}, tokenizer)
  value, _ = Cider().compute_score(gts, res)
  return float(value)


def vqa_accuracy(predictions: Sequence[str], answers: Sequence[Sequence[str]], *,
                 variant: str = vqa_normalize.OFFICIAL) -> float:
  """Mean VQA accuracy in [0, 1]; predictions[i] is scored against answers[i] (10 each in
  VQAv2) by `kosmos.eval.vqa_normalize.vqa_accuracy` with `variant` ("official" = the
  current official script, "official_2016", "openflamingo")."""
  _same_length(predictions, answers, "vqa_accuracy")
  vqa_normalize.check_variant(variant)
  return float(np.mean([vqa_normalize.vqa_accuracy(p, a, variant=variant)
                        for p, a in zip(predictions, answers)]))


def roc_auc(labels: Sequence[int], scores: Sequence[float]) -> float:
  """Area under the ROC curve for binary labels (1 = positive), ties counted as 1/2.

  Equals sklearn.metrics.roc_auc_score: the Mann-Whitney U statistic with mid-ranks,
  U / (n_pos * n_neg).
  """
  _same_length(labels, scores, "roc_auc")
  y = np.asarray(labels)
  s = np.asarray(scores, dtype=np.float64)
  if not np.isin(y, (0, 1)).all():
    raise ValueError(f"roc_auc labels must be 0/1; got {sorted(set(y.tolist()))}")
  n_pos, n_neg = int(y.sum()), int((1 - y).sum())
  if n_pos == 0 or n_neg == 0:
    raise ValueError(f"roc_auc needs both classes; got {n_pos} positive, {n_neg} negative")
  if not np.isfinite(s).all():
    raise ValueError("roc_auc scores must be finite")
  order = np.argsort(s, kind="mergesort")
  sorted_s = s[order]
  ranks = np.empty(len(s), dtype=np.float64)
  start = 0
  while start < len(s):  # mid-ranks over runs of equal scores
    stop = start
    while stop + 1 < len(s) and sorted_s[stop + 1] == sorted_s[start]:
      stop += 1
    ranks[order[start:stop + 1]] = (start + stop) / 2.0 + 1.0
    start = stop + 1
  u = ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0
  return float(u / (n_pos * n_neg))


def accuracy(predictions: Sequence, labels: Sequence) -> float:
  """Fraction of predictions equal to their label (class indices or names)."""
  _same_length(predictions, labels, "accuracy")
  if not predictions:
    raise ValueError("accuracy needs at least one prediction")
  return sum(int(p == l) for p, l in zip(predictions, labels)) / len(predictions)


def merged_box(boxes: Sequence[Sequence[float]]) -> tuple[float, float, float, float]:
  """The smallest box enclosing all `boxes` (x1, y1, x2, y2)."""
  b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
  return (float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 2].max()), float(b[:, 3].max()))


def box_accuracy(predictions: Sequence[Sequence[float] | None],
                 references: Sequence[Sequence[Sequence[float]]], *, protocol: str = ANY_BOX,
                 iou_threshold: float = 0.5) -> float:
  """Fraction of predicted boxes (x1, y1, x2, y2; None = no box, a miss) whose IoU with the
  reference boxes of their query reaches `iou_threshold`: with ANY_BOX the best of them,
  with MERGED_BOX their enclosing box. Accuracy@0.5 of RefCOCO, R@1 of Flickr30k Entities."""
  _same_length(predictions, references, "box_accuracy")
  if not predictions:
    raise ValueError("box_accuracy needs at least one prediction")
  if protocol not in (ANY_BOX, MERGED_BOX):
    raise ValueError(f"box_accuracy protocol {protocol!r} not in {(ANY_BOX, MERGED_BOX)}")
  hits = 0
  for box, targets in zip(predictions, references):
    if box is None or not targets:
      continue
    targets = [merged_box(targets)] if protocol == MERGED_BOX else targets
    hits += max(grounding.iou(box, t) for t in targets) >= iou_threshold
  return hits / len(predictions)


def class_probabilities(logprobs_nc: np.ndarray) -> np.ndarray:
  """Per-class log-likelihoods [N, C] -> probabilities [N, C] (softmax over the C classes).

  For HatefulMemes, `probs[:, 1]` (P("yes")) is the ROC AUC score, which is what
  OpenFlamingo's "pred_score if pred is the greater label else 1 - pred_score" computes
  for two classes.
  """
  x = np.asarray(logprobs_nc, dtype=np.float64)
  if x.ndim != 2:
    raise ValueError(f"class_probabilities expects [N, C] log-likelihoods; got {x.shape}")
  x = x - x.max(axis=1, keepdims=True)
  e = np.exp(x)
  return e / e.sum(axis=1, keepdims=True)


def pope_answer(text: str) -> str:
  """A free-form answer -> "yes" | "no", as POPE's evaluate.py decides: keep the text
  before the first ".", drop commas, split on spaces; "no" when a word is "No", "no" or
  "not", else "yes" (so an empty answer counts as yes)."""
  if "." in text:
    text = text.split(".")[0]
  words = text.replace(",", "").split(" ")
  return "no" if "No" in words or "not" in words or "no" in words else "yes"


def pope(answers: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
  """POPE's figures over yes/no answers (`pope_answer`'s) and labels, "yes" the positive
  class: accuracy, precision, recall, f1, yes_ratio (in [0, 1]) and the tp/fp/tn/fn counts.
  A ratio with a zero denominator is 0 (POPE's script divides by zero there)."""
  _same_length(answers, labels, "pope")
  if not answers:
    raise ValueError("pope: no answers")
  for value in (*answers, *labels):
    if value not in ("yes", "no"):
      raise ValueError(f"pope: answers and labels must be 'yes' or 'no', got {value!r}")
  pairs = list(zip(answers, labels))
  tp = sum(a == "yes" and l == "yes" for a, l in pairs)
  fp = sum(a == "yes" and l == "no" for a, l in pairs)
  tn = sum(a == "no" and l == "no" for a, l in pairs)
  fn = sum(a == "no" and l == "yes" for a, l in pairs)
  ratio = lambda a, b: a / b if b else 0.0
  precision, recall = ratio(tp, tp + fp), ratio(tp, tp + fn)
  return {"accuracy": (tp + tn) / len(pairs), "precision": precision, "recall": recall,
          "f1": ratio(2 * precision * recall, precision + recall),
          "yes_ratio": (tp + fp) / len(pairs), "tp": tp, "fp": fp, "tn": tn, "fn": fn}


def mean_std(values: Sequence[float]) -> tuple[float, float]:
  """Mean and population std over trials, ignoring NaN (np.nanmean / np.nanstd)."""
  v = np.asarray(values, dtype=np.float64)
  if v.size == 0 or np.isnan(v).all():
    return math.nan, math.nan
  return float(np.nanmean(v)), float(np.nanstd(v))


def score(metric: str, predictions, references, **kwargs) -> float:
  """The metric as papers report it (x100). `predictions`/`references` as the metric
  function takes them: cider dicts; vqa_accuracy strings + answer lists; roc_auc scores +
  labels (note: predictions = scores); accuracy predictions + labels; pope_f1 yes/no
  answers + labels; box_accuracy boxes (or None) + reference box lists."""
  fns: dict[str, Callable[..., float]] = {
      CIDER: cider,
      VQA_ACCURACY: vqa_accuracy,
      ROC_AUC: lambda p, r, **kw: roc_auc(r, p, **kw),
      ACCURACY: accuracy,
      POPE_F1: lambda p, r: pope(p, r)["f1"],
      BOX_ACCURACY: box_accuracy,
  }
  if metric not in fns:
    raise ValueError(f"unknown metric {metric!r}; valid: {METRICS}")
  return 100.0 * fns[metric](predictions, references, **kwargs)


def _same_length(a: Sequence, b: Sequence, name: str) -> None:
  if len(a) != len(b):
    raise ValueError(f"{name}: {len(a)} predictions but {len(b)} references")
