"""First-fit packing of tokenized documents into rows of `seq_len` with at most M images.

Input elements ("docs", made by `kosmos.data.pipeline`):

    tokens  int32 [l]           `<s> text <image>[N slots]</image> ... </s>` (a boundary
                                whose id is -1 absent: spans are then found from the slots)
    images  uint8 [m, S, S, 3]  one per `<image>` token, in order
    vectors float32 [v, D]      one per vector-slot token, in order (D may be 0)
    kind    int                 KIND_IDS value of the record
    loss    uint8 [l] (optional) 1 where the token, as a target, may carry loss; absent =
                                every token (conversations: only the assistants' answers
                                and their end-of-turn tokens, `kosmos.data.chat`)
    stats   int64 [S_src, R]    per-source counters of this record (STATS columns)

Output rows (one element per row, fixed shapes):

    tokens, targets, segment_ids, positions  int32 [L]
    loss_mask  float32 [L]      1 where the target is text the doc's `loss` allows: 0 on
                                image/vector-slot targets, on padding, on the last position
                                of every document (or piece) and on targets outside `loss`
    kind_ids   int8 [L]         0 padding, 1 text, 2 pair, 3 interleaved, 4 conversation
    images     uint8 [M, S, S, 3], image_mask bool [M]
    vectors    float32 [V, D], vector_mask bool [V]      (only when D > 0)
    stats      int64 [S_src, R] counters of the records this row's generation consumed

Packing works in *generations* of `bins` rows: each doc goes whole into the first row with
room for its tokens, images and vectors. A doc that fits nowhere is split when it may be:
text and interleaved docs (and any doc longer than L or with more than M images) are cut at
the largest legal point that fills a row's remaining room, never inside an image span
`<image> ... </image>`; the head ends that row and the tail goes on as a new document
(positions restart at 0, no extra `<s>`). Nothing is dropped. Pairs shorter than a row are
never split. When the remainder fits nowhere and cannot be cut into a piece of at least
`min_piece` tokens, the generation's rows are emitted in order and the remainder starts
the next generation.

Checkpoint state (JSON): the parent's state before the generation's first doc, the token
offset already consumed of that doc, the number of rows emitted, and the counters at the
generation start; restoring replays the generation (deterministic), so resumed output is
identical. The state never holds pixels.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import grain
import numpy as np

KIND_IDS = {"text": 1, "pair": 2, "interleaved": 3, "conversation": 4}
# Per-source counters carried with each row. "bad_records" counts records with any problem
# (skipped, or repaired by dropping a bad image/vector); it drives config.data.max_bad_fraction.
STATS = ("records", "bad_records", "record_undecodable", "no_content", "pair_without_image",
         "image_empty", "image_too_large", "image_truncated", "image_corrupt", "vector_bad",
         "images_over_doc_cap", "vectors_disabled", "boxes", "boxes_cropped_out", "boxes_bad")
STAT_INDEX = {name: i for i, name in enumerate(STATS)}


class BadDataError(RuntimeError):
  """Raised when a source's bad-record fraction exceeds config.data.max_bad_fraction."""


@dataclasses.dataclass(frozen=True)
class PackSpec:
  seq_len: int
  max_images: int  # M
  image_size: int  # S
  max_vectors: int = 0  # V
  vector_dim: int = 0  # D (0: no vectors in the batch)
  bins: int = 8
  min_piece: int = 16
  image_start_id: int = 4  # -1: absent (spans are then found from the slots)
  image_end_id: int = 5  # -1: absent
  tokens_per_image: int = 0  # N; needed only when a boundary token is absent
  vector_slot_id: int = 7
  image_slot_id: int = 6
  source_names: tuple[str, ...] = ("source",)
  max_bad_fraction: float = 1.0
  bad_check_min_records: int = 1000

  def empty_stats(self) -> np.ndarray:
    return np.zeros((len(self.source_names), len(STATS)), np.int64)


