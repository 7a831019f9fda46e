"""A directory of saved web pages (*.html, *.htm) -> kind=interleaved records.

Visible text in reading order (see `html_text`) with each <img> at its place. An image
is taken from, in order: the largest `srcset` candidate, `src`, `data-src`; data: URIs are
decoded, other URLs resolved to local files relative to the page (root-relative '/x.png'
against --site-root, default the --input directory the page was found in). Remote URLs
without a local copy count as `remote_image`, absent files as `missing_image`.
Defaults follow KOSMOS-1's web-page rules: at most 5 images per page, half of the
single-image pages dropped (seeded), icons under 32 px dropped. Pages keep
kind=interleaved even when they hold one image.
"""

from __future__ import annotations

import argparse
import os
import urllib.parse
from typing import Any, Iterator

from kosmos.data.convert import common, html_text, images, interleaved, runner
from kosmos.data.convert.common import Context, Unit

DESCRIPTION = "saved web pages (*.html, *.htm) with local images -> kind=interleaved"
SUFFIXES = (".html", ".htm", ".xhtml")
REMOTE_IMAGE = "remote_image"


def add_arguments(parser: argparse.ArgumentParser) -> None:
  common.add_common_arguments(parser, input_help="directories of pages, page files or globs",
                              min_image_size=32)
  parser.add_argument("--site-root", default=None,
                      help="directory that root-relative image URLs ('/img/a.png') start from")
  parser.add_argument("--fallback-encoding", default=None,
                      help="decode pages that declare no charset and are not UTF-8 with this "
                           "(e.g. cp1252); default: drop them as invalid_utf8")
  interleaved.add_document_arguments(parser, max_images=5, single_fraction=0.5)


def list_units(args: argparse.Namespace) -> list[Unit]:
  units = []
  for path, key in common.expand_inputs(args.input, SUFFIXES):
    root = args.site_root
    if root is None:
      native = key.replace("/", os.sep)
      root = path[:-len(native)] if path.endswith(native) else os.path.dirname(path)
    units.append(Unit(key=key, size=os.path.getsize(path), payload=(path, os.path.abspath(root))))
  return units


def _resolve(url: str, page_dir: str, root: str) -> tuple[bytes | None, str]:
  """(bytes or None, drop reason if None) for one image URL of a page."""
  url = url.strip()
  if url.lower().startswith("data:"):
    return images.decode_data_uri(url), images.CORRUPT_IMAGE
  parts = urllib.parse.urlsplit(url)
  if parts.scheme and parts.scheme.lower() != "file" and len(parts.scheme) > 1:
    return None, REMOTE_IMAGE
  path = urllib.parse.unquote(parts.path)
  if not path:
    return None, common.MISSING_IMAGE
  if parts.scheme.lower() == "file":
    local = path
  elif path.startswith("/"):
    local = os.path.join(root, path.lstrip("/"))
  else:
    local = os.path.join(page_dir, path)
  local = os.path.normpath(local)
  if not os.path.isfile(local):
    return None, common.MISSING_IMAGE
  return images.read_file(local), common.MISSING_IMAGE


def _image(attrs: dict[str, str], page_dir: str, root: str) -> tuple[bytes | None, str]:
  """(bytes, "") for the first candidate URL that loads, else (None, drop reason)."""
  candidates = [html_text.srcset_best(attrs.get("srcset", "")), attrs.get("src"),
                attrs.get("data-src")]
  reason = common.MISSING_IMAGE
  for url in candidates:
    if not url or not url.strip():
      continue
    data, why = _resolve(url, page_dir, root)
    if data is not None:
      return data, ""
    if reason == common.MISSING_IMAGE:
      reason = why
  return None, reason


def convert_unit(unit: Unit, args: argparse.Namespace, ctx: Context) -> Iterator[dict[str, Any]]:
  """The record of one page (or nothing, with the reason counted)."""
  path, root = unit.payload
  with open(path, "rb") as f:
    markup = html_text.decode_page(f.read(), args.fallback_encoding)
  if markup is None:
    ctx.drop(common.INVALID_UTF8)
    return
  title, extracted = html_text.extract(markup)
  items: list[interleaved.Item] = []
  pending: set[bytes] = set()
  for kind, value in extracted:
    if kind == "text":
      items.append(("text", value))
      continue
    data, reason = _image(value, os.path.dirname(path), root)
    if data is None:
      ctx.drop(reason)
      continue
    data = ctx.check_image(data, pending)
    if data is not None:
      items.append(("image", data))
  done = interleaved.finish(items, unit.key, args, ctx, separator="\n\n")
  if done is None:
    return
  kind, segments = done
  meta = {"file": unit.key}
  if title:
    meta["title"] = title
  yield {"id": unit.key, "source": common.source_name(args), "kind": kind,
         "segments": segments, "meta": meta}


def main(args: argparse.Namespace) -> int:
  return runner.run(args, module=__name__, list_units=list_units)
