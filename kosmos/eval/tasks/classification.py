"""Rank-classification tasks: HatefulMemes, image folders (ImageNet, Rendered SST-2),
and text-only multiple choice.

- HatefulMemes jsonl, one object a line: {"id": 42953, "img": "img/42953.png",
  "label": 0 | 1, "text": "its their character not their color that matters"}. The image
  is `root/img` or `image_dir/basename(img)`. Classes ("no", "yes"): label 1 = hateful =
  "yes"; metric ROC AUC over P("yes"). `fields["text"]` is the meme text.
- Image folders `split_dir/<class>/<image>`: classes are the sorted sub-directory names,
  shown by their names or through `class_names` {directory: display name} (ImageNet synset
  ids -> names); metric top-1 accuracy. Rendered SST-2 is `negative/`, `positive/`.
- Text multiple choice jsonl: {"question" | "context": str, "choices": [str, ...],
  "label": int}; no images; `Example.choices` are the candidates; accuracy.

Example ids: the meme id, the image path relative to the split directory, or
"<file stem>-<line number>" for text multiple choice.
"""

from __future__ import annotations

import collections
import os
from typing import Mapping

from kosmos.eval.tasks.example import (
    CLASSIFICATION, MULTIPLE_CHOICE, Example, Task, check_unique_ids, read_jsonl)

HATEFUL_MEMES_CLASSES = ("no", "yes")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".jpe")


def read_hateful_memes(jsonl_path: str, image_dir: str,
                       skipped: collections.Counter) -> list[Example]:
  root = os.path.dirname(os.path.abspath(jsonl_path))
  out = []
  for _, row in read_jsonl(jsonl_path, skipped):
    if row.get("label") not in (0, 1):
      skipped["no_label"] += 1
      continue
    candidates = [os.path.join(root, row["img"]),
                  os.path.join(image_dir, os.path.basename(row["img"]))]
    path = next((p for p in candidates if os.path.exists(p)), None)
    if path is None:
      skipped["missing_image"] += 1
      continue
    label = int(row["label"])
    out.append(Example(id=str(row["id"]),
                       fields={"text": row.get("text", ""),
                               "answer": HATEFUL_MEMES_CLASSES[label]},
                       label=label, image_paths=(path,)))
  check_unique_ids(out, jsonl_path)
  return out


def hateful_memes_task(*, train_jsonl: str, test_jsonl: str, image_dir: str,
                       name: str = "hateful_memes") -> Task:
  skipped: collections.Counter = collections.Counter()
  return Task(name=name, kind=CLASSIFICATION, metric="roc_auc", template="hateful_memes",
              train=read_hateful_memes(train_jsonl, image_dir, skipped),
              test=read_hateful_memes(test_jsonl, image_dir, skipped),
              class_names=HATEFUL_MEMES_CLASSES, skipped=skipped)


def folder_classes(split_dir: str) -> list[str]:
  if not os.path.isdir(split_dir):
    raise ValueError(f"image folder {split_dir!r} does not exist")
  classes = sorted(d for d in os.listdir(split_dir)
                   if os.path.isdir(os.path.join(split_dir, d)))
  if not classes:
    raise ValueError(f"image folder {split_dir!r} has no class sub-directories")
  return classes


def read_image_folder(split_dir: str, classes: list[str],
                      class_names: Mapping[str, str] | None,
                      skipped: collections.Counter) -> list[Example]:
  found = folder_classes(split_dir)
  unknown = sorted(set(found) - set(classes))
  if unknown:
    raise ValueError(f"{split_dir}: class directories {unknown[:5]} are not among the "
                     f"train classes {classes[:5]}...")
  out = []
  for index, cls in enumerate(classes):
    cls_dir = os.path.join(split_dir, cls)
    if not os.path.isdir(cls_dir):
      continue
    for fname in sorted(os.listdir(cls_dir)):
      if not fname.lower().endswith(IMAGE_SUFFIXES):
        skipped["not_an_image_file"] += 1
        continue
      name = class_names[cls] if class_names else cls
      out.append(Example(id=f"{cls}/{fname}", fields={"answer": name}, label=index,
                         image_paths=(os.path.join(cls_dir, fname),)))
  return out


def image_folder_task(name: str, *, train_dir: str, test_dir: str,
                      class_names: Mapping[str, str] | None = None,
                      template: str = "classification") -> Task:
  """Top-1 accuracy over the classes found in `train_dir` (sorted directory names)."""
  classes = folder_classes(train_dir)
  if class_names is not None:
    missing = [c for c in classes if c not in class_names]
    if missing:
      raise ValueError(f"class_names lacks display names for directories {missing[:5]}")
  skipped: collections.Counter = collections.Counter()
  train = read_image_folder(train_dir, classes, class_names, skipped)
  test = read_image_folder(test_dir, classes, class_names, skipped)
  names = tuple(class_names[c] if class_names else c for c in classes)
  return Task(name=name, kind=CLASSIFICATION, metric="accuracy", template=template,
              train=train, test=test, class_names=names, skipped=skipped)


def read_multiple_choice(jsonl_path: str, skipped: collections.Counter) -> list[Example]:
  stem = os.path.splitext(os.path.basename(jsonl_path))[0]
  out = []
  for lineno, row in read_jsonl(jsonl_path, skipped):
    question = row.get("question", row.get("context"))
    choices = row.get("choices")
    label = row.get("label")
    if (not isinstance(question, str) or not isinstance(choices, list) or len(choices) < 2
        or not isinstance(label, int) or not 0 <= label < len(choices)):
      skipped["bad_multiple_choice_row"] += 1
      continue
    choices = tuple(str(c) for c in choices)
    out.append(Example(id=f"{stem}-{lineno}",
                       fields={"question": question.strip(), "answer": choices[label]},
                       label=label, choices=choices))
  return out


def multiple_choice_task(name: str, *, train_jsonl: str, test_jsonl: str) -> Task:
  skipped: collections.Counter = collections.Counter()
  return Task(name=name, kind=MULTIPLE_CHOICE, metric="accuracy", template="multiple_choice",
              train=read_multiple_choice(train_jsonl, skipped),
              test=read_multiple_choice(test_jsonl, skipped), skipped=skipped)