class _Doc:
  """A doc's tokens plus the positions where it may not be cut and where images/vectors are."""

  def __init__(self, element: dict[str, Any], spec: PackSpec):
    self.tokens = np.asarray(element["tokens"], np.int32)
    self.images = element["images"]
    self.vectors = element["vectors"]
    self.kind = int(element["kind"])
    loss = element.get("loss")
    self.loss = (np.ones(len(self.tokens), np.uint8) if loss is None
                 else np.asarray(loss, np.uint8))
    if self.loss.shape != self.tokens.shape:
      raise ValueError(f"doc has {len(self.tokens)} tokens but loss flags {self.loss.shape}")
    # Span s covers [image_starts[s], span_ends[s]); a cut c is illegal when start < c < end.
    if spec.image_start_id >= 0 and spec.image_end_id >= 0:
      self.image_starts = np.flatnonzero(self.tokens == spec.image_start_id)
      self.span_ends = np.flatnonzero(self.tokens == spec.image_end_id) + 1
      if len(self.span_ends) != len(self.image_starts):
        raise ValueError(f"doc has {len(self.image_starts)} image starts but "
                         f"{len(self.span_ends)} image ends")
    else:
      self.image_starts, self.span_ends = _spans_from_slots(self.tokens, spec)
    self.vector_pos = np.flatnonzero(self.tokens == spec.vector_slot_id)
    if len(self.image_starts) != len(self.images) or len(self.vector_pos) != len(self.vectors):
      raise ValueError(f"doc has {len(self.image_starts)} image spans for {len(self.images)} "
                       f"images, {len(self.vector_pos)} vector slots for {len(self.vectors)}")

  def count(self, positions: np.ndarray, lo: int, hi: int) -> int:
    return int(np.searchsorted(positions, hi) - np.searchsorted(positions, lo))

  def legal_cut(self, c: int) -> int:
    """The largest legal cut <= c (cuts inside an image span move to its start)."""
    i = int(np.searchsorted(self.image_starts, c)) - 1  # last span starting before c
    if i >= 0 and c < self.span_ends[i]:
      return int(self.image_starts[i])
    return c


def _spans_from_slots(tokens: np.ndarray, spec: PackSpec) -> tuple[np.ndarray, np.ndarray]:
  """(starts, ends) of the image spans when `<image>` or `</image>` is absent (-1): the slot
  tokens in runs of `tokens_per_image`, widened by the boundary that exists."""
  n = spec.tokens_per_image
  if n < 1:
    raise ValueError("PackSpec.tokens_per_image must be >= 1 when image_start_id or "
                     "image_end_id is -1 (image spans are then found from their slots)")
  slots = np.flatnonzero(tokens == spec.image_slot_id)
  runs = slots.reshape(-1, n) if len(slots) % n == 0 else None
  if runs is None or (np.diff(runs, axis=1) != 1).any():
    raise ValueError(f"doc's {len(slots)} image slots are not runs of tokens_per_image={n}")
  starts = runs[:, 0] - (spec.image_start_id >= 0)
  ends = runs[:, -1] + 1 + (spec.image_end_id >= 0)
  if (spec.image_start_id >= 0 and (tokens[starts] != spec.image_start_id).any()) or (
      spec.image_end_id >= 0 and (tokens[ends - 1] != spec.image_end_id).any()):
    raise ValueError("doc has an image span without its <image> or </image> token")
  return starts, ends


@dataclasses.dataclass
class _Bin:
  pieces: list  # (doc, lo, hi)
  used: int = 0
  images: int = 0
  vectors: int = 0


