"""Captioning tasks from Karpathy-split json files (COCO, Flickr30k).

`dataset_coco.json` / `dataset_flickr30k.json`:

    {"images": [{"filepath": "val2014",          # COCO only: sub-directory of the images
                 "filename": "COCO_val2014_000000391895.jpg",
                 "split": "train" | "val" | "test" | "restval",
                 "sentences": [{"raw": "A man with a red helmet ...", "tokens": [...]}, ...],
                 "cocoid": 391895,                # COCO; Flickr30k has "imgid"
                 "imgid": 0}, ...]}

An image is looked up at `image_dir/filepath/filename`, then `image_dir/filename`;
entries whose file is missing are skipped and counted ("missing_image"). Example ids are
the cocoid (COCO) or the file stem (Flickr30k), as in OpenFlamingo; `references` are all
raw sentences and `fields["caption"]` (the demonstration text) is the first, stripped.
"""

from __future__ import annotations

import collections
import json
import os
from typing import Sequence

from kosmos.eval.tasks.example import CAPTION, Example, Task, check_unique_ids

TRAIN_SPLITS = ("train",)  # OpenFlamingo draws demonstrations from "train" only
TEST_SPLITS = ("test",)


def read_karpathy(json_path: str, image_dir: str, splits: Sequence[str],
                  skipped: collections.Counter) -> list[Example]:
  """Examples of the given Karpathy splits."""
  with open(json_path, encoding="utf-8") as f:
    data = json.load(f)
  if not isinstance(data, dict) or "images" not in data:
    raise ValueError(f"{json_path}: not a Karpathy split file (no top-level 'images' list)")
  out = []
  for entry in data["images"]:
    if entry.get("split") not in splits:
      continue
    sentences = [s["raw"].strip() for s in entry.get("sentences", []) if s.get("raw", "").strip()]
    if not sentences:
      skipped["no_sentences"] += 1
      continue
    candidates = [os.path.join(image_dir, entry["filename"])]
    if entry.get("filepath"):
      candidates.insert(0, os.path.join(image_dir, entry["filepath"], entry["filename"]))
    path = next((p for p in candidates if os.path.exists(p)), None)
    if path is None:
      skipped["missing_image"] += 1
      continue
    if "cocoid" in entry:
      example_id = str(entry["cocoid"])
    else:
      example_id = os.path.splitext(entry["filename"])[0]
    out.append(Example(id=example_id, fields={"caption": sentences[0]},
                       references=tuple(sentences), image_paths=(path,)))
  check_unique_ids(out, json_path)
  return out


def karpathy_task(name: str, json_path: str, image_dir: str, *,
                  train_splits: Sequence[str] = TRAIN_SPLITS,
                  test_splits: Sequence[str] = TEST_SPLITS) -> Task:
  """A CIDEr captioning task: demonstrations from `train_splits`, queries `test_splits`."""
  skipped: collections.Counter = collections.Counter()
  train = read_karpathy(json_path, image_dir, train_splits, skipped)
  test = read_karpathy(json_path, image_dir, test_splits, skipped)
  if not test:
    raise ValueError(f"{json_path}: no usable examples in splits {tuple(test_splits)} "
                     f"(skipped: {dict(skipped)})")
  return Task(name=name, kind=CAPTION, metric="cider", template="caption", train=train,
              test=test, skipped=skipped)
