"""Phrase grounding on Flickr30k Entities, in its public layout.

    data_dir/{train,val,test}.txt       image ids of each split, one per line
    data_dir/Sentences/<id>.txt         five sentences, phrases marked
                                        "[/EN#18/people A child] in [/EN#19/clothing a pink dress] ..."
    data_dir/Annotations/<id>.xml       PASCAL-VOC-like: <size>, and per box an <object> with
                                        one or more <name> (phrase ids) and a <bndbox>
                                        (xmin ymin xmax ymax), or <nobndbox>/<scene> flags
    data_dir/flickr30k-images/<id>.jpg  the Flickr30k images (`image_dir`)

One query per phrase that has boxes (phrases marked not visible or scene-level have none
and are skipped, counted as `phrase_without_box`, as MDETR's evaluator filters them): the
prompt is the sentence up to the phrase with the phrase grounded, the model generates its
box, scored R@1 at IoU >= 0.5 under the two protocols of MDETR's `flickr_eval.py`: any-box
(the task metric: a hit when the box matches any of the phrase's boxes) and merged-box
(`extra_metrics`: against the box enclosing them all). Boxes are read as MDETR reads them:
every <name> of an <object> gets its box, coordinates as written. An image whose
Annotations/ or Sentences/ file is missing or malformed is skipped, counted as
`bad_annotation`.
"""

from __future__ import annotations

import collections
import os
import xml.etree.ElementTree as ET
from typing import Any

from kosmos.eval import metrics
from kosmos.eval.tasks.example import GROUNDING, Example, Task, check_unique_ids


def read_sentences(path: str) -> list[dict[str, Any]]:
  """[{"sentence", "phrases": [{"phrase", "first_word_index", "phrase_id", "phrase_type"}]}]
  of a Sentences/<id>.txt file (the fields of flickr30k_entities_utils.get_sentence_data)."""
  with open(path, encoding="utf-8") as f:
    lines = f.read().split("\n")
  out = []
  for line in lines:
    if not line:
      continue
    words, phrases, open_phrase = [], [], None
    for token in line.split():
      if open_phrase is None and token.startswith("["):
        parts = token.split("/")
        open_phrase = {"first_word_index": len(words), "phrase_id": parts[1][3:],
                       "phrase_type": parts[2:], "words": []}
        continue
      if open_phrase is not None:
        closing = token.endswith("]")
        token = token[:-1] if closing else token
        open_phrase["words"].append(token)
        if closing:
          phrases.append(dict(open_phrase, phrase=" ".join(open_phrase.pop("words"))))
          open_phrase = None
      words.append(token)
    out.append({"sentence": " ".join(words),
                "phrases": [{k: p[k] for k in ("phrase", "first_word_index", "phrase_id",
                                               "phrase_type")} for p in phrases]})
  return out


def read_boxes(path: str) -> dict[str, list[tuple[float, float, float, float]]]:
  """{phrase id: [(xmin, ymin, xmax, ymax), ...]} of an Annotations/<id>.xml file."""
  boxes: dict[str, list[tuple[float, float, float, float]]] = {}
  for obj in ET.parse(path).getroot().findall("object"):
    found = obj.find("bndbox")
    if found is None:
      continue
    box = tuple(float(found.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax"))
    for name in obj.findall("name"):
      boxes.setdefault(name.text, []).append(box)
  return boxes


def read_split(data_dir: str, split: str, image_dir: str,
               skipped: collections.Counter) -> list[Example]:
  """One example per boxed phrase of the split's sentences."""
  ids_path = os.path.join(data_dir, f"{split}.txt")
  if not os.path.exists(ids_path):
    raise FileNotFoundError(f"{ids_path!r} not found: Flickr30k Entities' layout is "
                            "data_dir/{train,val,test}.txt, Sentences/, Annotations/ "
                            "(and the images in data_dir/flickr30k-images/)")
  with open(ids_path, encoding="utf-8") as f:
    image_ids = [line.strip() for line in f if line.strip()]
  out = []
  for image_id in image_ids:
    image_path = os.path.join(image_dir, f"{image_id}.jpg")
    if not os.path.exists(image_path):
      skipped["missing_image"] += 1
      continue
    try:
      boxes = read_boxes(os.path.join(data_dir, "Annotations", f"{image_id}.xml"))
      sentences = read_sentences(os.path.join(data_dir, "Sentences", f"{image_id}.txt"))
    except (OSError, UnicodeDecodeError, ET.ParseError, AttributeError, TypeError,
            ValueError):  # missing, truncated or malformed files: this image is not scored
      skipped["bad_annotation"] += 1
      continue
    for s, sentence in enumerate(sentences):
      words = sentence["sentence"].split(" ")
      for p, phrase in enumerate(sentence["phrases"]):
        if phrase["phrase_id"] not in boxes:
          skipped["phrase_without_box"] += 1
          continue
        before = " ".join(words[:phrase["first_word_index"]])
        out.append(Example(
            id=f"{image_id}_{s}_{p}", image_paths=(image_path,),
            fields={"prefix": " " + before if before else "", "phrase": phrase["phrase"]},
            boxes=tuple(boxes[phrase["phrase_id"]])))
  check_unique_ids(out, ids_path)
  return out


def flickr_entities_task(data_dir: str, *, test_split: str = "test", train_split: str = "train",
                         image_dir: str | None = None) -> Task:
  """Phrase grounding (module docstring); demos from `train_split`."""
  image_dir = image_dir or os.path.join(data_dir, "flickr30k-images")
  skipped: collections.Counter = collections.Counter()
  test = read_split(data_dir, test_split, image_dir, skipped)
  if not test:
    raise ValueError(f"{data_dir}: no boxed phrases in split {test_split!r} "
                     f"(skipped: {dict(skipped)})")
  return Task(name="flickr30k_entities", kind=GROUNDING, metric="box_accuracy",
              template="phrase_grounding", train=read_split(data_dir, train_split, image_dir,
                                                            skipped),
              test=test, skipped=skipped, metric_options={"protocol": metrics.ANY_BOX},
              extra_metrics={metrics.MERGED_BOX: {"protocol": metrics.MERGED_BOX}})
