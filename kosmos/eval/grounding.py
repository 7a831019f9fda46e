"""Boxes in few-shot prompts and generated boxes back to pixels (KOSMOS-2's grounding evals).

An example's `boxes` are pixels of its image as stored (the frame annotation tools of
COCO's and Flickr30k's time drew on: they ignored EXIF orientation); the model sees that
image turned upright by its EXIF orientation, resized and centre-cropped
(`kosmos.data.images`), and the boxes are turned with it. `with_objects` writes each example's boxes into
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
from typing import Any, NamedTuple, Sequence

from PIL import Image

from kosmos.data import grounding
from kosmos.data import images as images_lib
from kosmos.eval.tasks.example import Example

WHOLE = (0.0, 0.0, 1.0, 1.0)


class Size(NamedTuple):
  """An example's image as stored: width and height in pixels (the frame of its boxes), and
  the EXIF orientation that turns it upright, as the model sees it. A plain (width, height)
  pair means orientation 1."""
  width: int
  height: int
  orientation: int = 1

  def upright(self) -> tuple[int, int]:
    """(width, height) of the image the model sees, before resizing."""
    if images_lib.swaps_axes(self.orientation):
      return self.height, self.width
    return self.width, self.height


def image_size(example: Example) -> Size:
  """The stored size and EXIF orientation of the example's first image, from its header."""
  images = example.images()
  if not images:
    raise ValueError(f"example {example.id!r} has boxes but no image")
  with Image.open(io.BytesIO(images[0])) as im:
    return Size(*im.size, images_lib.orientation(im))


def crop_boxes(boxes: Sequence[Sequence[float]], size: Sequence[int], crop: int
               ) -> list[tuple]:
  """Pixel boxes of the stored image -> normalised on the upright centre crop the model
  sees (clipped; WHOLE when none of a box is visible)."""
  size = Size(*size)
  w, h = size.width, size.height
  out = []
  for x1, y1, x2, y2 in boxes:
    box = images_lib.orient_box((x1 / w, y1 / h, x2 / w, y2 / h), size.orientation)
    box = images_lib.crop_box(box, *size.upright(), crop, min_visible=0.0)
    out.append(box or WHOLE)
  return out


def object_text(boxes: Sequence[Sequence[float]], size: Sequence[int], crop: int,
                grid: int) -> str:
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


def predicted_box(prompt_text: str, tagged: str, phrase: str, size: Sequence[int], crop: int,
                  grid: int) -> tuple[float, float, float, float] | None:
  """The first box linked to `phrase` in the query's prompt text + its generated
  continuation, in pixels of the stored image; None when the model linked none."""
  size = Size(*size)
  _, entities = grounding.parse(prompt_text + tagged, grid)
  for entity in entities:
    if entity.phrase == phrase.strip() and entity.boxes:
      box = images_lib.uncrop_box(entity.boxes[0], *size.upright(), crop)
      box = images_lib.orient_box(box, size.orientation, inverse=True)
      return grounding.to_pixels(box, size.width, size.height)
  return None


def prediction(query: Example, prompt_text: str, tagged: str, size: Sequence[int], crop: int,
               grid: int) -> dict[str, Any]:
  """A GROUNDING prediction record: the box (pixels or None), the raw tagged text and the
  reference boxes."""
  box = predicted_box(prompt_text, tagged, query.fields["phrase"], size, crop, grid)
  return {"id": query.id, "prediction": list(box) if box else None, "raw": tagged,
          "boxes": [list(b) for b in query.boxes]}
