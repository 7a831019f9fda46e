"""KOSMOS-2 location tokens: boxes <-> `<patch_index_NNNN>` tokens, grounded text <-> ids.

The image is a P x P grid (KOSMOS-2: P = 32); cell k (row-major) is `<patch_index_k>` (four
digits). A box is its top-left and bottom-right cells; text links a phrase to its boxes as

    <phrase> a snowman</phrase><object><patch_index_0044><patch_index_0863></object>

several boxes of one phrase joined by `</delimiter_of_multi_objects/>`; `<grounding>` first
in a prompt asks for grounded output. Boxes are normalised (x1, y1, x2, y2) in [0, 1] of the
image the model sees (after resize and centre crop); `to_pixels` scales them.

Three layers:
* text: `box_to_cells` / `cells_to_box` (transformers' `coordinate_to_patch_index` /
  `patch_index_to_coordinate`), `render` (phrases with boxes -> tagged text) and `parse`
  (tagged text -> clean text and entities, equal to `Kosmos2Processor.post_process_generation`,
  malformed input included: unclosed tags, a box with one index and indices outside the grid
  are parsed as transformers parses them, never raised on);
* ids: `Grounding(tokenizer, config.tokenizer.grounding)` encodes tagged text (tags become
  their ids, the text between them the tokenizer's ids) and decodes ids back to tagged text
  with transformers' spacing, so `parse(decode(ids))` is what transformers reports;
* config: `config.tokenizer.grounding` (`kosmos.defaults.grounding`): `grid` (0 = off) and the
  ids of the six tags and of `<patch_index_0000>` (the P*P cells follow it). `kosmos2_ids`
  gives transformers' ids for a Kosmos-2 vocabulary, `trained_ids` the layout that
  `train_tokenizer(..., grounding_grid=P)` writes (user-defined pieces after the controls).

As transformers' processor marks its added tokens `lstrip`, whitespace right before a tag is
dropped when encoding (`a cat </phrase>` encodes as `a cat</phrase>`).
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Iterable, Sequence

import ml_collections

# The six tags in their Kosmos-2 vocabulary order (consecutive ids there and in trained models).
TAGS = ("<phrase>", "</phrase>", "<object>", "</object>", "</delimiter_of_multi_objects/>",
        "<grounding>")
TAG_FIELDS = ("phrase_id", "phrase_end_id", "object_id", "object_end_id", "delimiter_id",
              "grounding_id")
PHRASE, PHRASE_END, OBJECT, OBJECT_END, DELIMITER, GROUNDING = TAGS
KOSMOS2_GRID = 32

Box = tuple[float, float, float, float]


def patch_token(cell: int) -> str:
  return f"<patch_index_{cell:04d}>"


# ----------------------------------------------------------------------------- boxes


def box_to_cells(box: Sequence[float], grid: int) -> tuple[int, int]:
  """Normalised (x1, y1, x2, y2) -> (top-left cell, bottom-right cell) of a grid x grid image.

  As transformers' `coordinate_to_patch_index`: floor of the top-left corner, ceil(x * P - 1)
  of the bottom-right one. Raises ValueError unless x2 > x1 and y2 > y1 and the box lies in
  [0, 1] (a converter checks boxes before; see `kosmos.data.convert.grit`).
  """
  x1, y1, x2, y2 = (float(v) for v in box)
  if not (0.0 <= x1 < x2 <= 1.0 and 0.0 <= y1 < y2 <= 1.0):
    raise ValueError(f"box {tuple(box)} is not normalised (x1, y1, x2, y2) with "
                     "0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1")
  left, top = math.floor(x1 * grid), math.floor(y1 * grid)
  right, bottom = math.ceil(x2 * grid - 1), math.ceil(y2 * grid - 1)
  return top * grid + left, bottom * grid + right


def cells_to_box(first: int, last: int, grid: int) -> Box:
  """(top-left cell, bottom-right cell) -> normalised (x1, y1, x2, y2).

  As transformers' `patch_index_to_coordinate`: a box spanning one row or one column of
  cells covers them whole; otherwise it runs from cell centre to cell centre. Cells outside
  the grid are not refused (their rows lie below the image: y >= 1).
  """
  step = 1.0 / grid
  col0, row0 = first % grid, first // grid
  col1, row1 = last % grid, last // grid
  if col0 == col1 or row0 == row1:  # also first == last
    return col0 * step, row0 * step, col1 * step + step, row1 * step + step
  half = step / 2
  return col0 * step + half, row0 * step + half, col1 * step + half, row1 * step + half


def to_pixels(box: Sequence[float], width: int, height: int) -> Box:
  """A normalised box in pixels of a width x height image."""
  x1, y1, x2, y2 = box
  return x1 * width, y1 * height, x2 * width, y2 * height


def iou(a: Sequence[float], b: Sequence[float]) -> float:
  """Intersection over union of two (x1, y1, x2, y2) boxes (0 when either has no area)."""
  w = min(a[2], b[2]) - max(a[0], b[0])
  h = min(a[3], b[3]) - max(a[1], b[1])
  inter = max(w, 0.0) * max(h, 0.0)
  union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
  return inter / union if inter > 0 and union > 0 else 0.0


# ----------------------------------------------------------------------------- text


@dataclasses.dataclass(frozen=True)
class Entity:
  """A phrase of the clean text, its [start, end) characters there, its normalised boxes."""
  phrase: str
  span: tuple[int, int]
  boxes: tuple[Box, ...]


def object_text(cells: Iterable[tuple[int, int]]) -> str:
  """`<object>` + the boxes' cell tokens joined by the delimiter + `</object>`."""
  return OBJECT + DELIMITER.join(patch_token(a) + patch_token(b) for a, b in cells) + OBJECT_END


