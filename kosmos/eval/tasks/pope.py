"""POPE (Li et al. 2023, "Evaluating Object Hallucination in Large Vision-Language Models").

Question files as released (AoiDragon/POPE output/coco/coco_pope_{random,popular,
adversarial}.json), json lines despite the suffix:

    {"question_id": 0, "image": "COCO_val2014_000000548882.jpg", "image_id": 548882,
     "text": "Is there a dining table in the image?", "label": "yes"}

The three splits differ only in how the absent objects are sampled (random, the most
frequent COCO objects, the objects that co-occur most with the present ones); each is its
own task file (`split=` option of `pope`). Images are `image_dir/<image>` (COCO val2014).

The model answers freely; `kosmos.eval.metrics.pope_answer` turns the answer into yes / no
as POPE's evaluate.py does (without `--chat`, after cutting the continuation at the next
"Question"/"Answer" marker or newline: a base model's answer runs on into questions of its
own), and the task reports accuracy, precision, recall, F1 (the row
value) and the yes-ratio (`metrics.pope`). POPE is zero-shot: it has no demonstration
split, so no demonstrations are shown at any shot count (`--shots 0`).
"""

from __future__ import annotations

import collections
import os

from kosmos.eval.tasks.example import VQA, Example, Task, check_unique_ids, read_jsonl
from kosmos.eval import metrics

SPLITS = ("random", "popular", "adversarial")
LABELS = ("yes", "no")


def read_pope(path: str, image_dir: str, skipped: collections.Counter) -> list[Example]:
  out = []
  for _, row in read_jsonl(path, skipped):
    label = row.get("label") if isinstance(row, dict) else None
    if label not in LABELS or not isinstance(row.get("text"), str) or "image" not in row:
      skipped["bad_pope_row"] += 1
      continue
    image = os.path.join(image_dir, str(row["image"]))
    if not os.path.exists(image):
      skipped["missing_image"] += 1
      continue
    out.append(Example(id=str(row.get("question_id", len(out))),
                       fields={"question": row["text"].strip(), "answer": label,
                               "first_answer": label},
                       references=(label,), image_paths=(image,)))
  check_unique_ids(out, path)
  if not out:
    raise ValueError(f"{path}: no usable POPE questions (skipped: {dict(skipped)})")
  return out


def pope_task(*, questions: str, image_dir: str, name: str = "pope") -> Task:
  skipped: collections.Counter = collections.Counter()
  test = read_pope(questions, image_dir, skipped)
  return Task(name=name, kind=VQA, metric=metrics.POPE_F1, template="vqa", train=[],
              test=test, skipped=skipped, demos_for=lambda query, k: [])
