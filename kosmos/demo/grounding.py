"""Grounding in the shapes world: grounded pairs, a referring-expression eval set, a picture.

Grounded pairs (`python data/prepare.py shapes --grounded N`, DATA/records/grounded/,
kind=pair): an image of 1-3 objects that differ pairwise in (shape, colour) — scene kinds
"single" and "mixed" (`SCENE_KINDS`), never "group", whose objects look alike — and a caption
naming every object by its referring expression (`expression`), in random order:

    "the small blue triangle and the large purple star"

with `meta.boxes = [[start, end, x1, y1, x2, y2], ...]`: each phrase's character span and its
object's box (`object_box`), normalised to [0, 1] — GRIT's layout (kosmos.data.convert.grit),
which the training pipeline renders with the config's grid (configs/demo.py: 8 x 8 cells of
4 px) as

    <grounding><phrase> the small blue triangle</phrase><object><patch_index_0036>
    <patch_index_0054></object> and<phrase> the large purple star</phrase><object>
    <patch_index_0004><patch_index_0031></object>                      (one line)

Referring eval set (`--refexp-train N --refexp-val N`, DATA/eval/refexp/): MDETR's RefCOCO
layout as `kosmos-eval --task refcoco` reads it (kosmos.eval.tasks.refexp):
`final_refcoco_{train,val}.json` (COCO-style: one `images` entry per expression, its
object's box in `annotations`, `bbox` [x, y, w, h] in pixels) and the JPEGs (q95) in
`train2014/COCO_train2014_{image:012d}.jpg`. Every object of an image is one expression; in
these scenes the expression names it uniquely and says nothing of where it is, so only the
pixels can locate it (the gray-image control can only guess).

`boxes_picture` draws predicted against true boxes on eval images (OUT/boxes.png).
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Sequence

import numpy as np

from kosmos.demo import world as sw

SCENE_KINDS = ("single", "mixed")
SCENE_KIND_PROBS = (0.3, 0.7)
REFEXP_NAME = "refcoco"  # the kosmos-eval task that reads the layout
SPLITS = ("train", "val")
IMAGE_DIR = "train2014"
SQUARE_HALF_SIDE = 0.9  # world.render_scene draws a square of half side 0.9 r
TRUE_COLOUR, PREDICTED_COLOUR = "cyan", "magenta"  # apart from every shape colour

Box = tuple[float, float, float, float]


def sample_scene(rng: np.random.Generator) -> sw.Scene:
  """A scene whose objects differ pairwise in (shape, colour): each has a unique expression."""
  return sw.sample_scene(rng, SCENE_KINDS[rng.choice(len(SCENE_KINDS), p=SCENE_KIND_PROBS)])


def expression(o: sw.Obj) -> str:
  """The referring expression of an object: "the small red circle"."""
  return f"the {o.size} {o.colour} {o.shape}"


def object_box(o: sw.Obj, image_size: int) -> Box:
  """The tight box (x1, y1, x2, y2) of the shape `world.render_scene` draws, in pixels."""
  cx, cy, r = sw.object_geometry(o, image_size)
  if o.shape == "square":
    h = SQUARE_HALF_SIDE * r
    return cx - h, cy - h, cx + h, cy + h
  if o.shape == "star":
    xs, ys = zip(*sw.star_polygon(cx, cy, r))
    return min(xs), min(ys), max(xs), max(ys)
  return cx - r, cy - r, cx + r, cy + r  # circle; triangle (apex at cy - r, base at cy + r)


def grounded_caption(scene: sw.Scene, rng: np.random.Generator, image_size: int
                     ) -> tuple[str, list[list[float]]]:
  """(caption, meta.boxes): every object's expression, in random order, with its box."""
  order = [scene.objects[int(k)] for k in rng.permutation(len(scene.objects))]
  phrases = [expression(o) for o in order]
  text = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
  boxes, at = [], 0
  for o, phrase in zip(order, phrases):
    start = text.index(phrase, at)
    at = start + len(phrase)
    boxes.append([start, at] + [round(v / image_size, 5) for v in object_box(o, image_size)])
  return text, boxes


def grounded_record(record_id: str, source: str, rng: np.random.Generator, maker: Any
                    ) -> dict[str, Any]:
  """A kind=pair record with `meta.boxes`; `maker` is prepare's ImageMaker (it keeps training
  images distinct from eval images)."""
  scene, png = maker.png(lambda: sample_scene(rng))
  text, boxes = grounded_caption(scene, rng, maker.image_size)
  return {"id": record_id, "source": source, "kind": "pair",
          "segments": [{"image": png}, {"text": text}],
          "meta": {"scene": scene.to_dict(), "boxes": boxes}}


