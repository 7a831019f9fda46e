"""OBELICS-layout parquet -> kind=interleaved records.

Each row is a web document: aligned list columns `texts` and `images` where position i
holds either a text (images[i] is null) or an image URL (texts[i] is null). Image bytes
come from an aligned list column (--image-bytes-column; binary or struct with `bytes`)
or from files in --image-dir named after the URL: its last path component, that
component without extension, or the sha1 / sha256 hex of the URL, with any image
extension. Texts between images are joined with a blank line.
"""

from __future__ import annotations

import argparse
from typing import Any, Iterator

from kosmos.data.convert import common, images, interleaved, parquet_io, runner
from kosmos.data.convert.common import Context, Unit

DESCRIPTION = "OBELICS-layout parquet (aligned texts/images lists) -> kind=interleaved"
MISALIGNED_ROW = "misaligned_row"
BAD_POSITION = "bad_position"


def add_arguments(parser: argparse.ArgumentParser) -> None:
  common.add_common_arguments(parser, input_help="parquet files, directories or globs")
  parser.add_argument("--texts-column", default="texts")
  parser.add_argument("--images-column", default="images", help="list of image URLs")
  parser.add_argument("--image-bytes-column", default=None,
                      help="optional list column of image bytes aligned with --images-column")
  parser.add_argument("--image-dir", action="append", default=[],
                      help="directory of downloaded images (repeatable), looked up by URL")
  parser.add_argument("--meta-columns", default="general_metadata",
                      help="comma-separated columns copied into record meta when present")
  parser.add_argument("--batch-size", type=int, default=64, help="rows read at a time")
  interleaved.add_document_arguments(parser)


def list_units(args: argparse.Namespace) -> list[Unit]:
  return parquet_io.row_group_units(args.input)


def _image(url: Any, inline: Any, args: argparse.Namespace) -> bytes | None:
  data = parquet_io.image_bytes(inline)
  if data is None and isinstance(url, str) and args.image_dir:
    path = images.find_file(url, args.image_dir)
    data = images.read_file(path) if path else None
  return data


def convert_unit(unit: Unit, args: argparse.Namespace, ctx: Context) -> Iterator[dict[str, Any]]:
  """Interleaved records of one row group, in row order."""
  meta_columns = [c for c in args.meta_columns.split(",") if c]
  required = {"texts": args.texts_column, "images": args.images_column}
  if args.image_bytes_column:
    required["bytes"] = args.image_bytes_column
  file_key = unit.payload[1]
  for row, values in parquet_io.iter_rows(unit, required, meta_columns, args.batch_size, ctx):
    texts, urls = values["texts"], values["images"]
    inline = values.get("bytes")
    if not isinstance(texts, list) or not isinstance(urls, list):
      ctx.drop(common.MISSING_FIELD)
      continue
    if len(texts) != len(urls) or (inline is not None and len(inline) != len(urls)):
      ctx.drop(MISALIGNED_ROW)
      continue
    doc_id = f"{file_key}:{row}"
    items: list[interleaved.Item] = []
    pending: set[bytes] = set()
    for i, (text, url) in enumerate(zip(texts, urls)):
      if (text is None) == (url is None):
        ctx.drop(BAD_POSITION)
      elif text is not None:
        items.append(("text", text))
      else:
        data = ctx.check_image(_image(url, inline[i] if inline else None, args), pending)
        if data is not None:
          items.append(("image", data))
    done = interleaved.finish(items, doc_id, args, ctx, separator="\n\n")
    if done is None:
      continue
    kind, segments = done
    meta = {"file": file_key, "row": row}
    meta.update({c: common.meta_value(values[c]) for c in meta_columns
                 if values.get(c) is not None})
    yield {"id": doc_id, "source": common.source_name(args), "kind": kind,
           "segments": segments, "meta": meta}


def main(args: argparse.Namespace) -> int:
  return runner.run(args, module=__name__, list_units=list_units)
