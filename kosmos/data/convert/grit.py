"""GRIT (KOSMOS-2's grounded image-text pairs) -> kind=pair records that carry their boxes.

Rows (parquet, or jsonl one object per line) in GRIT-20M's layout: `caption`, the image
(bytes, a struct with `bytes`, or a path relative to `--image-dir` / the input file's
directory), `width`, `height`, and `noun_chunks` / `ref_exps`: lists of
`[start, end, x1, y1, x2, y2, score]`, a character span of the caption and its box in
coordinates normalised by the image's width and height.

A record: `[image, text]` with `meta.boxes = [[start, end, x1, y1, x2, y2], ...]` (the
phrases the training pipeline renders as location tokens, `kosmos.data.grounding`): boxes
of one span become one phrase with several boxes; noun chunks first, then the referring
expressions that overlap no span already taken (`box_overlapping_span` otherwise: the
format cannot nest phrases). A bad box is dropped and counted by reason (`BOX_REASONS`);
its row is still written (as a plain pair when no box is left). Reasons: box_malformed,
box_span_outside_caption, box_negative, box_inverted, box_empty, box_outside_image,
box_overlapping_span.
"""

from __future__ import annotations

import argparse
import math
import os
from typing import Any, Iterator

from kosmos.data.convert import common, images, parquet_io, runner
from kosmos.data.convert.common import Context, Unit

DESCRIPTION = "GRIT grounded pairs (parquet/jsonl with noun_chunks, ref_exps) -> kind=pair + meta.boxes"
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst")
SPAN_KINDS = ("noun_chunks", "ref_exps")


def add_arguments(parser: argparse.ArgumentParser) -> None:
  common.add_common_arguments(parser,
                              input_help="GRIT parquet or jsonl files, directories or globs")
  parser.add_argument("--image-column", default="image",
                      help="image bytes, a struct with `bytes`, or a path "
                      "(GRIT via img2dataset: jpg)")
  parser.add_argument("--text-column", default="caption", help="the caption column")
  parser.add_argument("--image-dir", default="",
                      help="directory that image paths are relative to (default: the input file's)")
  parser.add_argument("--meta-columns", default="url,id,width,height",
                      help="comma-separated columns copied into record meta when present")
  parser.add_argument("--batch-size", type=int, default=256, help="parquet rows read at a time")


def list_units(args: argparse.Namespace) -> list[Unit]:
  """A parquet row group or a jsonl file per unit."""
  units = []
  for path, key in common.expand_inputs(args.input, parquet_io.SUFFIXES + JSONL_SUFFIXES):
    if path.lower().endswith(parquet_io.SUFFIXES):
      units += [Unit(key=key + u.key[len(os.path.basename(path)):], size=u.size, payload=(
          u.payload[0], key) + u.payload[2:]) for u in parquet_io.row_group_units([path])]
    else:
      units.append(Unit(key=key, size=os.path.getsize(path), payload=path))
  return units


def phrases(caption: str, row: dict[str, Any], ctx: Context) -> list[list[float]]:
  """`meta.boxes` of one row: valid boxes, overlapping spans resolved; bad ones counted."""
  taken: dict[tuple[int, int], list[list[float]]] = {}
  for kind in SPAN_KINDS:
    found: dict[tuple[int, int], list[list[float]]] = {}
    entries = row.get(kind)
    if entries is not None and not isinstance(entries, (list, tuple)):
      ctx.drop("box_malformed")  # not a list of boxes (a number, a string, an object)
      continue
    for entry in entries or []:
      reason, box = check(entry, len(caption))
      if reason:
        ctx.drop(reason)
        continue
      found.setdefault((int(entry[0]), int(entry[1])), []).append(box)
    for span, boxes in found.items():
      if span not in taken and any(s < span[1] and span[0] < e for s, e in taken):
        ctx.drop("box_overlapping_span", len(boxes))
        continue
      taken.setdefault(span, []).extend(b for b in boxes if b not in taken.get(span, []))
  return [[start, end] + box for (start, end), boxes in sorted(taken.items()) for box in boxes]


def check(entry: Any, length: int) -> tuple[str | None, list[float]]:
  """(reason a box is bad or None, its [x1, y1, x2, y2])."""
  if (not isinstance(entry, (list, tuple)) or len(entry) < 6
      or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                 for v in entry[:6])):
    return "box_malformed", []
  start, end = entry[0], entry[1]
  x1, y1, x2, y2 = (float(v) for v in entry[2:6])
  if start != int(start) or end != int(end) or not 0 <= start < end <= length:
    return "box_span_outside_caption", []
  if min(x1, y1, x2, y2) < 0:
    return "box_negative", []
  if x2 < x1 or y2 < y1:
    return "box_inverted", []
  if x2 == x1 or y2 == y1:
    return "box_empty", []
  if max(x2, y2) > 1:
    return "box_outside_image", []
  return None, [x1, y1, x2, y2]


def _image(value: Any, base: str, args: argparse.Namespace) -> bytes | None:
  if isinstance(value, str) and value:
    path = value if os.path.isabs(value) else os.path.join(args.image_dir or base, value)
    return images.read_file(path) if os.path.isfile(path) else None
  return parquet_io.image_bytes(value)


def _rows(unit: Unit, args: argparse.Namespace, ctx: Context,
          columns: list[str]) -> Iterator[tuple[str, dict[str, Any]]]:
  """(row id, {column: value}) of a parquet row group or a jsonl file."""
  if isinstance(unit.payload, tuple):  # parquet row group
    file_key = unit.payload[1]
    rows = parquet_io.iter_rows(unit, {"image": args.image_column, "text": args.text_column},
                                columns, args.batch_size, ctx)
    for row, values in rows:
      yield f"{file_key}:{row}", values
    return
  for location, doc in common.json_objects(unit.payload, ctx):
    values = {c: doc.get(c) for c in columns}
    values.update(image=doc.get(args.image_column), text=doc.get(args.text_column))
    yield f"{unit.key}:{location}", values


def convert_unit(unit: Unit, args: argparse.Namespace, ctx: Context) -> Iterator[dict[str, Any]]:
  """Pair records with boxes, in row order."""
  meta_columns = [c for c in args.meta_columns.split(",") if c]
  path = unit.payload[0] if isinstance(unit.payload, tuple) else unit.payload
  for record_id, values in _rows(unit, args, ctx, meta_columns + list(SPAN_KINDS)):
    text = common.caption(values["text"], ctx)  # not stripped: the spans index it
    if text is None:
      continue
    image = ctx.check_image(_image(values["image"], os.path.dirname(path), args))
    if image is None:
      continue
    meta = {"file": record_id.rsplit(":", 1)[0], "boxes": phrases(text, values, ctx)}
    meta.update({c: common.meta_value(values[c]) for c in meta_columns
                 if values.get(c) is not None})
    yield {"id": record_id, "source": common.source_name(args), "kind": "pair",
           "segments": [{"image": image}, {"text": text}], "meta": meta}


def main(args: argparse.Namespace) -> int:
  return runner.run(args, module=__name__, list_units=list_units)
