"""VQA tasks: VQAv2 / OK-VQA (questions + annotations files), VizWiz, TextVQA.

Formats, recognized from the file's content:

- VQAv2-style, two files (also OK-VQA):
    `*_questions.json`   {"data_subtype": "val2014", "questions": [{"image_id", "question",
                          "question_id"}, ...]}
    `*_annotations.json` {"annotations": [{"question_id", "image_id", "answers":
                          [{"answer", "answer_id", ...} x10], "multiple_choice_answer",
                          "answer_type", ...}, ...]}
  images by COCO naming `COCO_{subtype}_{image_id:012d}.jpg`, subtype from the questions
  file's "data_subtype" or else the image directory's name (train2014, val2014, ...);
  or any `image_pattern` with `{image_id}` (format spec allowed, e.g. "{image_id:012d}.jpg").
- VizWiz: a list [{"image": "VizWiz_val_00000000.jpg", "question", "answers":
  [{"answer", "answer_confidence"}, ...], "answerable", "answer_type"}]; the image field is
  the file name; the example id is the file name.
- TextVQA: {"data": [{"question_id", "image_id", "question", "answers": [str x10], ...}]},
  images `{image_id}.jpg`.

`references` are the annotators' answers, `fields["answer"]` (the demonstration answer)
is "multiple_choice_answer" when present, else the first answer; `fields["first_answer"]`
is always the first annotator answer (OpenFlamingo's demonstration answer). Questions
without annotation are kept with no references (test-dev style); missing images are
skipped and counted.
"""

from __future__ import annotations

import collections
import json
import os
from typing import Sequence

from kosmos.eval import vqa_normalize
from kosmos.eval.tasks.example import VQA, Example, Task, check_unique_ids

VQAV2, VIZWIZ, TEXTVQA = "vqav2", "vizwiz", "textvqa"
COCO_SUBTYPES = ("train2014", "val2014", "test2015", "test-dev2015")


def _load(path: str):
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def detect_format(data) -> str:
  if isinstance(data, list):
    return VIZWIZ
  if isinstance(data, dict) and "questions" in data:
    return VQAV2
  if isinstance(data, dict) and "data" in data:
    return TEXTVQA
  keys = list(data)[:5] if isinstance(data, dict) else type(data).__name__
  raise ValueError(f"unknown VQA file layout (top level: {keys}); expected a VQAv2 questions "
                   "file {'questions': [...]}, a TextVQA file {'data': [...]} or a VizWiz list")


def _answer_texts(answers) -> list[str]:
  return [a["answer"] if isinstance(a, dict) else str(a) for a in answers]


def _image_name(pattern: str | None, default: str, **values) -> str:
  return (pattern or default).format(**values)


def _types(question_types: str | Sequence[str] | None) -> tuple[str, ...] | None:
  """`question_types` as a tuple: one string is one type, not its characters."""
  if question_types is None:
    return None
  return (question_types,) if isinstance(question_types, str) else tuple(question_types)


def read_vqa(questions_path: str, image_dir: str, *, annotations_path: str | None = None,
             image_pattern: str | None = None,
             skipped: collections.Counter | None = None,
             question_types: str | Sequence[str] | None = None) -> list[Example]:
  """Examples of one VQA split file (plus its annotations file for VQAv2-style data).

  `question_types`: keep only the questions whose annotation has one of these
  "question_type"s (VQAv2-style data with annotations only)."""
  skipped = skipped if skipped is not None else collections.Counter()
  question_types = _types(question_types)
  data = _load(questions_path)
  fmt = detect_format(data)
  if question_types is not None and (fmt != VQAV2 or not annotations_path):
    raise ValueError(f"{questions_path}: question_types needs VQAv2-style questions with an "
                     "annotations file (their \"question_type\" field)")
  rows = []  # (id, image file name, question, answers, demo answer)
  if fmt == VQAV2:
    subtype = data.get("data_subtype") or os.path.basename(os.path.normpath(image_dir))
    default = f"COCO_{subtype}_{{image_id:012d}}.jpg"
    if image_pattern is None and subtype not in COCO_SUBTYPES:
      raise ValueError(f"{questions_path}: cannot tell the COCO image split (data_subtype/"
                       f"directory {subtype!r} not in {COCO_SUBTYPES}); pass image_pattern")
    annotations = {}
    if annotations_path:
      for ann in _load(annotations_path)["annotations"]:
        annotations[ann["question_id"]] = ann
    for q in data["questions"]:
      ann = annotations.get(q["question_id"])
      if question_types is not None and (ann or {}).get("question_type") not in question_types:
        continue
      answers = _answer_texts(ann["answers"]) if ann else []
      demo = (ann.get("multiple_choice_answer") if ann else None) or (answers or [""])[0]
      rows.append((str(q["question_id"]), _image_name(image_pattern, default,
                   image_id=q["image_id"]), q["question"], answers, demo))
  elif fmt == VIZWIZ:
    for q in data:
      answers = _answer_texts(q.get("answers", []))
      rows.append((q["image"], _image_name(image_pattern, "{image}", image=q["image"]),
                   q["question"], answers, (answers or [""])[0]))
  else:
    for q in data["data"]:
      answers = _answer_texts(q.get("answers", []))
      rows.append((str(q["question_id"]), _image_name(image_pattern, "{image_id}.jpg",
                   image_id=q["image_id"]), q["question"], answers, (answers or [""])[0]))
  out = []
  for example_id, image_name, question, answers, demo in rows:
    path = os.path.join(image_dir, image_name)
    if not os.path.exists(path):
      skipped["missing_image"] += 1
      continue
    out.append(Example(id=example_id, fields={"question": question.strip(), "answer": demo,
                                              "first_answer": (answers or [""])[0]},
                       references=tuple(answers), image_paths=(path,)))
  check_unique_ids(out, questions_path)
  return out


def vqa_task(name: str, *, train_questions: str, train_images: str, test_questions: str,
             test_images: str, train_annotations: str | None = None,
             test_annotations: str | None = None, image_pattern: str | None = None,
             vqa_metric: str = vqa_normalize.OFFICIAL,
             question_types: str | Sequence[str] | None = None) -> Task:
  """A VQA-accuracy task; `vqa_metric` (a `kosmos.eval.vqa_normalize.VARIANTS` name) goes
  into `Task.metric_options["variant"]`: "official" = the current official VQA script
  (default), "openflamingo" normalizes every reference (kosmos' default for the raw answers
  of VizWiz and TextVQA), "official_2016" the script before its 2021 fix.
  `question_types` (VQAv2 annotations' "question_type", e.g. ["what color is the"]) keeps
  only those test questions; demonstrations still come from the whole train split."""
  skipped: collections.Counter = collections.Counter()
  train = read_vqa(train_questions, train_images, annotations_path=train_annotations,
                   image_pattern=image_pattern, skipped=skipped)
  test = read_vqa(test_questions, test_images, annotations_path=test_annotations,
                  image_pattern=image_pattern, skipped=skipped, question_types=question_types)
  if not test:
    kinds = (f" of question_types {list(_types(question_types))}"
             if question_types is not None else "")
    raise ValueError(f"{test_questions}: no usable questions{kinds} (skipped: {dict(skipped)})")
  missing = sum(1 for e in train if not e.references)
  if missing:
    raise ValueError(f"{train_questions}: {missing} demonstration questions have no answers; "
                     "give the annotations file of the train split")
  return Task(name=name, kind=VQA, metric="vqa_accuracy", template="vqa", train=train,
              test=test, skipped=skipped,
              metric_options={"variant": vqa_normalize.check_variant(vqa_metric)})