class _PackIterator(grain.DatasetIterator):

  def __init__(self, parent: grain.DatasetIterator, spec: PackSpec):
    super().__init__(parent)
    self._spec = spec
    self._rows: list[dict[str, np.ndarray]] | None = None
    self._next_row = 0
    self._totals = spec.empty_stats()
    self._gen_totals = self._totals.copy()
    self._gen_parent_state = None
    self._gen_offset = 0
    self._pending = None  # (parent state before doc, element, offset) for the next generation
    self._exhausted = False

  # -- state ---------------------------------------------------------------------------
  def get_state(self) -> dict[str, Any]:
    if self._rows is not None and self._next_row < len(self._rows):
      return {"parent": self._gen_parent_state, "offset": self._gen_offset,
              "next_row": self._next_row, "totals": self._gen_totals.tolist()}
    if self._pending is not None:
      state, _, offset = self._pending
      return {"parent": state, "offset": offset, "next_row": 0, "totals": self._totals.tolist()}
    return {"parent": self._parent.get_state(), "offset": 0, "next_row": 0,
            "totals": self._totals.tolist()}

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(state["parent"])
    self._totals = np.asarray(state["totals"], np.int64).reshape(self._spec.empty_stats().shape)
    self._pending = None
    self._exhausted = False
    self._rows = None
    self._next_row = 0
    if state["offset"] or state["next_row"]:
      element = next(self._parent)
      self._pending = (state["parent"], element, int(state["offset"]))
      self._build_generation()
      self._next_row = int(state["next_row"])

  # -- iteration -----------------------------------------------------------------------
  def __next__(self) -> dict[str, np.ndarray]:
    while self._rows is None or self._next_row >= len(self._rows):
      if self._exhausted:
        raise StopIteration
      self._build_generation()
    row = self._rows[self._next_row]
    self._next_row += 1
    return row

  def _count(self, element: dict[str, Any]) -> np.ndarray:
    stats = np.asarray(element["stats"], np.int64)
    self._totals += stats
    spec = self._spec
    for s in np.flatnonzero(stats[:, STAT_INDEX["records"]]):
      records = self._totals[s, STAT_INDEX["records"]]
      bad = self._totals[s, STAT_INDEX["bad_records"]]
      if records >= spec.bad_check_min_records and bad > spec.max_bad_fraction * records:
        reasons = {name: int(self._totals[s, i]) for i, name in enumerate(STATS)
                   if i >= 2 and self._totals[s, i]}
        raise BadDataError(
            f"data source {spec.source_names[s]!r}: {bad} of {records} records were bad "
            f"({reasons}), above config.data.max_bad_fraction={spec.max_bad_fraction}; "
            "check the source's shards (data/prepare.py) or raise the limit")
    return stats

  def _build_generation(self) -> None:
    spec = self._spec
    self._gen_totals = self._totals.copy()
    delta = spec.empty_stats()
    bins = [_Bin([]) for _ in range(spec.bins)]
    if self._pending is not None:
      state, element, offset = self._pending
      self._pending = None
    else:
      state, offset = self._parent.get_state(), 0
      element = self._next_element()
    self._gen_parent_state, self._gen_offset = state, offset
    while element is not None:
      tokens = element["tokens"]
      if len(tokens) == 0:  # a skipped record: only its counters matter
        delta += self._count(element)
      else:
        doc = _Doc(element, spec)
        new_offset = _place(doc, offset, bins, spec)
        if offset == 0 and new_offset > 0:
          delta += self._count(element)
        if new_offset < len(doc.tokens):
          self._pending = (state, element, new_offset)
          break
      state, offset = self._parent.get_state(), 0
      element = self._next_element()
    rows = [_row(b, spec) for b in bins if b.pieces]
    if not rows and self._pending is not None:
      raise ValueError(f"a document cannot be placed into an empty row of {spec}; its image "
                       "span or vectors do not fit a row (check seq_len, M, max_vectors)")
    if rows:
      rows[0]["stats"] = rows[0]["stats"] + delta
    self._rows, self._next_row = rows, 0

  def _next_element(self) -> dict[str, Any] | None:
    try:
      return next(self._parent)
    except StopIteration:
      self._exhausted = True
      return None


def _place(doc: _Doc, offset: int, bins: list[_Bin], spec: PackSpec) -> int:
  """Places doc.tokens[offset:] into bins (whole, else in cut pieces); returns the new offset."""
  length = len(doc.tokens)
  splittable_kind = doc.kind != KIND_IDS["pair"]
  while offset < length:
    n_img = doc.count(doc.image_starts, offset, length)
    n_vec = doc.count(doc.vector_pos, offset, length)
    for b in bins:
      if (b.used + length - offset <= spec.seq_len and b.images + n_img <= spec.max_images
          and b.vectors + n_vec <= spec.max_vectors):
        _add(b, doc, offset, length)
        return length
    oversized = (length - offset > spec.seq_len or n_img > spec.max_images
                 or n_vec > spec.max_vectors)
    if not (splittable_kind or oversized):
      return offset
    for b in bins:
      cut = _largest_cut(doc, offset, b, spec)
      if cut is not None:
        _add(b, doc, offset, cut)
        offset = cut
        break
    else:
      return offset
  return offset


