"""The evaluation example and task containers every loader returns.

An `Example` is one query or demonstration:

    id          str, unique inside its split (COCO id, VQA question id, meme id, file path)
    fields      {name: str} filled into prompt templates: "caption", "question",
                "answer" (the demonstration answer), "text" (meme text), "context", ...
    references  tuple[str]: reference captions (CIDEr) or annotator answers (VQA)
    label       int | None: class index into `Task.class_names` or into `choices`
    choices     tuple[str]: per-example candidates (text multiple choice)
    images      `images()` -> list[bytes], the encoded image files (JPEG/PNG as stored),
                read from `image_paths` on demand or held in `image_bytes` (TFDS)
    boxes       tuple of (x1, y1, x2, y2) in pixels of the (first) image: the region a
                grounding query must find (its reference boxes) or a region to describe;
                prompts show them as location tokens (`kosmos.eval.grounding`)

A `Task` bundles the demonstration pool (`train`), the evaluated split (`test`), the
metric name (kosmos.eval.metrics) and its keyword options, the prompt template name (kosmos.eval.prompts), the
class names for rank classification, and counts of skipped inputs by reason. Optional:
`template_overrides` (prompt/target/separator strings replacing the template's, e.g. a
model's own training format), `demos_for(query, k)`, a task's own demonstrations for
a query (fast-binding episodes carry their support sets) used instead of pool selection,
and `extra_metrics` {name: metric options}: the task metric again with other options,
reported beside it in each row's "details" (Flickr30k Entities' merged-box protocol).

A GROUNDING task generates location tokens for a phrase of the prompt; its prediction is
the first generated box in pixels, scored against the example's `boxes` (box_accuracy).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
from typing import Callable, Mapping, Sequence

import numpy as np

CAPTION, VQA, CLASSIFICATION, MULTIPLE_CHOICE, GROUNDING = (
    "caption", "vqa", "classification", "multiple_choice", "grounding")
KINDS = (CAPTION, VQA, CLASSIFICATION, MULTIPLE_CHOICE, GROUNDING)


@dataclasses.dataclass(frozen=True)
class Example:
  id: str
  fields: Mapping[str, str] = dataclasses.field(default_factory=dict)
  references: tuple[str, ...] = ()
  label: int | None = None
  choices: tuple[str, ...] = ()
  image_paths: tuple[str, ...] = ()
  image_bytes: tuple[bytes, ...] = ()
  boxes: tuple[tuple[float, float, float, float], ...] = ()

  def images(self) -> list[bytes]:
    """The encoded images (possibly none), in prompt order."""
    if self.image_bytes:
      return list(self.image_bytes)
    out = []
    for path in self.image_paths:
      with open(path, "rb") as f:
        out.append(f.read())
    return out

  def image_digest(self) -> str | None:
    """sha256 over the encoded images; None for a text-only example. Two examples with
    the same digest show the same picture (used to keep a query out of its demos)."""
    images = self.images()
    if not images:
      return None
    h = hashlib.sha256()
    for data in images:
      h.update(hashlib.sha256(data).digest())
    return h.hexdigest()


@dataclasses.dataclass
class Task:
  name: str
  kind: str
  metric: str
  template: str
  train: Sequence[Example]
  test: Sequence[Example]
  class_names: tuple[str, ...] = ()
  metric_options: dict = dataclasses.field(default_factory=dict)  # kwargs of the metric
  skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  template_overrides: dict = dataclasses.field(default_factory=dict)  # prompts.get_template
  demos_for: Callable[[Example, int], list[Example]] | None = None  # per-query demos
  extra_metrics: dict = dataclasses.field(default_factory=dict)  # {name: metric_options}
  # 0 shots = two text-only demonstrations (Flamingo); False for tasks whose demonstration
  # texts alone would give the task away (task induction): 0 shots = no demonstrations.
  text_only_zero_shot: bool = True

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"task {self.name!r}: kind {self.kind!r} not in {KINDS}")
    if self.kind == CLASSIFICATION and not self.class_names:
      raise ValueError(f"task {self.name!r}: classification needs class_names")

  def candidates(self, example: Example) -> tuple[str, ...]:
    """The answers to rank for `example`: the task's classes or the example's choices."""
    return example.choices if self.kind == MULTIPLE_CHOICE else self.class_names


def sample_eval_set(examples: Sequence[Example], num: int, seed: int) -> list[Example]:
  """`num` examples drawn without replacement with `seed` (all, in order, if num <= 0 or
  num >= len), as OpenFlamingo's `prepare_eval_samples` subsets the test split."""
  if num <= 0 or num >= len(examples):
    return list(examples)
  idx = np.random.default_rng(seed).choice(len(examples), size=num, replace=False)
  return [examples[int(i)] for i in idx]


def check_unique_ids(examples: Sequence[Example], where: str) -> None:
  counts = collections.Counter(e.id for e in examples)
  dupes = [i for i, c in counts.items() if c > 1]
  if dupes:
    raise ValueError(f"{where}: duplicate example ids, e.g. {dupes[:3]!r}")


def read_jsonl(path: str, skipped: collections.Counter) -> list[tuple[int, dict]]:
  """(line number, object) of each non-blank line; undecodable lines are counted in
  `skipped["bad_json_line"]`."""
  rows = []
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        rows.append((lineno, json.loads(line)))
      except json.JSONDecodeError:
        skipped["bad_json_line"] += 1
  return rows
