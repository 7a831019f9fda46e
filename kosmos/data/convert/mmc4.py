"""MMC4 jsonl documents (+ downloaded images) -> kind=interleaved records.

One json object per line with `text_list` (sentences) and `image_info`, a list of
{image_name, raw_url, matched_text_index, matched_sim}. Each image is read from
--image-dir by `image_name` (falling back to the URL-derived names of `images.find_file`)
and placed before (default) or after its matched sentence; several images matched to one
sentence keep their `image_info` order. Sentences between images are joined by a space.
Reads .jsonl, .jsonl.gz, .jsonl.zst and the released .jsonl.zip shards.
"""

from __future__ import annotations

import argparse
import os
from typing import Any, Iterator

from kosmos.data.convert import common, images, interleaved, runner
from kosmos.data.convert.common import Context, Unit

DESCRIPTION = "MMC4 jsonl (text_list + image_info) with an image directory -> kind=interleaved"
SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".jsonl.zstd", ".jsonl.zip", ".zip")
LOW_SIMILARITY = "low_similarity"
BAD_POSITION = "bad_position"


def add_arguments(parser: argparse.ArgumentParser) -> None:
  common.add_common_arguments(parser, input_help="MMC4 jsonl files, directories or globs")
  parser.add_argument("--image-dir", action="append", default=[], required=True,
                      help="directory holding the images by image_name (repeatable)")
  parser.add_argument("--image-position", choices=("before", "after"), default="before",
                      help="put each image before or after its matched sentence")
  parser.add_argument("--min-sim", type=float, default=None,
                      help=f"drop images whose matched_sim is below this ({LOW_SIMILARITY})")
  parser.add_argument("--meta-fields", default="url",
                      help="comma-separated document fields copied into record meta")
  interleaved.add_document_arguments(parser)


def list_units(args: argparse.Namespace) -> list[Unit]:
  return common.file_units(args.input, SUFFIXES)


def _load(info: dict[str, Any], args: argparse.Namespace) -> bytes | None:
  name = info.get("image_name")
  if isinstance(name, str) and name:
    for directory in args.image_dir:
      path = os.path.join(directory, name)
      if os.path.isfile(path):
        return images.read_file(path)
  for key in ("image_name", "raw_url"):
    if isinstance(info.get(key), str) and info[key]:
      path = images.find_file(info[key], args.image_dir)
      if path:
        return images.read_file(path)
  return None


def document(doc: dict[str, Any], doc_id: str, args: argparse.Namespace,
             ctx: Context) -> tuple[str, list[dict[str, Any]]] | None:
  """(kind, segments) of one MMC4 document, or None after counting why it was dropped."""
  sentences, infos = doc.get("text_list"), doc.get("image_info")
  if not isinstance(sentences, list) or not isinstance(infos, list):
    ctx.drop(common.MISSING_FIELD)
    return None
  at: list[list[bytes]] = [[] for _ in sentences]
  pending: set[bytes] = set()
  for info in infos:
    if not isinstance(info, dict):
      ctx.drop(BAD_POSITION)
      continue
    index = info.get("matched_text_index")
    if not isinstance(index, int) or not 0 <= index < len(sentences):
      ctx.drop(BAD_POSITION)
      continue
    sim = info.get("matched_sim")
    if args.min_sim is not None and (not isinstance(sim, (int, float)) or sim < args.min_sim):
      ctx.drop(LOW_SIMILARITY)
      continue
    data = ctx.check_image(_load(info, args), pending)
    if data is not None:
      at[index].append(data)
  items: list[interleaved.Item] = []
  for sentence, pictures in zip(sentences, at):
    text = [("text", sentence)] if isinstance(sentence, str) else []
    pics = [("image", p) for p in pictures]
    items.extend(pics + text if args.image_position == "before" else text + pics)
  return interleaved.finish(items, doc_id, args, ctx, separator=" ")


def convert_unit(unit: Unit, args: argparse.Namespace, ctx: Context) -> Iterator[dict[str, Any]]:
  """Interleaved records of one jsonl file, in line order."""
  meta_fields = [f for f in args.meta_fields.split(",") if f]
  for location, doc in common.json_objects(unit.payload, ctx):
    doc_id = f"{unit.key}:{location}"
    done = document(doc, doc_id, args, ctx)
    if done is None:
      continue
    kind, segments = done
    meta = {"file": unit.key}
    meta.update({f: common.meta_value(doc[f]) for f in meta_fields if doc.get(f) is not None})
    yield {"id": doc_id, "source": common.source_name(args), "kind": kind,
           "segments": segments, "meta": meta}


def main(args: argparse.Namespace) -> int:
  return runner.run(args, module=__name__, list_units=list_units)
