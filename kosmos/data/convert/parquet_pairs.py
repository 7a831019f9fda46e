"""LAION/COYO-style parquet with image bytes and a caption per row -> kind=pair records.

The image column is binary, or a struct with a `bytes` field (as Hugging Face datasets
writes its Image feature). Row groups are units, read with `iter_batches`.
Segments are `[image, text]`; record id is `<file>:<row index in file>`.
"""

from __future__ import annotations

import argparse
from typing import Any, Iterator

from kosmos.data.convert import common, parquet_io, runner
from kosmos.data.convert.common import Context, Unit

DESCRIPTION = "LAION/COYO-style parquet (image-bytes column + caption column) -> kind=pair"


def add_arguments(parser: argparse.ArgumentParser) -> None:
  common.add_common_arguments(parser, input_help="parquet files, directories or globs")
  parser.add_argument("--image-column", default="image",
                      help="binary column, or struct column with a `bytes` field")
  parser.add_argument("--text-column", default="caption", help="string column of captions")
  parser.add_argument("--meta-columns", default="url",
                      help="comma-separated columns copied into record meta when present")
  parser.add_argument("--batch-size", type=int, default=256, help="rows read at a time")


def list_units(args: argparse.Namespace) -> list[Unit]:
  return parquet_io.row_group_units(args.input)


def convert_unit(unit: Unit, args: argparse.Namespace, ctx: Context) -> Iterator[dict[str, Any]]:
  """Pair records of one row group, in row order."""
  meta_columns = [c for c in args.meta_columns.split(",") if c]
  file_key = unit.payload[1]
  rows = parquet_io.iter_rows(unit, {"image": args.image_column, "text": args.text_column},
                              meta_columns, args.batch_size, ctx)
  for row, values in rows:
    text = common.caption(values["text"], ctx)
    if text is None:
      continue
    text = text.strip()
    image = ctx.check_image(parquet_io.image_bytes(values["image"]))
    if image is None:
      continue
    meta = {"file": file_key, "row": row}
    meta.update({c: common.meta_value(values[c]) for c in meta_columns
                 if values.get(c) is not None})
    yield {"id": f"{file_key}:{row}", "source": common.source_name(args), "kind": "pair",
           "segments": [{"image": image}, {"text": text}], "meta": meta}


def main(args: argparse.Namespace) -> int:
  return runner.run(args, module=__name__, list_units=list_units)
