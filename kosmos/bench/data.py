"""Input-pipeline benchmark: throughput per kind and for the mix, packing, raw decode rate.

    python -m kosmos.bench.data --config configs/demo.py --out data_bench.json
    python -m kosmos.bench.data --synthetic /tmp/bench_records --image-size 224 \
        --tokens-per-image 64 --seq-len 2048 --max-images-per-row 24 --out data_bench.json

With `--config`, the config's `data.sources` are read (image size and tokens per image come
from `--image-size/--tokens-per-image` or the config's model when it defines them). With
`--synthetic DIR`, text / pair / interleaved record directories with photo-sized JPEGs are
written to DIR first (KOSMOS-1 token weights 0.5 / 0.5 / 0.2). `--records KIND=DIR` adds
sources by hand.

Every figure is *per worker*: the pipeline runs in-process (workers=0) with one decoding
thread per source, so it uses one core like the plain Pillow loop it is compared with:

    raw_decode_resize   images/s of Image.open -> RGB -> bicubic shorter side -> center crop
                        (no draft) on the same image bytes the pipeline reads
    kosmos_decode       images/s of kosmos.data.images.decode (JPEG draft + same resize)
    per kind and mix    records/s, non-pad tokens/s, images/s, packing efficiency
    pipeline_vs_raw     mix-free image throughput of the pair source / raw_decode_resize
"""

from __future__ import annotations

import argparse
import io
import os
import time
from typing import Any

import ml_collections
import numpy as np
from PIL import Image

from kosmos import configs
from kosmos import defaults
from kosmos.bench import report
from kosmos.data import images as images_lib
from kosmos.data import pipeline, records

KOSMOS1_WEIGHTS = {"text": 0.5, "pair": 0.5, "interleaved": 0.2}


def _photo(rng: np.random.Generator, width: int, height: int) -> bytes:
  """A JPEG with smooth gradients, shapes and grain: decodes like a photo, not like noise."""
  y, x = np.mgrid[0:height, 0:width].astype(np.float32)
  base = np.stack([np.sin(x / rng.uniform(20, 90) + c) * 60 + np.cos(y / rng.uniform(20, 90))
                   * 60 + 128 for c in rng.uniform(0, 6, 3)], -1)
  for _ in range(6):
    cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(10, 80)
    base[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = rng.uniform(0, 255, 3)
  base += rng.normal(0, 8, base.shape)
  buf = io.BytesIO()
  Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
  return buf.getvalue()


def write_synthetic(root: str, n_records: int = 400, seed: int = 0) -> dict[str, str]:
  """Writes text / pair / interleaved record dirs under root; returns kind -> dir."""
  rng = np.random.default_rng(seed)
  photos = [_photo(rng, int(rng.integers(400, 640)), int(rng.integers(300, 480)))
            for _ in range(48)]
  vocabulary = [("".join(chr(97 + c) for c in rng.integers(0, 26, int(rng.integers(2, 9)))))
                for _ in range(2000)]

  def words(n: int) -> str:
    return " ".join(vocabulary[i] for i in rng.integers(0, len(vocabulary), n))

  dirs = {}
  for kind in ("text", "pair", "interleaved"):
    directory = os.path.join(root, kind)
    dirs[kind] = directory
    if os.path.isdir(directory) and records.shard_paths(directory):
      continue
    os.makedirs(directory, exist_ok=True)
    with records.ShardWriter(os.path.join(directory, records.shard_name(kind, 0, 1))) as w:
      for i in range(n_records):
        if kind == "text":  # web documents: ~150..2000 words
          segments = [{"text": words(int(rng.integers(150, 2000)))}]
        elif kind == "pair":  # alt-text captions: ~5..20 words
          segments = [{"image": photos[int(rng.integers(len(photos)))]},
                      {"text": words(int(rng.integers(5, 20)))}]
        else:  # interleaved: 1..5 images between paragraphs
          segments = []
          for _ in range(int(rng.integers(1, 6))):
            segments += [{"text": words(int(rng.integers(30, 150)))},
                         {"image": photos[int(rng.integers(len(photos)))]}]
        w.write({"id": f"{kind}-{i}", "source": "synthetic", "kind": kind, "segments": segments})
  return dirs


def _image_bytes(directory: str, limit: int) -> list[bytes]:
  out = []
  for record in records.read_dir(directory):
    out.extend(s["image"] for s in record["segments"] if "image" in s)
    if len(out) >= limit:
      break
  return out[:limit]


def raw_decode_rate(blobs: list[bytes], size: int, seconds: float) -> float:
  """Images/s of a plain Pillow loop: open, RGB, bicubic shorter side, center crop."""
  done, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    im = Image.open(io.BytesIO(blobs[done % len(blobs)])).convert("RGB")
    w, h = im.size
    scale = size / min(w, h)
    im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))),
                   Image.Resampling.BICUBIC)
    left, top = (im.width - size) // 2, (im.height - size) // 2
    np.asarray(im.crop((left, top, left + size, top + size)))
    done += 1
  return done / (time.perf_counter() - start)


def kosmos_decode_rate(blobs: list[bytes], size: int, seconds: float) -> float:
  done, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    images_lib.decode(blobs[done % len(blobs)], size)
    done += 1
  return done / (time.perf_counter() - start)


