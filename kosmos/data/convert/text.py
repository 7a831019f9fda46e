"""Plain-text corpora (.txt, .jsonl, .jsonl.gz, .jsonl.zst) -> kind=text records.

A .txt file is one document, or with --paragraphs one document per block of lines
separated by blank lines (streamed). A .jsonl line is one document whose text is at
--text-field (a '/'-separated path into nested objects). Each record has one text
segment, stripped of surrounding whitespace.
"""

from __future__ import annotations

import argparse
from typing import Any, Iterator

from kosmos.data.convert import common, lines, runner
from kosmos.data.convert.common import Context, Unit

DESCRIPTION = "plain text: .txt (per file or per paragraph) and .jsonl[.gz|.zst] -> kind=text"
TEXT_SUFFIXES = (".txt", ".txt.gz", ".txt.zst")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".jsonl.zstd", ".ndjson", ".jsonl.zip")


def add_arguments(parser: argparse.ArgumentParser) -> None:
  common.add_common_arguments(
      parser, input_help="files, directories or globs of " + ", ".join(TEXT_SUFFIXES
                                                                         + JSONL_SUFFIXES))
  parser.add_argument("--text-field", default="text",
                      help="jsonl: path of the text, e.g. 'text' or 'content/body'")
  parser.add_argument("--meta-fields", default="",
                      help="jsonl: comma-separated top-level fields copied into record meta")
  parser.add_argument("--paragraphs", action="store_true",
                      help=".txt: one document per blank-line-separated block, not per file")
  parser.add_argument("--encoding", default="utf-8",
                      help=".txt: text encoding (undecodable documents are dropped and counted)")


def list_units(args: argparse.Namespace) -> list[Unit]:
  return common.file_units(args.input, TEXT_SUFFIXES + JSONL_SUFFIXES)


def _record(args: argparse.Namespace, record_id: str, text: str,
            meta: dict[str, Any]) -> dict[str, Any]:
  return {"id": record_id, "source": common.source_name(args), "kind": "text",
          "segments": [{"text": text}], "meta": meta}


def _text_documents(unit: Unit, args: argparse.Namespace,
                    ctx: Context) -> Iterator[tuple[str, bytes]]:
  """(id, raw bytes) per document of a .txt file."""
  if not args.paragraphs:
    with lines.open_binary(unit.payload) as f:
      yield unit.key, f.read()
    return
  block: list[bytes] = []
  count = 0
  for _, line in lines.iter_lines(unit.payload):
    if line.strip():
      block.append(line)
      continue
    if block:
      yield f"{unit.key}:{count}", b"\n".join(block)
      count += 1
      block = []
  if block:
    yield f"{unit.key}:{count}", b"\n".join(block)


def convert_unit(unit: Unit, args: argparse.Namespace, ctx: Context) -> Iterator[dict[str, Any]]:
  """Records of one input file, in file order."""
  if unit.payload.lower().endswith(TEXT_SUFFIXES):
    for record_id, data in _text_documents(unit, args, ctx):
      text = common.decode_text(data, ctx, args.encoding)
      if text is None:
        continue
      text = text.lstrip("\ufeff").strip()
      if not text:
        ctx.drop(common.EMPTY_TEXT)
        continue
      yield _record(args, record_id, text, {"file": unit.key})
    return
  meta_fields = [f for f in args.meta_fields.split(",") if f]
  for location, obj in common.json_objects(unit.payload, ctx):
    text = common.field(obj, args.text_field)
    if text is None:
      ctx.drop(common.MISSING_FIELD)
      continue
    if not isinstance(text, str):
      ctx.drop("invalid_field")
      continue
    text = text.strip()
    if not text:
      ctx.drop(common.EMPTY_TEXT)
      continue
    meta = {"file": unit.key}
    meta.update({f: obj[f] for f in meta_fields if f in obj})
    yield _record(args, f"{unit.key}:{location}", text, meta)


def main(args: argparse.Namespace) -> int:
  return runner.run(args, module=__name__, list_units=list_units)