def build_refexp(files: dict[str, bytes], counts: dict[str, int], maker: Any,
                 rng: Callable[..., np.random.Generator]) -> dict[str, int]:
  """Adds eval/refexp/ (module docstring) to `files`: `counts` images per split, each with
  one expression per object; returns the expressions per split. `maker.forbidden` collects
  the images' pixel digests (eval images are pairwise distinct and kept out of training)."""
  image_number, out = 0, {}
  for split in SPLITS:
    images, annotations = [], []
    for _ in range(counts.get(split, 0)):
      image_number += 1
      r = rng("refexp", image_number)
      scene, image = maker.unique(lambda: sample_scene(r))
      name = f"COCO_{IMAGE_DIR}_{image_number:012d}.jpg"
      files[f"refexp/{IMAGE_DIR}/{name}"] = sw.encode_image(image, "JPEG")
      for o in scene.objects:
        entry = len(images)
        caption = expression(o)
        x1, y1, x2, y2 = (round(v, 3) for v in object_box(o, maker.image_size))
        images.append({"id": entry, "file_name": name, "caption": caption,
                       "original_id": image_number, "width": maker.image_size,
                       "height": maker.image_size, "dataset_name": REFEXP_NAME,
                       "tokens_negative": [], "scene": scene.to_dict()})
        annotations.append({"id": entry, "image_id": entry, "bbox": [x1, y1, x2 - x1, y2 - y1],
                            "area": round((x2 - x1) * (y2 - y1), 3), "iscrowd": 0,
                            "category_id": sw.SHAPES.index(o.shape) + 1,
                            "original_id": image_number * 10 + o.cell,
                            "tokens_positive": [[0, len(caption)]]})
    files[f"refexp/final_{REFEXP_NAME}_{split}.json"] = json.dumps(
        {"info": {"description": "kosmos synthetic shapes world in MDETR's RefCOCO layout"},
         "licenses": [], "images": images, "annotations": annotations,
         "categories": [{"id": k + 1, "name": s} for k, s in enumerate(sw.SHAPES)]},
        sort_keys=True, separators=(",", ":")).encode()
    out[split] = len(images)
  return out


def boxes_picture(refexp_dir: str, predictions: Sequence[dict[str, Any]], path: str,
                  count: int = 8) -> int:
  """Draws the first `count` predictions of a refcoco run (kosmos-eval's prediction records:
  id, prediction = pixel box or None, boxes = the true ones) on their images, the expression
  as title, true boxes in `TRUE_COLOUR`, predicted in `PREDICTED_COLOUR`; writes a PNG to
  `path` and returns the number of panels."""
  from kosmos.demo import pictures  # pylint: disable=import-outside-toplevel
  plt = pictures.pyplot()
  from matplotlib import patches  # pylint: disable=import-outside-toplevel
  from PIL import Image  # pylint: disable=import-outside-toplevel
  with open(os.path.join(refexp_dir, f"final_{REFEXP_NAME}_val.json"), encoding="utf-8") as f:
    entries = {str(e["id"]): e for e in json.load(f)["images"]}
  shown = [p for p in predictions if str(p["id"]) in entries][:count]
  if not shown:
    raise ValueError(f"none of {len(predictions)} predictions is an expression of "
                     f"{refexp_dir}/final_{REFEXP_NAME}_val.json")
  cols = min(4, len(shown))
  rows = -(-len(shown) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols, 2.5 * rows + 0.4), dpi=100,
                           squeeze=False)
  for ax in axes.flat:
    ax.axis("off")
  for ax, p in zip(axes.flat, shown):
    entry = entries[str(p["id"])]
    with Image.open(os.path.join(refexp_dir, IMAGE_DIR, entry["file_name"])) as im:
      ax.imshow(np.asarray(im.convert("RGB")), interpolation="nearest")
    boxes = [(b, TRUE_COLOUR, "-") for b in p["boxes"]]
    if p["prediction"] is not None:
      boxes.append((p["prediction"], PREDICTED_COLOUR, "--"))
    for (x1, y1, x2, y2), colour, style in boxes:
      # Pixel edges: imshow centres pixel k at k, so pixel boundary x sits at x - 0.5.
      ax.add_patch(patches.Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False,
                                     edgecolor=colour, linewidth=2, linestyle=style))
    ax.set_title(entry["caption"] + ("" if p["prediction"] is not None else "\n(no box)"),
                 fontsize=8)
  fig.suptitle(f"true boxes ({TRUE_COLOUR}, solid) vs predicted ({PREDICTED_COLOUR}, dashed)",
               fontsize=9)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
  return len(shown)