def render(text: str, phrases: Iterable[tuple[int, int, Sequence[Box]]], grid: int) -> str:
  """Tagged text: each (start, end, boxes) span of `text` becomes `<phrase>...</phrase>`
  followed by its boxes' `<object>`. Spans must not overlap; a space right before a span moves
  inside the phrase, as in Kosmos-2's data (`of<phrase> a snowman</phrase>`), and a phrase
  that starts the text gets one (`<phrase> a snowman</phrase>`, as KOSMOS-2 writes it and as
  the grounding eval prompts put it after `<grounding>`)."""
  out, at = [], 0
  for start, end, boxes in sorted(phrases, key=lambda p: p[0]):
    if not 0 <= at <= start < end <= len(text):
      raise ValueError(f"phrase span [{start}, {end}) overlaps the previous one or lies outside "
                       f"the text of {len(text)} characters")
    while start > at and text[start - 1] == " ":
      start -= 1
    phrase = text[start:end]
    if start == 0 and not phrase.startswith(" "):  # first in the text: word-initial too
      phrase = " " + phrase
    out += [text[at:start], PHRASE, phrase, PHRASE_END,
            object_text(box_to_cells(b, grid) for b in boxes)]
    at = end
  out.append(text[at:])
  return "".join(out)


# One linked object: an optional phrase (no "<" inside), then one or more cell pairs.
_PAIR = r"<patch_index_(?:\d+)><patch_index_(?:\d+)>"
_ENTITY = re.compile(rf"(?:<phrase>([^<]+)</phrase>)?<object>((?:{_PAIR}"
                     rf"</delimiter_of_multi_objects/>)*{_PAIR})</object>")
_CELL = re.compile(r"<patch_index_(\d+)>")
_ANY_TAG = re.compile(r"<.*?>")


def _clean_length(text: str) -> int:
  return len(_ANY_TAG.sub("", text))


def linked(text: str) -> list[tuple[str, tuple[int, int], list[tuple[int, int]]]]:
  """(phrase, its [start, end) in `text`, its (first, last) cells) of every `<object>`, as
  transformers' `extract_entities_with_patch_indices`.

  An `<object>` with no phrase right before it gives one entry per box, named by its cells
  (`<patch_index_44><patch_index_863>`, no padding) with an empty span at the object;
  anything not matching the full form (unclosed, a box with one index) is left as text.
  """
  out = []
  for match in _ENTITY.finditer(text):
    cells = [tuple(int(c) for c in _CELL.findall(pair))
             for pair in match.group(2).split(DELIMITER)]
    if match.group(1) is not None:
      out.append((match.group(1), match.span(1), cells))
    else:
      at = match.start()
      out += [(f"<patch_index_{a}><patch_index_{b}>", (at, at), [(a, b)]) for a, b in cells]
  return out


def parse(text: str, grid: int = KOSMOS2_GRID) -> tuple[str, list[Entity]]:
  """(clean text, entities) of generated text: what transformers'
  `Kosmos2Processor.post_process_generation(text)` returns.

  Everything up to the last `</image>` is dropped; every `<...>` is removed from the clean
  text, which is stripped; entity spans index the clean text, phrases are stripped; cells
  become normalised boxes (`cells_to_box`, never refused: a cell past the grid lies below it).
  """
  text = text.split("</image>")[-1]
  clean = _ANY_TAG.sub("", text)
  lead = len(clean) - len(clean.lstrip())
  entities = []
  for name, (start, end), cells in linked(text):
    start = _clean_length(text[:start]) - lead + len(name) - len(name.lstrip())
    end = _clean_length(text[:end]) - lead - (len(name) - len(name.rstrip()))
    entities.append(Entity(name.strip(), (start, end),
                           tuple(cells_to_box(a, b, grid) for a, b in cells)))
  return clean.strip(), entities


# ----------------------------------------------------------------------------- config and ids


def kosmos2_ids(vocab_size: int) -> dict[str, int]:
  """transformers' Kosmos-2 ids (`<phrase>` 64007 .. `<grounding>` 64012, `<patch_index_0000>`
  64013 of 65037): the six tags, then 1024 cells, end the vocabulary."""
  first = vocab_size - KOSMOS2_GRID ** 2 - len(TAGS)
  return dict(grid=KOSMOS2_GRID, first_patch_id=first + len(TAGS),
              **{field: first + k for k, field in enumerate(TAG_FIELDS)})


