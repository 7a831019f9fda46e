"""The Grain input pipeline: record shards -> packed, mixed, batched numpy dicts.

Per source (`config.data.sources[name] = {path, kind, weight}`):

    ArrayRecordDataSource(shards) -> MapDataset.source -> shuffle(seed) -> this process's
    slice [process_index::process_count] -> repeat (reshuffled each epoch)
    -> map(RecordToDoc: decode record, decode images, tokenize)  -> to_iter_dataset

then `IterDataset.mix` of the sources' docs (proportions = token share / mean tokens per doc,
estimated from `mix_estimate_records` records of each source) -> first-fit packing into rows
(`kosmos.data.packing`; rows mix kinds, `kind_ids` tells them apart) -> batch(B_process)
-> `mp_prefetch(workers)`.

Mixing documents *before* packing (rather than packing each source and mixing rows) lets text
fill the room that image-limited pair rows leave, which keeps packing efficiency high; the
token shares are met because the proportions are per-document token-corrected.

A batch (host-local numpy, B = global_batch_size / process_count, L = seq_len):

    tokens, targets, segment_ids, positions  int32 [B, L]
    loss_mask   float32 [B, L]     (see kosmos.data.packing)
    kind_ids    int8 [B, L]        0 padding, 1 text, 2 pair, 3 interleaved
    images      uint8 [B, M, S, S, 3],  image_mask bool [B, M]
    vectors     float32 [B, V, D],  vector_mask bool [B, V]   (when vectors are configured)
    data_stats  {"<source>/<counter>": int}  counts for the records consumed since the
                previous batch of the same worker (`packing.STATS`); NOT a device array:
                the trainer pops it and sums (`accumulate_stats`).

Token sequences: text `<s> text </s>`; pair `<s> <image>[N slots]</image> caption </s>`
(image first whatever the record's order); a pair whose `meta.boxes` holds
`[start, end, x1, y1, x2, y2]` phrases (`data/prepare.py grit`), with grounding on
(`config.tokenizer.grounding.grid` > 0), has a grounded caption: `<grounding>` then the
caption with location tokens (`kosmos.data.grounding.render`), each box first moved onto the
resized, centre-cropped image (`images.crop_box`; dropped when cropped out: `boxes_cropped_out`;
kept: `boxes`; boxes that cannot be rendered leave the caption plain: `boxes_bad`);
interleaved in record order, at most
`max_images_per_doc` images (the rest are dropped and counted); vector segments become one
vector-slot token each. A conversation is rendered by the chat template of
`config.tokenizer.chat_template` (`kosmos.data.chat`: `<s>`, system prompt, role markers,
turns, images in their turns) and its doc carries `loss` flags, so only the assistants'
answers and their end-of-turn tokens are targets with loss (`kosmos.data.packing`), in
whatever rows its pieces land; one with more than `max_images_per_row` images is skipped.

Bad input: an undecodable record (also a conversation the chat template cannot render: a
vector segment, a text that is not a string), a pair or conversation with a bad image, a
record with no content is skipped; a bad image in an interleaved record is dropped (the
rest is kept); all counted by reason and source. When a source's bad-record fraction exceeds
`max_bad_fraction` (after `bad_check_min_records` records) the iterator raises
`packing.BadDataError` naming it.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

from absl import flags
import grain
from etils import epath
import ml_collections
import numpy as np

from kosmos.data import chat
from kosmos.data import grounding as grounding_lib
from kosmos.data import images as images_lib
from kosmos.data import packing
from kosmos.data import records
from kosmos.data import tokenizer as tokenizer_lib

KIND_IDS = packing.KIND_IDS
S = packing.STAT_INDEX


@dataclasses.dataclass(frozen=True)
class DocSpec:
  """What RecordToDoc needs; picklable (the tokenizer is loaded lazily in each process)."""
  tokenizer: dict
  source_index: int
  num_sources: int
  image_size: int
  tokens_per_image: int
  max_images_per_doc: int
  max_image_pixels: int
  vector_dim: int  # 0 = vectors off


class RecordToDoc(grain.transforms.Map):
  """Encoded record bytes -> a doc dict for `packing` (never raises on bad data)."""

  def __init__(self, spec: DocSpec):
    self.spec = spec
    self._tok = None
    self._grounding = False
    self._template = None

  @property
  def tok(self) -> tokenizer_lib.Tokenizer:
    if self._tok is None:
      self._tok = tokenizer_lib.load(ml_collections.ConfigDict(self.spec.tokenizer))
    return self._tok

  @property
  def grounding(self) -> grounding_lib.Grounding | None:
    if self._grounding is False:  # not loaded yet (None: grounding is off)
      self._grounding = grounding_lib.load(self.tok, ml_collections.ConfigDict(self.spec.tokenizer))
    return self._grounding

  def __getstate__(self):
    return {"spec": self.spec, "_tok": None, "_grounding": False, "_template": None}

  def _grounded(self, text: str, boxes: Any, size: tuple[int, int] | None,
                counts: np.ndarray) -> list[int]:
    """Ids of a caption with its boxes as location tokens (module docstring)."""
    g = self.grounding
    phrases: dict[tuple[int, int], list] = {}
    try:
      for entry in boxes:
        box = tuple(float(v) for v in entry[2:6])
        if size is not None:
          box = images_lib.crop_box(box, *size, self.spec.image_size)
        if box is None:
          counts[S["boxes_cropped_out"]] += 1
          continue
        phrases.setdefault((int(entry[0]), int(entry[1])), []).append(box)
      if not phrases:
        return self.tok.encode(text)
      ids = g.encode(grounding_lib.GROUNDING + grounding_lib.render(
          text, [(s, e, b) for (s, e), b in phrases.items()], g.grid))
    except (TypeError, ValueError):  # not [start, end, x1, y1, x2, y2] rows, spans overlap
      counts[S["boxes_bad"]] += 1
      return self.tok.encode(text)
    counts[S["boxes"]] += sum(len(b) for b in phrases.values())
    return ids

  def map(self, data: bytes) -> dict[str, Any]:
    return self.convert(data, decode_images=True)

  def _empty(self, stats: np.ndarray) -> dict[str, Any]:
    spec = self.spec
    return dict(tokens=np.zeros(0, np.int32),
                images=np.zeros((0, spec.image_size, spec.image_size, 3), np.uint8),
                vectors=np.zeros((0, spec.vector_dim), np.float32), kind=0, stats=stats)

  def convert(self, data: bytes, decode_images: bool) -> dict[str, Any]:
    """Tokenizes one record; with decode_images=False images are zeros (for estimates)."""
    spec, tok = self.spec, self.tok
    stats = np.zeros((spec.num_sources, len(packing.STATS)), np.int64)
    counts = stats[spec.source_index]
    counts[S["records"]] = 1
    try:
      record = records.decode(data)
    except records.RecordError:
      counts[S["record_undecodable"]] += 1
      counts[S["bad_records"]] = 1
      return self._empty(stats)
    kind = record["kind"]
    if kind == records.CONVERSATION:
      return self._conversation(record, stats, decode_images)
    segments = record["segments"]
    if kind == "pair":  # image first, then the caption
      segments = ([s for s in segments if "image" in s] + [s for s in segments if "image" not in s])
    tokens = [tok.bos_id]
    pixels, vectors = [], []
    meta = record.get("meta")  # free-form: may be absent, null or not an object
    boxes = meta.get("boxes") if kind == "pair" and isinstance(meta, dict) else None
    ground = bool(boxes) and isinstance(boxes, list) and self.grounding is not None
    size = None  # of the pair's image before resizing (boxes follow its crop)
    bad = False
    for segment in segments:
      if "text" in segment:
        text = segment["text"]
        if isinstance(text, str) and text and ground and (size or not decode_images):
          tokens.extend(self._grounded(text, boxes, size, counts))
        elif isinstance(text, str) and text:
          tokens.extend(tok.encode(text))
        elif not isinstance(text, str):
          bad = True
          counts[S["no_content"]] += 1
      elif "image" in segment:
        if len(pixels) >= spec.max_images_per_doc or (kind == "pair" and pixels):
          counts[S["images_over_doc_cap"]] += 1
          continue
        try:
          raw = segment["image"]
          if not isinstance(raw, bytes):
            raise images_lib.ImageError("corrupt", f"image segment is {type(raw).__name__}")
          if decode_images:
            image, size = images_lib.decode_sized(raw, spec.image_size, spec.max_image_pixels)
            pixels.append(image)
          elif not raw:
            raise images_lib.ImageError("empty", "image has zero bytes")
          else:
            pixels.append(None)
        except images_lib.ImageError as e:
          counts[S["image_" + e.reason]] += 1
          bad = True
          continue
        tokens.extend(tokenizer_lib.image_span(tok, spec.tokens_per_image))
      elif "vector" in segment:
        if not spec.vector_dim:
          counts[S["vectors_disabled"]] += 1
          continue
        vector = np.asarray(segment["vector"], np.float32) if isinstance(
            segment["vector"], (list, tuple)) else np.zeros(0, np.float32)
        if vector.shape != (spec.vector_dim,) or not np.all(np.isfinite(vector)):
          counts[S["vector_bad"]] += 1
          bad = True
          continue
        vectors.append(vector)
        tokens.append(tok.vector_slot_id)
    tokens.append(tok.eos_id)
    span = len(tokenizer_lib.image_span(tok, spec.tokens_per_image))
    has_text = len(tokens) - 2 - len(pixels) * span - len(vectors) > 0
    reason = None
    if kind == "pair" and not pixels:
      reason = "pair_without_image"
    elif not has_text and not pixels and not vectors or kind == "pair" and not has_text:
      reason = "no_content"
    if reason:
      counts[S[reason]] += 1
      counts[S["bad_records"]] = 1
      return self._empty(stats)
    counts[S["bad_records"]] = int(bad)
    if decode_images:
      image_array = (np.stack(pixels) if pixels else
                     np.zeros((0, spec.image_size, spec.image_size, 3), np.uint8))
    else:
      image_array = np.zeros((len(pixels), 0, 0, 3), np.uint8)
    return dict(tokens=np.asarray(tokens, np.int32), images=image_array,
                vectors=(np.stack(vectors) if vectors else
                         np.zeros((0, spec.vector_dim), np.float32)),
                kind=KIND_IDS[kind], stats=stats)


  def _conversation(self, record: dict[str, Any], stats: np.ndarray,
                    decode_images: bool) -> dict[str, Any]:
    spec = self.spec
    counts = stats[spec.source_index]
    if sum("image" in s for s in record["segments"]) > spec.max_images_per_doc:
      counts[S["images_over_doc_cap"]] += 1
      counts[S["bad_records"]] = 1
      return self._empty(stats)

    def image(raw: Any) -> np.ndarray | None:
      if not isinstance(raw, bytes):
        raise images_lib.ImageError("corrupt", f"image segment is {type(raw).__name__}")
      if decode_images:
        return images_lib.decode(raw, spec.image_size, spec.max_image_pixels)
      if not raw:
        raise images_lib.ImageError("empty", "image has zero bytes")
      return None

    if self._template is None:
      self._template = chat.from_config(spec.tokenizer)
    try:
      encoded = chat.encode(self._template, record["segments"], self.tok,
                            spec.tokens_per_image, image)
    except images_lib.ImageError as e:
      counts[S["image_" + e.reason]] += 1
      counts[S["bad_records"]] = 1
      return self._empty(stats)
    except (ValueError, TypeError):  # valid record, but not renderable: a vector segment,
      counts[S["record_undecodable"]] += 1  # a text that is not a string
      counts[S["bad_records"]] = 1
      return self._empty(stats)
    if decode_images:
      pixels = (np.stack(encoded.images) if encoded.images else
                np.zeros((0, spec.image_size, spec.image_size, 3), np.uint8))
    else:
      pixels = np.zeros((len(encoded.images), 0, 0, 3), np.uint8)
    return dict(tokens=encoded.tokens, loss=encoded.loss, images=pixels,
                vectors=np.zeros((0, spec.vector_dim), np.float32),
                kind=KIND_IDS[records.CONVERSATION], stats=stats)


def _validate(data: ml_collections.ConfigDict, image_size: int, tokens_per_image: int,
              process_index: int, process_count: int) -> None:
  if not data.sources:
    raise ValueError("config.data.sources is empty; add name -> {path, kind, weight}")
  for name, source in data.sources.items():
    if source.kind not in records.KINDS:
      raise ValueError(f"config.data.sources.{name}.kind={source.kind!r}; valid: {records.KINDS}")
    if not source.weight > 0:
      raise ValueError(f"config.data.sources.{name}.weight={source.weight} must be > 0")
    if not epath.Path(source.path).is_dir():
      raise FileNotFoundError(f"config.data.sources.{name}.path={source.path!r} is not a directory")
  if tokens_per_image + 4 > data.seq_len:
    raise ValueError(f"seq_len={data.seq_len} cannot hold one image span of {tokens_per_image}"
                     " tokens plus <s> <image> </image> </s>")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} not in [0, process_count={process_count})")
  if data.global_batch_size % process_count:
    raise ValueError(f"config.data.global_batch_size={data.global_batch_size} does not divide "
                     f"into process_count={process_count} processes")
  if image_size < 1 or data.max_images_per_row < 1:
    raise ValueError(f"image_size={image_size} and config.data.max_images_per_row="
                     f"{data.max_images_per_row} must be >= 1")


def _source_dataset(path: str, seed: int, process_index: int,
                    process_count: int) -> grain.MapDataset:
  source = grain.sources.ArrayRecordDataSource(records.shard_paths(path))
  ds = grain.MapDataset.source(source).shuffle(seed=seed)
  ds = ds[process_index::process_count]
  if len(ds) == 0:
    raise ValueError(f"record directory {path!r} has {len(source)} records: fewer than "
                     f"process_count={process_count}, so process {process_index} gets none")
  return ds


def mean_doc_tokens(ds: grain.MapDataset, convert: RecordToDoc, limit: int, name: str) -> float:
  """Mean tokens per usable document over the first `limit` records of `ds` (no pixels)."""
  lengths = [len(doc["tokens"]) for doc in
             (convert.convert(ds[i], decode_images=False) for i in range(min(limit, len(ds))))]
  lengths = [n for n in lengths if n]
  if not lengths:
    raise ValueError(f"data source {name!r}: none of its first {limit} records is usable")
  return float(np.mean(lengths))


def make_dataset(data: ml_collections.ConfigDict, tokenizer: ml_collections.ConfigDict, *,
                 image_size: int, tokens_per_image: int, process_index: int = 0,
                 process_count: int = 1) -> grain.IterDataset:
  """The per-process pipeline (module docstring); iterate it, checkpoint its iterator."""
  _validate(data, image_size, tokens_per_image, process_index, process_count)
  names = tuple(sorted(data.sources))
  vector_dim = data.vector_dim if data.max_vectors_per_row > 0 else 0
  docs, proportions = [], []
  for i, name in enumerate(names):
    source = data.sources[name]
    spec = DocSpec(tokenizer=tokenizer.to_dict(), source_index=i, num_sources=len(names),
                   image_size=image_size, tokens_per_image=tokens_per_image,
                   max_images_per_doc=min(data.max_images_per_doc, data.max_images_per_row)
                   if source.kind == "interleaved" else data.max_images_per_row,
                   max_image_pixels=data.max_image_pixels, vector_dim=vector_dim)
    convert = RecordToDoc(spec)
    seed = (data.shuffle_seed * 1_000_003 + i) % 2**32
    ds = _source_dataset(source.path, seed, process_index, process_count)
    proportions.append(source.weight / mean_doc_tokens(ds, convert, data.mix_estimate_records,
                                                       name))
    docs.append(ds.repeat().map(convert).to_iter_dataset(grain.ReadOptions(
        num_threads=data.read_threads, prefetch_buffer_size=data.read_buffer)))
  if len(docs) == 1:
    mixed = docs[0]
  else:
    mixed = grain.IterDataset.mix(docs, proportions)  # grain scales the smallest to 100
  tok = tokenizer_lib.load(tokenizer)
  spec = packing.PackSpec(
      seq_len=data.seq_len, max_images=data.max_images_per_row, image_size=image_size,
      max_vectors=data.max_vectors_per_row if vector_dim else 0, vector_dim=vector_dim,
      bins=data.packing_bins, min_piece=data.min_piece_tokens,
      image_start_id=tok.image_start_id, image_end_id=tok.image_end_id,
      tokens_per_image=tokens_per_image, image_slot_id=tok.image_slot_id,
      vector_slot_id=tok.vector_slot_id, source_names=names,
      max_bad_fraction=data.max_bad_fraction, bad_check_min_records=data.bad_check_min_records)
  ds = packing.PackIterDataset(mixed, spec)
  ds = ds.batch(data.global_batch_size // process_count, drop_remainder=True)
  ds = ds.map(StatsToDict(names))
  if data.workers > 0:
    if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; outside app.run
      flags.FLAGS.mark_as_parsed()   # (tests, notebooks, benchmarks) their defaults apply
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=data.workers, per_worker_buffer_size=data.prefetch_buffer))
  return ds


class StatsToDict(grain.transforms.Map):
  """Replaces the batch's `stats` [B, S, R] with `data_stats` {"<source>/<counter>": int}."""

  def __init__(self, names: tuple[str, ...]):
    self.names = names

  def map(self, batch: dict[str, Any]) -> dict[str, Any]:
    stats = np.asarray(batch.pop("stats")).sum(axis=0)
    batch["data_stats"] = {f"{name}/{counter}": int(stats[i, j])
                           for i, name in enumerate(self.names)
                           for j, counter in enumerate(packing.STATS)}
    return batch


def accumulate_stats(totals: dict[str, int], data_stats: Mapping[str, int]) -> dict[str, int]:
  """Adds one batch's `data_stats` into running totals (for the trainer's logs)."""
  for key, value in data_stats.items():
    totals[key] = totals.get(key, 0) + int(value)
  return totals


def packing_efficiency(batch: Mapping[str, np.ndarray]) -> float:
  """Non-padding fraction of a batch's tokens."""
  return float(np.mean(np.asarray(batch["segment_ids"]) > 0))
