"""RefCOCO / RefCOCO+ / RefCOCOg in MDETR's COCO-style layout, with COCO train2014 images.

`finetune_<name>_<split>.json` (MDETR's mdetr_annotations, as its
scripts/fine-tuning/refexp_coco_format.py writes them and its refexp loader reads them;
`final_<name>_<split>.json` is read when no `finetune_` file is there; name refcoco |
refcoco+ | refcocog, split train | val | testA | testB | test), one entry per referring
expression:

    {"images": [{"id": 0, "file_name": "COCO_train2014_000000581857.jpg",
                 "caption": "the lady with the blue shirt", "original_id": 581857,
                 "width": 640, "height": 427, ...}, ...],
     "annotations": [{"image_id": 0, "bbox": [x, y, w, h], "original_id": 1718742,
                      "category_id": 1, ...}, ...]}      # the referred object of entry 0

Images are read from `image_dir` (default data_dir/train2014). Two tasks:

    comprehension (`refexp_task`, kind grounding): the expression is a grounded phrase, the
        model generates its box; accuracy at IoU >= 0.5 with the annotation's box.
    generation (`reg_task`, kind caption): the model is shown the object's box and writes an
        expression; CIDEr against all expressions of that object (entries sharing the
        annotation's `original_id`), as for RefCOCOg.

The refer toolkit's pickles (`refs(unc).p`, `refs(umd).p`, `refs(google).p`) are refused,
never unpickled (a pickle can run code): convert them with MDETR's
scripts/fine-tuning/refexp_coco_format.py or use the released finetune_*.json.
"""

from __future__ import annotations

import collections
import glob
import json
import os
from typing import Any, Callable

from kosmos.eval.tasks.example import CAPTION, GROUNDING, Example, Task, check_unique_ids

NAMES = ("refcoco", "refcoco+", "refcocog")
LAYOUT = ("MDETR's finetune_{name}_{split}.json (or final_{name}_{split}.json; COCO-style "
          "images + annotations, from mdetr_annotations.tar.gz) with COCO images in "
          "data_dir/train2014")
PREFIXES = ("finetune", "final")  # MDETR's released / converted names first


def json_path(data_dir: str, name: str, split: str) -> str:
  """data_dir/finetune_<name>_<split>.json (else final_...); refuses refer-toolkit pickles
  with a message."""
  for prefix in PREFIXES:
    path = os.path.join(data_dir, f"{prefix}_{name}_{split}.json")
    if os.path.exists(path):
      return path
  path = os.path.join(data_dir, f"{PREFIXES[0]}_{name}_{split}.json")
  pickles = sorted(glob.glob(os.path.join(glob.escape(data_dir), "**", "refs(*).p"),
                             recursive=True))
  hint = (f" {data_dir!r} holds the refer toolkit's pickle {pickles[0]!r}, which kosmos does "
          "not read (unpickling runs code);" if pickles else "")
  raise FileNotFoundError(f"{path!r} not found.{hint} Supported layout: {LAYOUT}")


def _reject_pickle(path: str) -> None:
  if path.endswith(".p") or path.endswith(".pkl") or path.endswith(".pickle"):
    raise ValueError(f"{path!r} is a pickle; kosmos never unpickles annotation files. "
                     f"Supported layout: {LAYOUT}")


def read_entries(path: str, image_dir: str, skipped: collections.Counter) -> list[dict[str, Any]]:
  """[{id, expression, box (x1, y1, x2, y2), object, image_path}] of one MDETR file."""
  _reject_pickle(path)
  with open(path, encoding="utf-8") as f:
    data = json.load(f)
  if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
    raise ValueError(f"{path}: not a COCO-style file with 'images' and 'annotations'. "
                     f"Supported layout: {LAYOUT}")
  boxes = {}
  for ann in data["annotations"]:
    x, y, w, h = (float(v) for v in ann["bbox"])
    boxes[ann["image_id"]] = ((x, y, x + w, y + h), ann.get("original_id", ann.get("id")))
  out = []
  for entry in data["images"]:
    expression = str(entry.get("caption", "")).strip()
    if entry["id"] not in boxes:
      skipped["no_annotation"] += 1
      continue
    if not expression:
      skipped["empty_expression"] += 1
      continue
    image_path = os.path.join(image_dir, entry["file_name"])
    if not os.path.exists(image_path):
      skipped["missing_image"] += 1
      continue
    box, obj = boxes[entry["id"]]
    if not (box[2] > box[0] and box[3] > box[1]):
      skipped["empty_box"] += 1
      continue
    out.append(dict(id=str(entry["id"]), expression=expression, box=box,
                    object=f"{entry.get('original_id', '')}:{obj}", image_path=image_path))
  return out


def _splits(name: str, data_dir: str, train_split: str, test_split: str, json_dir: str | None,
            image_dir: str | None, examples: Callable[[list[dict[str, Any]]], list[Example]]
            ) -> tuple[list[Example], list[Example], collections.Counter]:
  """(train, test, skipped): `examples` of each split's entries."""
  if name not in NAMES:
    raise ValueError(f"unknown referring expression dataset {name!r}; valid: {NAMES}")
  json_dir = json_dir or data_dir
  image_dir = image_dir or os.path.join(data_dir, "train2014")
  skipped: collections.Counter = collections.Counter()
  out = []
  for split in (train_split, test_split):
    path = json_path(json_dir, name, split)
    out.append(examples(read_entries(path, image_dir, skipped)))
    check_unique_ids(out[-1], path)
  if not out[1]:
    raise ValueError(f"{json_path(json_dir, name, test_split)}: no usable expressions "
                     f"(skipped: {dict(skipped)})")
  return out[0], out[1], skipped


def refexp_task(name: str, data_dir: str, *, test_split: str = "val", train_split: str = "train",
                json_dir: str | None = None, image_dir: str | None = None) -> Task:
  """Referring expression comprehension (module docstring); demos from `train_split`."""
  def examples(entries: list[dict[str, Any]]) -> list[Example]:
    return [Example(id=e["id"], fields={"phrase": e["expression"]},
                    image_paths=(e["image_path"],), boxes=(e["box"],)) for e in entries]

  train, test, skipped = _splits(name, data_dir, train_split, test_split, json_dir, image_dir,
                                 examples)
  return Task(name=name, kind=GROUNDING, metric="box_accuracy", template="rec", train=train,
              test=test, skipped=skipped)


def reg_task(name: str, data_dir: str, *, test_split: str = "val", train_split: str = "train",
             json_dir: str | None = None, image_dir: str | None = None) -> Task:
  """Referring expression generation (module docstring): one example per object."""
  def examples(entries: list[dict[str, Any]]) -> list[Example]:
    objects: dict[str, list[dict[str, Any]]] = {}
    for e in entries:
      objects.setdefault(e["object"], []).append(e)
    return [Example(id=key, fields={"expression": group[0]["expression"]},
                    references=tuple(e["expression"] for e in group),
                    image_paths=(group[0]["image_path"],), boxes=(group[0]["box"],))
            for key, group in objects.items()]

  train, test, skipped = _splits(name, data_dir, train_split, test_split, json_dir, image_dir,
                                 examples)
  return Task(name=f"{name}_reg", kind=CAPTION, metric="cider", template="reg", train=train,
              test=test, skipped=skipped)