def _largest_cut(doc: _Doc, offset: int, b: _Bin, spec: PackSpec) -> int | None:
  room = spec.seq_len - b.used
  cut = doc.legal_cut(min(offset + room, len(doc.tokens) - 1))
  free_images = spec.max_images - b.images
  starts = doc.image_starts[np.searchsorted(doc.image_starts, offset):]
  if len(starts) > free_images:
    cut = min(cut, int(starts[free_images]))
  vec = doc.vector_pos[np.searchsorted(doc.vector_pos, offset):]
  free_vectors = spec.max_vectors - b.vectors
  if len(vec) > free_vectors:
    cut = min(cut, int(vec[free_vectors]))
  min_piece = 1 if not b.pieces else spec.min_piece
  return cut if cut - offset >= min_piece else None


def _add(b: _Bin, doc: _Doc, lo: int, hi: int) -> None:
  b.pieces.append((doc, lo, hi))
  b.used += hi - lo
  b.images += doc.count(doc.image_starts, lo, hi)
  b.vectors += doc.count(doc.vector_pos, lo, hi)


def _row(b: _Bin, spec: PackSpec) -> dict[str, np.ndarray]:
  """Builds one row's arrays from its pieces (each piece is its own document)."""
  L = spec.seq_len
  tokens = np.zeros(L, np.int32)
  targets = np.zeros(L, np.int32)
  loss_mask = np.zeros(L, np.float32)
  segment_ids = np.zeros(L, np.int32)
  positions = np.zeros(L, np.int32)
  kind_ids = np.zeros(L, np.int8)
  images = np.zeros((spec.max_images, spec.image_size, spec.image_size, 3), np.uint8)
  image_mask = np.zeros(spec.max_images, bool)
  vectors = np.zeros((spec.max_vectors, spec.vector_dim), np.float32)
  vector_mask = np.zeros(spec.max_vectors, bool)
  at = n_img = n_vec = 0
  for segment, (doc, lo, hi) in enumerate(b.pieces, start=1):
    n = hi - lo
    piece = doc.tokens[lo:hi]
    tokens[at:at + n] = piece
    targets[at:at + n - 1] = piece[1:]
    mask = np.zeros(n, np.float32)
    mask[:-1] = doc.loss[lo + 1:hi]
    mask[:-1][(piece[1:] == spec.image_slot_id) | (piece[1:] == spec.vector_slot_id)] = 0.0
    loss_mask[at:at + n] = mask
    segment_ids[at:at + n] = segment
    positions[at:at + n] = np.arange(n, dtype=np.int32)
    kind_ids[at:at + n] = doc.kind
    i0, i1 = np.searchsorted(doc.image_starts, lo), np.searchsorted(doc.image_starts, hi)
    images[n_img:n_img + i1 - i0] = doc.images[i0:i1]
    image_mask[n_img:n_img + i1 - i0] = True
    n_img += i1 - i0
    v0, v1 = np.searchsorted(doc.vector_pos, lo), np.searchsorted(doc.vector_pos, hi)
    if spec.vector_dim:
      vectors[n_vec:n_vec + v1 - v0] = doc.vectors[v0:v1]
      vector_mask[n_vec:n_vec + v1 - v0] = True
    n_vec += v1 - v0
    at += n
  row = dict(tokens=tokens, targets=targets, loss_mask=loss_mask, segment_ids=segment_ids,
             positions=positions, kind_ids=kind_ids, images=images, image_mask=image_mask,
             stats=spec.empty_stats())
  if spec.vector_dim:
    row.update(vectors=vectors, vector_mask=vector_mask)
  return row


class PackIterDataset(grain.IterDataset):
  """Packs docs into rows (see the module docstring); checkpointable."""

  def __init__(self, parent: grain.IterDataset, spec: PackSpec):
    super().__init__(parent)
    if spec.seq_len < 4 or spec.max_images < 1 or spec.bins < 1:
      raise ValueError(f"bad packing spec {spec}: need seq_len >= 4, max_images >= 1, bins >= 1")
    self._spec = spec

  def __iter__(self) -> _PackIterator:
    return _PackIterator(self._parent.__iter__(), self._spec)

  def __str__(self) -> str:
    return f"PackIterDataset(seq_len={self._spec.seq_len}, M={self._spec.max_images})"
