"""Assembling interleaved image-text documents and the document-level filters.

Converters collect a document as a list of ("text", str) and ("image", bytes) items in
reading order (images already checked by `Context.check_image`); `finish` merges
adjacent texts and applies, in this order: the images-per-document limit (truncate to
the first N or drop the document), no text -> `empty_text`, no image -> `no_images`
(or kept as kind=text with --keep-text-only), and KOSMOS-1's rule of dropping a
seeded-random fraction of single-image documents (`single_image_dropped`; the draw is a
hash of the seed and the document id, so it is the same on every run and worker).
"""

from __future__ import annotations

import argparse
import hashlib
from typing import Any

from kosmos.data.convert import common
from kosmos.data.convert.common import Context

TOO_MANY_IMAGES = "too_many_images"
NO_IMAGES = "no_images"
SINGLE_IMAGE_DROPPED = "single_image_dropped"

Item = tuple[str, Any]  # ("text", str) | ("image", bytes)


def add_document_arguments(parser: argparse.ArgumentParser, *, max_images: int = 0,
                           single_fraction: float = 0.0) -> None:
  parser.add_argument("--max-images-per-doc", type=int, default=max_images,
                      help="limit on images per document (0 = none); see --too-many-images")
  parser.add_argument("--too-many-images", choices=("truncate", "drop"), default="truncate",
                      help="truncate: keep the first N images (each cut image counted as "
                           f"{TOO_MANY_IMAGES}); drop: drop the document (counted once)")
  parser.add_argument("--drop-single-image-fraction", type=float, default=single_fraction,
                      help="fraction of single-image documents dropped at random "
                           "(seeded per document id; KOSMOS-1 uses 0.5)")
  parser.add_argument("--seed", type=int, default=0, help="seed of the single-image draw")
  parser.add_argument("--keep-text-only", action="store_true",
                      help=f"keep documents without images as kind=text (else {NO_IMAGES})")


def draw(seed: int, doc_id: str) -> float:
  """A uniform number in [0, 1) fixed by (seed, doc_id)."""
  digest = hashlib.sha256(f"{seed}:{doc_id}".encode("utf-8", "surrogatepass")).digest()
  return int.from_bytes(digest[:8], "big") / 2.0**64


def merge(items: list[Item], separator: str) -> list[dict[str, Any]]:
  """Segments from items: adjacent texts joined by `separator`, blank texts removed."""
  segments: list[dict[str, Any]] = []
  texts: list[str] = []
  for kind, value in items:
    if kind == "text":
      if value.strip():
        texts.append(value.strip())
      continue
    if texts:
      segments.append({"text": separator.join(texts)})
      texts = []
    segments.append({"image": value})
  if texts:
    segments.append({"text": separator.join(texts)})
  return segments


def finish(items: list[Item], doc_id: str, args: argparse.Namespace, ctx: Context, *,
           separator: str) -> tuple[str, list[dict[str, Any]]] | None:
  """(kind, segments) of a document that passes the filters, else None after counting why."""
  n_images = sum(1 for kind, _ in items if kind == "image")
  limit = args.max_images_per_doc
  if limit and n_images > limit:
    if args.too_many_images == "drop":
      ctx.drop(TOO_MANY_IMAGES)
      return None
    ctx.drop(TOO_MANY_IMAGES, n_images - limit)
    kept, out = 0, []
    for kind, value in items:
      if kind == "image":
        kept += 1
        if kept > limit:
          continue
      out.append((kind, value))
    items, n_images = out, limit
  segments = merge(items, separator)
  if not any("text" in s for s in segments):
    ctx.drop(common.EMPTY_TEXT)
    return None
  if n_images == 0:
    if args.keep_text_only:
      return "text", segments
    ctx.drop(NO_IMAGES)
    return None
  if n_images == 1 and draw(args.seed, doc_id) < args.drop_single_image_fraction:
    ctx.drop(SINGLE_IMAGE_DROPPED)
    return None
  return "interleaved", segments
