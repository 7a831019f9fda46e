"""Boxes in few-shot prompts and generated boxes back to pixels (KOSMOS-2's grounding evals).

An example's `boxes` are pixels of its original image; the model sees that image resized
and centre-cropped (`kosmos.data.images`). `with_objects` writes each example's boxes into
its `object` field as location tokens on that crop (`<object><patch_index_..>..</object>`,
all boxes of the example joined by the delimiter), so templates place them: the
demonstrations' targets of referring expression comprehension and phrase grounding, the
region of referring expression generation. `predicted_box` reads the first box generated
for the query's phrase and maps it back to pixels of the original image, where it is
compared with the reference boxes (`kosmos.eval.metrics.box_accuracy`).

How this differs from KOSMOS-2's own evaluation: KOSMOS-2 resizes an image to 224 x 224
without keeping its aspect; kosmos keeps it and centre-crops, so a reference box partly
outside the crop can only be found in its visible part (a box wholly outside the crop is
shown as the whole image in a prompt, the closest the grid allows).
"""

from __future__ import annotations

import dataclasses
import io
from typing import Any, Sequence

from PIL import Image

from kosmos.data import grounding
from kosmos.data import images as images_lib
from kosmos.eval.tasks.example import Example

Size = tuple[int, int]
WHOLE = (0.0, 0.0, 1.0, 1.0)


def image_size(example: Example) -> Size:
  """(width, height) of the example's first image, from its header (the stored orientation:
  an image with an EXIF rotation is shown upright, its boxes are not rotated)."""
  images = example.images()
  if not images:
    raise ValueError(f"example {example.id!r} has boxes but no image")
  with Image.open(io.BytesIO(images[0])) as im:
    return im.size


def crop_boxes(boxes: Sequence[Sequence[float]], size: Size, crop: int) -> list[tuple]:
  """Pixel boxes -> normalised on the centre crop the model sees (clipped; WHOLE when none
  of a box is visible)."""
  w, h = size
  out = []
  for x1, y1, x2, y2 in boxes:
    box = images_lib.crop_box((x1 / w, y1 / h, x2 / w, y2 / h), w, h, crop, min_visible=0.0)
    out.append(box or WHOLE)
  return out


def object_text(boxes: Sequence[Sequence[float]], size: Size, crop: int, grid: int) -> str:
  return grounding.object_text(grounding.box_to_cells(b, grid)
                               for b in crop_boxes(boxes, size, crop))


def with_objects(examples: Sequence[Example], crop: int, grid: int,
                 sizes: dict[str, Size]) -> list[Example]:
  """Examples with `fields["object"]` set from their boxes (those without boxes unchanged);
  fills `sizes` {example id: image (width, height)}."""
  out = []
  for e in examples:
    if not e.boxes:
      out.append(e)
      continue
    if e.id not in sizes:
      sizes[e.id] = image_size(e)
    fields = dict(e.fields, object=object_text(e.boxes, sizes[e.id], crop, grid))
    out.append(dataclasses.replace(e, fields=fields))
  return out


def predicted_box(prompt_text: str, tagged: str, phrase: str, size: Size, crop: int,
                  grid: int) -> tuple[float, float, float, float] | None:
  """The first box linked to `phrase` in the query's prompt text + its generated
  continuation, in pixels of the original image; None when the model linked none."""
  _, entities = grounding.parse(prompt_text + tagged, grid)
  for entity in entities:
    if entity.phrase == phrase.strip() and entity.boxes:
      x1, y1, x2, y2 = images_lib.uncrop_box(entity.boxes[0], *size, crop)
      return grounding.to_pixels((x1, y1, x2, y2), *size)
  return None


def prediction(query: Example, prompt_text: str, tagged: str, size: Size, crop: int,
               grid: int) -> dict[str, Any]:
  """A GROUNDING prediction record: the box (pixels or None), the raw tagged text and the
  reference boxes."""
  box = predicted_box(prompt_text, tagged, query.fields["phrase"], size, crop, grid)
  return {"id": query.id, "prediction": list(box) if box else None, "raw": tagged,
          "boxes": [list(b) for b in query.boxes]}
