"""Any TFDS image-text dataset (prepared in ArrayRecord format) -> kind=pair records.

Reads `tfds.data_source(NAME, split=..., data_dir=...)` by index, so the dataset must
already be prepared in --data-dir with file_format='array_record' (nothing is
downloaded). Features are picked by '/'-separated paths (`captions/text` for COCO).
Decoded image arrays are encoded to PNG (lossless, default) or JPEG; a caption feature
holding several captions gives the first one or one record per caption (--captions).
Units are ranges of --examples-per-unit consecutive examples.
"""

from __future__ import annotations

import argparse
from typing import Any, Iterator

import numpy as np

from kosmos.data.convert import common, images, runner
from kosmos.data.convert.common import Context, Unit

DESCRIPTION = "TFDS image-text dataset via tfds.data_source (array_record) -> kind=pair"
_SOURCES: dict[tuple[str, str, str | None], Any] = {}  # per process


def add_arguments(parser: argparse.ArgumentParser) -> None:
  common.add_common_arguments(parser, input_help="TFDS dataset name, e.g. coco_captions/2017 "
                                                 "or my_dataset:1.0.0 (one name)")
  parser.add_argument("--split", default="train", help="TFDS split, e.g. train or val[:10%%]")
  parser.add_argument("--data-dir", default=None, help="TFDS data_dir holding the prepared data")
  parser.add_argument("--image-feature", default="image", help="path of the image feature")
  parser.add_argument("--text-feature", default="captions/text", help="path of the text feature")
  parser.add_argument("--captions", choices=("first", "all"), default="first",
                      help="for a list of captions: keep the first, or one record per caption")
  parser.add_argument("--image-encoding", choices=("png", "jpeg"), default="png")
  parser.add_argument("--jpeg-quality", type=int, default=95)
  parser.add_argument("--meta-features", default="",
                      help="comma-separated feature paths copied into record meta")
  parser.add_argument("--examples-per-unit", type=int, default=1000,
                      help="examples per work unit (shards take whole units)")


def _source(args: argparse.Namespace) -> Any:
  key = (args.input[0], args.split, args.data_dir)
  if key not in _SOURCES:
    import tensorflow_datasets as tfds  # heavy: only when this format runs
    _SOURCES[key] = tfds.data_source(args.input[0], split=args.split, data_dir=args.data_dir)
  return _SOURCES[key]


def list_units(args: argparse.Namespace) -> list[Unit]:
  if len(args.input) != 1:
    raise ValueError(f"tfds takes one dataset name in --input, got {args.input}")
  if args.examples_per_unit < 1:
    raise ValueError(f"--examples-per-unit {args.examples_per_unit} must be >= 1")
  total = len(_source(args))
  step = args.examples_per_unit
  return [Unit(key=f"{start:012d}", size=min(step, total - start) * 100_000,
               payload=(start, min(start + step, total)))
          for start in range(0, total, step)] or [Unit(key="empty", size=0, payload=(0, 0))]


def _texts(value: Any) -> list[Any]:
  """A text feature as a list (scalar -> [scalar]; numpy arrays of bytes -> list)."""
  if isinstance(value, np.ndarray):
    return value.tolist() if value.ndim else [value.item()]
  if isinstance(value, (list, tuple)):
    return list(value)
  return [value]


def _image(value: Any, args: argparse.Namespace, ctx: Context) -> bytes | None:
  if isinstance(value, (bytes, bytearray)):
    return ctx.check_image(bytes(value))
  if isinstance(value, np.ndarray) and value.dtype == np.uint8 and value.ndim in (2, 3):
    try:
      return ctx.check_image(images.encode_array(value, args.image_encoding, args.jpeg_quality))
    except ValueError:
      pass
  ctx.drop(common.MISSING_IMAGE if value is None else "unsupported_image_value")
  return None


def convert_unit(unit: Unit, args: argparse.Namespace, ctx: Context) -> Iterator[dict[str, Any]]:
  """Pair records of examples [start, stop), in index order."""
  source = _source(args)
  name = args.input[0]
  meta_features = [f for f in args.meta_features.split(",") if f]
  for index in range(*unit.payload):
    example = source[index]
    captions = []
    for text in _texts(common.field(example, args.text_feature)):
      if text is None:
        ctx.drop(common.MISSING_FIELD)
        continue
      if isinstance(text, bytes):
        text = common.decode_text(text, ctx)
        if text is None:
          continue
      if not isinstance(text, str):
        ctx.drop("invalid_field")
        continue
      if not text.strip():
        ctx.drop(common.EMPTY_TEXT)
        continue
      captions.append(text.strip())
      if args.captions == "first":
        break
    if not captions:
      continue
    image = _image(common.field(example, args.image_feature), args, ctx)
    if image is None:
      continue
    meta = {"split": args.split, "index": index}
    for path in meta_features:
      value = common.field(example, path)
      if isinstance(value, np.ndarray):
        value = value.tolist()
      elif isinstance(value, np.generic):
        value = value.item()
      meta[path] = common.meta_value(value)
    for k, text in enumerate(captions):
      suffix = f"#{k}" if args.captions == "all" else ""
      yield {"id": f"{name}/{args.split}/{index}{suffix}", "source": common.source_name(args),
             "kind": "pair", "segments": [{"image": image}, {"text": text}], "meta": meta}


def main(args: argparse.Namespace) -> int:
  return runner.run(args, module=__name__, list_units=list_units)