def pipeline_rate(data: ml_collections.ConfigDict, tokenizer: ml_collections.ConfigDict,
                  image_size: int, tokens_per_image: int, seconds: float) -> dict[str, Any]:
  """Runs the pipeline in-process for `seconds` after a warm-up batch; returns rates."""
  it = iter(pipeline.make_dataset(data, tokenizer, image_size=image_size,
                                  tokens_per_image=tokens_per_image))
  next(it)  # warm-up: builds the first packing generation, fills read buffers
  n_batches = records_done = tokens = image_count = 0
  eff = []
  kinds = np.zeros(4)
  start = time.perf_counter()
  while time.perf_counter() - start < seconds or n_batches < 2:
    batch = next(it)
    n_batches += 1
    records_done += sum(v for k, v in batch["data_stats"].items() if k.endswith("/records"))
    tokens += int((batch["segment_ids"] > 0).sum())
    image_count += int(batch["image_mask"].sum())
    kinds += np.bincount(batch["kind_ids"].ravel(), minlength=4)
    eff.append(pipeline.packing_efficiency(batch))
  elapsed = time.perf_counter() - start
  share = kinds[1:] / max(kinds[1:].sum(), 1)
  return {"batches": n_batches, "seconds": round(elapsed, 2),
          "examples_per_s": round(records_done / elapsed, 2),
          "tokens_per_s": round(tokens / elapsed, 1),
          "images_per_s": round(image_count / elapsed, 2),
          "packing_efficiency": round(float(np.mean(eff)), 4),
          "token_share": {"text": round(float(share[0]), 4), "pair": round(float(share[1]), 4),
                          "interleaved": round(float(share[2]), 4)}}


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m kosmos.bench.data", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", help="configs/X.py[:arg] whose data.sources are read")
  parser.add_argument("--synthetic", help="write synthetic records to this dir and use them")
  parser.add_argument("--records", nargs="*", default=[], help="KIND=DIR sources to add")
  parser.add_argument("--synthetic-records", type=int, default=400)
  parser.add_argument("--image-size", type=int, default=0, help="0: from the config, else 224")
  parser.add_argument("--tokens-per-image", type=int, default=0,
                      help="0: from the config's model, else 64")
  parser.add_argument("--seq-len", type=int, default=0, help="0: config.data.seq_len")
  parser.add_argument("--batch-size", type=int, default=0, help="0: config.data's")
  parser.add_argument("--max-images-per-row", type=int, default=0)
  parser.add_argument("--seconds", type=float, default=10.0, help="per measurement")
  parser.add_argument("--out", required=True, help="JSON file to write")
  args = parser.parse_args(argv)

  config = configs.load(args.config) if args.config else defaults.base()
  data, tokenizer = config.data, config.tokenizer
  image_size, tokens_per_image = args.image_size, args.tokens_per_image
  if "model" in config and not (image_size and tokens_per_image):
    try:
      from kosmos.model import multimodal  # pylint: disable=import-outside-toplevel
      image_size = image_size or config.model.vision.image_size
      tokens_per_image = tokens_per_image or multimodal.tokens_per_image(config.model)
    except (ImportError, AttributeError):
      pass
  image_size, tokens_per_image = image_size or 224, tokens_per_image or 64
  sources = {name: dict(s) for name, s in data.sources.items()} if args.config else {}
  if args.synthetic:
    for kind, directory in write_synthetic(args.synthetic, args.synthetic_records).items():
      sources[kind] = {"path": directory, "kind": kind, "weight": KOSMOS1_WEIGHTS[kind]}
  for item in args.records:
    kind, _, directory = item.partition("=")
    sources[kind] = {"path": directory, "kind": kind, "weight": KOSMOS1_WEIGHTS.get(kind, 1.0)}
  if not sources:
    parser.error("no sources: give --config with data.sources, --synthetic DIR or --records")
  data.sources = ml_collections.ConfigDict(sources)
  data.update(workers=0, read_threads=1, bad_check_min_records=10**9)
  for flag, key in (("seq_len", "seq_len"), ("batch_size", "global_batch_size"),
                    ("max_images_per_row", "max_images_per_row")):
    if getattr(args, flag):
      data[key] = getattr(args, flag)

  blobs = []
  for s in sources.values():
    if s["kind"] != "text":
      blobs += _image_bytes(s["path"], 64)
  result: dict[str, Any] = report.environment("kosmos.bench.data", argv)
  result.update({
      "image_size": image_size, "tokens_per_image": tokens_per_image, "seq_len": data.seq_len,
      "batch_size": data.global_batch_size, "max_images_per_row": data.max_images_per_row,
      "workers": "in-process (1 worker, 1 decode thread per source)",
  })
  if blobs:
    result["raw_decode_resize_images_per_s"] = round(raw_decode_rate(blobs, image_size,
                                                                     args.seconds), 2)
    result["kosmos_decode_images_per_s"] = round(kosmos_decode_rate(blobs, image_size,
                                                                    args.seconds), 2)
  per_kind = {}
  for name, s in sources.items():
    single = ml_collections.ConfigDict(data.to_dict())
    single.sources = ml_collections.ConfigDict({name: s})
    per_kind[name] = pipeline_rate(single, tokenizer, image_size, tokens_per_image, args.seconds)
  result["per_source"] = per_kind
  if len(sources) > 1:
    result["mix"] = pipeline_rate(data, tokenizer, image_size, tokens_per_image, args.seconds)
    total = sum(s["weight"] for s in sources.values())
    result["mix"]["configured_token_share"] = {
        s["kind"]: round(s["weight"] / total, 4) for s in sources.values()}
  if blobs:
    image_sources = [v["images_per_s"] for k, v in per_kind.items()
                     if sources[k]["kind"] == "pair"]
    if image_sources:
      result["pipeline_vs_raw"] = round(image_sources[0] /
                                        result["raw_decode_resize_images_per_s"], 3)
  report.write(result, args.out)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
