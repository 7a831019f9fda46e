"""LLaVA-Instruct / ShareGPT-style conversation json -> kind=conversation records.

Input: `.json` files holding a list of conversations, or `.jsonl` (also .gz, .zst, .zip)
with one a line. A conversation:

    {"id": "000000033471", "image": "coco/train2017/000000033471.jpg",   # or "images": [...]
     "conversations": [{"from": "human", "value": "<image>\\nWhat is on the bus?"},
                       {"from": "gpt", "value": "An advertisement."}, ...]}

Each `<image>` placeholder in a turn's value is replaced by the next image of `image` /
`images` (read from --image-dir, or as given when absolute), so images may sit in any turn
and a conversation may hold several; one without images is text-only. Roles "human" and
"gpt" become the record's `{"turn": "user"}` / `{"turn": "assistant"}` segments (see
kosmos.data.records); the text around placeholders is kept verbatim. Roles, separators
and the system prompt are added at training time by the config's chat template
(kosmos.data.chat), so one record directory serves every template.

Dropped conversations are counted by reason: unknown_role (a "from" other than human /
gpt), empty_turn (a value that is empty or only whitespace, and not just a placeholder),
turn_order (turns that do not alternate starting with the human's), ends_on_user (the last
turn is the human's: nothing to learn), image_count_mismatch (placeholders != images),
missing_image and the image checks' reasons (empty_image, corrupt_image, ...), plus
invalid_json / missing_field. The same image may serve many conversations (LLaVA reuses
COCO images), so duplicate images are kept, not dropped.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any, Iterator

from kosmos.data import records
from kosmos.data.convert import common, images, lines, runner
from kosmos.data.convert.common import Context, Unit

DESCRIPTION = ("LLaVA-Instruct / ShareGPT json(l) conversations (+ image directory) -> "
               "kind=conversation")
SUFFIXES = (".json", ".jsonl", ".jsonl.gz", ".jsonl.zst", ".jsonl.zstd", ".jsonl.zip")
PLACEHOLDER = "<image>"
ROLES = {"human": records.USER, "gpt": records.ASSISTANT}

UNKNOWN_ROLE = "unknown_role"
EMPTY_TURN = "empty_turn"
TURN_ORDER = "turn_order"
ENDS_ON_USER = "ends_on_user"
IMAGE_COUNT_MISMATCH = "image_count_mismatch"


def add_arguments(parser: argparse.ArgumentParser) -> None:
  common.add_common_arguments(parser, input_help=".json (a list) or .jsonl conversation "
                              "files, directories or globs")
  parser.add_argument("--image-dir", action="append", default=[],
                      help="directory the rows' relative image paths start from (repeatable; "
                           "the first holding the file wins)")


def list_units(args: argparse.Namespace) -> list[Unit]:
  return common.file_units(args.input, SUFFIXES)


def _rows(path: str, ctx: Context) -> Iterator[tuple[str, Any]]:
  """(location, decoded row) of a .json list or a jsonl file; bad json is counted."""
  if path.lower().endswith(".json"):
    with open(path, "rb") as f:
      text = common.decode_text(f.read(), ctx)
    try:
      data = json.loads(text) if text is not None else None
    except ValueError:
      data = None
    if not isinstance(data, list):
      ctx.drop(common.INVALID_JSON)
      return
    yield from ((str(i), row) for i, row in enumerate(data))
    return
  for location, line in lines.iter_lines(path):
    if not line.strip():
      continue
    text = common.decode_text(line, ctx)
    if text is None:
      continue
    try:
      yield location, json.loads(text)
    except ValueError:
      ctx.drop(common.INVALID_JSON)


def _image(name: Any, args: argparse.Namespace, ctx: Context) -> bytes | None:
  """The checked bytes of one image file, or None after counting why."""
  path = None
  if isinstance(name, str) and name:
    candidates = ([name] if os.path.isabs(name) else
                  [os.path.join(d, name) for d in args.image_dir] or [name])
    path = next((p for p in candidates if os.path.isfile(p)), None)
  data = images.read_file(path) if path else None
  if data is None:
    ctx.drop(common.MISSING_IMAGE)
    return None
  data, reason = images.check(data, min_size=args.min_image_size,
                              max_bytes=args.max_image_bytes, max_pixels=args.max_image_pixels)
  if reason:
    ctx.drop(reason)
  return data


def segments(row: Any, args: argparse.Namespace, ctx: Context) -> list[dict[str, Any]] | None:
  """The record segments of one conversation row, or None after counting why it is dropped."""
  turns = row.get("conversations") if isinstance(row, dict) else None
  if not isinstance(turns, list) or not turns:
    ctx.drop(common.MISSING_FIELD)
    return None
  names = row.get("images", row.get("image"))
  names = [] if names is None else [names] if isinstance(names, str) else names
  if not isinstance(names, list):
    ctx.drop(common.MISSING_FIELD)
    return None
  roles, values = [], []
  for turn in turns:
    name = turn.get("from") if isinstance(turn, dict) else None
    role = ROLES.get(name) if isinstance(name, str) else None
    if role is None:
      ctx.drop(UNKNOWN_ROLE)
      return None
    value = turn.get("value")
    if not isinstance(value, str) or not value.replace(PLACEHOLDER, "").strip() and (
        PLACEHOLDER not in value or role == records.ASSISTANT):
      ctx.drop(EMPTY_TURN)
      return None
    roles.append(role)
    values.append(value)
  if roles[-1] == records.USER:
    ctx.drop(ENDS_ON_USER)
    return None
  if roles != [records.ROLES[i % 2] for i in range(len(roles))]:
    ctx.drop(TURN_ORDER)
    return None
  if sum(v.count(PLACEHOLDER) for v in values) != len(names):
    ctx.drop(IMAGE_COUNT_MISMATCH)
    return None
  pictures = []
  for name in names:
    data = _image(name, args, ctx)
    if data is None:
      return None
    pictures.append(data)
  out: list[dict[str, Any]] = []
  for role, value in zip(roles, values):
    out.append({"turn": role})
    for k, text in enumerate(value.split(PLACEHOLDER)):
      if k:
        out.append({"image": pictures.pop(0)})
      if text:
        out.append({"text": text})
  return out


def convert_unit(unit: Unit, args: argparse.Namespace, ctx: Context) -> Iterator[dict[str, Any]]:
  """Conversation records of one file, in input order."""
  for location, row in _rows(unit.payload, ctx):
    done = segments(row, args, ctx)
    if done is None:
      continue
    meta = {"file": unit.key}
    if isinstance(row.get("id"), (str, int)):
      meta["id"] = row["id"]
    yield {"id": f"{unit.key}:{location}", "source": common.source_name(args),
           "kind": records.CONVERSATION, "segments": done, "meta": meta}


def main(args: argparse.Namespace) -> int:
  return runner.run(args, module=__name__, list_units=list_units)