def trained_ids(first_id: int, grid: int) -> dict[str, int]:
  """The six tags from `first_id` on, then the grid x grid cells (a trained model's pieces)."""
  return dict(grid=grid, first_patch_id=first_id + len(TAGS),
              **{field: first_id + k for k, field in enumerate(TAG_FIELDS)})


def pieces(grid: int) -> list[str]:
  """The tag and cell pieces of a grid, in id order (`trained_ids`)."""
  return list(TAGS) + [patch_token(k) for k in range(grid * grid)]


class Grounding:
  """Tagged text <-> ids for one tokenizer and its `config.tokenizer.grounding` section."""

  def __init__(self, tok, config: ml_collections.ConfigDict):
    self.tok = tok
    self.grid = int(config.grid)
    if self.grid < 1:
      raise ValueError(f"config.tokenizer.grounding.grid={self.grid}: grounding is off (set a "
                       "grid, e.g. 32 with kosmos.data.grounding.kosmos2_ids or trained_ids)")
    self.tag_ids = {tag: int(config[field]) for tag, field in zip(TAGS, TAG_FIELDS)}
    self.first_patch_id = int(config.first_patch_id)
    cells = range(self.first_patch_id, self.first_patch_id + self.grid ** 2)
    taken = list(self.tag_ids.values()) + [self.first_patch_id]
    bad = [f"{field}={i}" for field, i in zip(TAG_FIELDS + ("first_patch_id",), taken)
           if i < 0 or i in tok.special_ids or (i in cells and field != "first_patch_id")]
    if bad or len(set(self.tag_ids.values())) != len(TAGS):
      raise ValueError(f"config.tokenizer.grounding ids must be >= 0, distinct, outside the "
                       f"special ids {sorted(tok.special_ids)} and the cell range "
                       f"[{cells.start}, {cells.stop}); got {dict(config)} (bad: {bad})")
    self.id_to_text = {i: tag for tag, i in self.tag_ids.items()}
    self.id_to_text.update((i, patch_token(i - cells.start)) for i in cells)
    cell_pattern = r"<patch_index_(\d{4})>"
    self._split = re.compile("|".join([re.escape(t) for t in TAGS] + [cell_pattern]))

  def ids(self) -> frozenset[int]:
    return frozenset(self.id_to_text)

  def encode(self, text: str) -> list[int]:
    """Ids of tagged text: tags and in-grid cells as their ids, other text `tok.encode`d."""
    out, at = [], 0
    for match in self._split.finditer(text):
      cell = match.group(1)
      if cell is not None and int(cell) >= self.grid ** 2:
        continue  # not a cell of this grid: plain text
      out += self.tok.encode(text[at:match.start()].rstrip())
      out.append(self.tag_ids[match.group()] if cell is None else self.first_patch_id + int(cell))
      at = match.end()
    return out + self.tok.encode(text[at:])

  def decode(self, ids: Iterable[int], continuation: bool = False) -> str:
    """Tagged text of ids (specials skipped), spaced as transformers decodes Kosmos-2 output:
    a word-initial piece after a tag keeps its space (`of<phrase> a snowman</phrase>`), and
    so does the first one when `continuation` (ids that continue a prompt)."""
    out: list[str] = []
    run: list[int] = []

    def flush() -> None:
      if run:
        space_before = getattr(self.tok, "space_before", None)
        text = self.tok.decode(run)
        if (out or continuation) and text and space_before is not None and space_before(run[0]):
          text = " " + text
        out.append(text)
        run.clear()

    for i in ids:
      i = int(i)
      if i in self.id_to_text:
        flush()
        out.append(self.id_to_text[i])
      elif i not in self.tok.special_ids:
        run.append(i)
    flush()
    return "".join(out)


def location_ids(config: ml_collections.ConfigDict) -> frozenset[int]:
  """The tag and cell ids of `config.tokenizer`'s grounding section (none when it is off or
  absent, as in workdirs saved before it existed)."""
  section = config.get("grounding")
  if section is None or int(section.grid) <= 0:
    return frozenset()
  first = int(section.first_patch_id)
  return (frozenset(int(section[f]) for f in TAG_FIELDS)
          | frozenset(range(first, first + int(section.grid) ** 2)))


def check_vocab(config: ml_collections.ConfigDict, vocab_size: int) -> None:
  """Raises ValueError when the location ids of `config.tokenizer` (grounding on) do not fit
  a model vocabulary of `vocab_size` (they would index past its embedding table)."""
  last = max(location_ids(config), default=-1)
  if last >= vocab_size:
    raise ValueError(f"config.tokenizer.grounding uses ids up to {last}, outside "
                     f"model.decoder.vocab_size={vocab_size}: grow the vocabulary to at least "
                     f"{last + 1} or move the location tokens")


def load(tok, config: ml_collections.ConfigDict) -> Grounding | None:
  """The `Grounding` of `config.tokenizer` (None when its grounding section is off or absent)."""
  section = config.get("grounding")
  if section is None or int(section.grid) <= 0:
    return None
  return Grounding(tok, section)
