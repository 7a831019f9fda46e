"""WebDataset / img2dataset tar shards of image-caption pairs -> kind=pair records.

A sample is the run of consecutive tar members sharing a key (the member path up to the
first '.' of its file name): `key.jpg|jpeg|png|webp` plus `key.txt` and/or `key.json`
(caption at --caption-field). Tars are streamed (`tarfile` mode 'r|*', also .tar.gz);
only image, txt and json members are read. Segments are `[image, text]`.

Members with other image extensions (`key.gif`, `.bmp`, `.tif`, `.svg`, `.heic`, `.avif`)
are read too and, when the sample has no JPEG/PNG/WebP member, checked like any image, so
such a sample counts as `unsupported_image_format` (the stored formats are JPEG/PNG/WebP),
not as `missing_image`.
"""

from __future__ import annotations

import argparse
import json
import posixpath
import tarfile
import zlib
from typing import Any, Iterator

from kosmos.data.convert import common, runner
from kosmos.data.convert.common import Context, Unit

DESCRIPTION = "webdataset/img2dataset tar shards (key.jpg + key.txt|json) -> kind=pair"
SUFFIXES = (".tar", ".tar.gz", ".tgz")
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
OTHER_IMAGE_EXTS = ("gif", "bmp", "tif", "tiff", "svg", "heic", "heif", "avif")
_READ_EXTS = IMAGE_EXTS + OTHER_IMAGE_EXTS + ("txt", "json")
CORRUPT_ARCHIVE = "corrupt_archive"


def add_arguments(parser: argparse.ArgumentParser) -> None:
  common.add_common_arguments(parser, input_help="tar shards, directories or globs")
  parser.add_argument("--caption-field", default="caption",
                      help="path of the caption inside key.json (e.g. 'caption' or 'meta/alt')")
  parser.add_argument("--text-from", choices=("auto", "txt", "json"), default="auto",
                      help="caption source: auto = key.txt if present, else key.json")
  parser.add_argument("--meta-fields", default="url",
                      help="comma-separated fields of key.json copied into record meta")


def list_units(args: argparse.Namespace) -> list[Unit]:
  return common.file_units(args.input, SUFFIXES)


def _split(name: str) -> tuple[str, str]:
  """('dir/key', 'ext') of a member path; ext is lowercased and may contain dots."""
  name = posixpath.normpath(name)
  directory, base = posixpath.split(name)
  stem, _, ext = base.partition(".")
  return posixpath.join(directory, stem), ext.lower()


def _samples(path: str, ctx: Context) -> Iterator[tuple[str, dict[str, bytes]]]:
  """(key, {ext: bytes}) per run of consecutive members with one key."""
  key, parts = None, {}
  try:
    with tarfile.open(path, mode="r|*") as archive:
      for member in archive:
        if not member.isfile():
          continue
        member_key, ext = _split(member.name)
        if member_key != key:
          if key is not None:
            yield key, parts
          key, parts = member_key, {}
        if ext in _READ_EXTS and ext not in parts:
          handle = archive.extractfile(member)
          parts[ext] = handle.read() if handle else b""
  except (tarfile.TarError, EOFError, OSError, zlib.error):
    ctx.drop(CORRUPT_ARCHIVE)  # the sample being read is lost with the rest of the file
    return
  if key is not None:
    yield key, parts


def _caption(parts: dict[str, bytes], meta: dict[str, Any], args: argparse.Namespace,
             ctx: Context) -> str | None:
  """The caption of a sample (filling meta from key.json), or None after counting why."""
  info = None
  if "json" in parts:
    decoded = common.decode_text(parts["json"], ctx)
    if decoded is None:
      return None
    try:
      info = json.loads(decoded)
    except ValueError:
      ctx.drop(common.INVALID_JSON)
      return None
    if not isinstance(info, dict):
      ctx.drop(common.INVALID_JSON)
      return None
    for name in filter(None, args.meta_fields.split(",")):
      if info.get(name) is not None:
        meta[name] = info[name]
  use_txt = args.text_from == "txt" or (args.text_from == "auto" and "txt" in parts)
  if use_txt:
    if "txt" not in parts:
      ctx.drop(common.MISSING_FIELD)
      return None
    text = common.decode_text(parts["txt"], ctx)
    if text is None:
      return None
  else:
    text = common.field(info, args.caption_field) if info is not None else None
    if not isinstance(text, str):
      ctx.drop(common.MISSING_FIELD)
      return None
  text = text.strip()
  if not text:
    ctx.drop(common.EMPTY_TEXT)
    return None
  return text


def convert_unit(unit: Unit, args: argparse.Namespace, ctx: Context) -> Iterator[dict[str, Any]]:
  """Pair records of one tar, in member order."""
  for key, parts in _samples(unit.payload, ctx):
    image_ext = next((e for e in IMAGE_EXTS + OTHER_IMAGE_EXTS if e in parts), None)
    if image_ext is None:
      ctx.drop(common.MISSING_IMAGE)
      continue
    meta: dict[str, Any] = {"key": key, "file": unit.key}
    text = _caption(parts, meta, args, ctx)
    if text is None:
      continue
    image = ctx.check_image(parts[image_ext])
    if image is None:
      continue
    yield {"id": f"{unit.key}/{key}", "source": common.source_name(args), "kind": "pair",
           "segments": [{"image": image}, {"text": text}], "meta": meta}


def main(args: argparse.Namespace) -> int:
  return runner.run(args, module=__name__, list_units=list_units)
