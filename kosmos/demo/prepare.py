"""`python data/prepare.py shapes --output DIR`: the synthetic shapes world for the demo.

Writes (all byte-identical for a given --seed and counts, whatever --workers):

  DIR/records/pair/          kind=pair: [image, caption]
  DIR/records/interleaved/   kind=interleaved pages: galleries (captions), quizzes
                             (Question/Answer), Frozen-style fast-binding episodes and
                             task-induction pages (one unnamed label type per page)
  DIR/records/text/          kind=text: sentences of world knowledge
  DIR/records/grounded/      kind=pair with meta.boxes: referring expressions of the
                             objects with their boxes (--grounded N; kosmos.demo.grounding)
  DIR/eval/coco/             Karpathy-split captions (dataset_coco.json + JPEGs)
  DIR/eval/vqa/              VQAv2 questions/annotations (+ JPEGs), splits train and val
  DIR/eval/binding/          2-way nonce-word classification episodes (jsonl + PNGs)
  DIR/eval/induction/        task-induction episodes (jsonl + PNGs, the binding layout)
  DIR/eval/refexp/           referring expressions in MDETR's RefCOCO layout (--refexp-val N)
  DIR/world.json             vocabulary, templates, counts, seed

Every record or eval item draws from its own generator seeded by (seed, stream, index);
eval streams differ from training streams, eval images are pairwise distinct, and a
training image whose pixels equal an eval image's is redrawn (counted in the manifests'
`dropped` as `eval_image_collision`).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import hashlib
import json
import multiprocessing
import os
import sys
import time
from typing import Any, Callable

import numpy as np

from kosmos.data import records
from kosmos.demo import world as sw
from kosmos.demo import eval_sets
from kosmos.demo import grounding

DESCRIPTION = "synthetic shapes world: records + COCO, VQAv2, binding, induction, RefCOCO"
SOURCE = "shapes"
COLLISION = "eval_image_collision"
# Seed streams: training and eval never share one.
STREAMS = {"pair": 1, "interleaved": 2, "text": 3, "grounded": 4, "coco": 11, "vqa": 12,
           "binding": 13, "induction": 14, "refexp": 15}
PAGE_KINDS = ("binding", "induction", "gallery", "quiz")
GALLERY_TITLES = ("Shapes.", "My pictures of shapes.", "A page about shapes.",
                  "Look at these shapes.")


def stream_rng(seed: int, stream: str, index: int, sub: int = 0) -> np.random.Generator:
  """The generator of item `index` of a stream; the key always has four words."""
  return np.random.default_rng([seed, STREAMS[stream], sub, index])


@dataclasses.dataclass(frozen=True)
class Config:
  """What to generate (every field is a flag of the same name with '-' for '_')."""
  seed: int = 0
  pairs: int = 20000
  pages: int = 5000
  texts: int = 5000
  image_size: int = 48
  max_images_per_page: int = 5
  binding_fraction: float = 0.1
  induction_fraction: float = 0.4
  coco_train: int = 200
  coco_val: int = 50
  coco_test: int = 300
  vqa_train: int = 150
  vqa_val: int = 200
  questions_per_image: int = 3
  binding_episodes: int = 200
  induction_episodes: int = 240
  grounded: int = 0
  refexp_train: int = 0
  refexp_val: int = 0
  records_per_shard: int = 1000

  def check(self) -> None:
    for name in ("pairs", "pages", "texts", "coco_train", "coco_val", "coco_test", "vqa_train",
                 "vqa_val", "binding_episodes", "induction_episodes", "grounded", "refexp_train",
                 "refexp_val"):
      if getattr(self, name) < 0:
        raise ValueError(f"--{name.replace('_', '-')} {getattr(self, name)} must be >= 0")
    if self.seed < 0:
      raise ValueError(f"--seed {self.seed} must be >= 0")
    if self.image_size < 16 or self.image_size % 2:
      raise ValueError(f"--image-size {self.image_size} must be an even number >= 16")
    if self.max_images_per_page < 3:
      raise ValueError(f"--max-images-per-page {self.max_images_per_page} must be >= 3 "
                       "(a binding episode needs two supports and a query)")
    if min(self.binding_fraction, self.induction_fraction) < 0 or (
        self.binding_fraction + self.induction_fraction > 1):
      raise ValueError(f"--binding-fraction {self.binding_fraction} and --induction-fraction "
                       f"{self.induction_fraction} must be >= 0 and sum to <= 1")
    if self.questions_per_image < 1 or self.records_per_shard < 1:
      raise ValueError("--questions-per-image and --records-per-shard must be >= 1")


class ImageMaker:
  """Renders scenes to PNG, redrawing any whose pixels are in `forbidden`."""

  def __init__(self, image_size: int, forbidden: frozenset[bytes] | set[bytes]):
    self.image_size = image_size
    self.forbidden = forbidden
    self.collisions = 0

  def make(self, draw: Callable[[], sw.Scene]) -> tuple[sw.Scene, Any, bytes]:
    """(scene, PIL image, pixel digest) for the first drawn scene not forbidden."""
    for _ in range(1000):
      scene = draw()
      image = sw.render_scene(scene, self.image_size)
      digest = pixel_digest(image)
      if digest not in self.forbidden:
        return scene, image, digest
      self.collisions += 1
    raise RuntimeError("1000 draws in a row rendered forbidden images; the world is too small "
                       f"for the requested eval sets at --image-size {self.image_size}")

  def unique(self, draw: Callable[[], sw.Scene]) -> tuple[sw.Scene, Any]:
    """(scene, PIL image) whose pixels no earlier image had; its digest becomes forbidden
    (eval images: pairwise distinct, and later kept out of training)."""
    scene, image, digest = self.make(draw)
    self.forbidden.add(digest)
    return scene, image

  def png(self, draw: Callable[[], sw.Scene]) -> tuple[sw.Scene, bytes]:
    scene, image, _ = self.make(draw)
    return scene, sw.encode_image(image, "PNG")


def pixel_digest(image: Any) -> bytes:
  """Digest of an image's RGB pixels (independent of the file encoding)."""
  return hashlib.sha256(image.tobytes()).digest()[:16]


# ---------------------------------------------------------------------------- records


def pair_record(i: int, rng: np.random.Generator, maker: ImageMaker) -> dict[str, Any]:
  scene, png = maker.png(lambda: sw.sample_scene(rng))
  return {"id": f"{SOURCE}-pair-{i:07d}", "source": SOURCE, "kind": "pair",
          "segments": [{"image": png}, {"text": sw.caption(scene, rng)}],
          "meta": {"scene": scene.to_dict()}}


def binding_segments(rng: np.random.Generator, maker: ImageMaker,
                     max_images: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
  """A fast-binding page: nonce words bound to object kinds for this page only.

  2-way (3-way 1 in 5 when it fits); 1..floor((max_images-1)/ways) rounds in which every
  kind appears once in random order, then a query image of a random kind. Every image is
  one object of its kind (random size and cell) on the page's background, followed by
  its word ("dax."), the query too: the page trains exactly what the eval asks."""
  ways = 3 if max_images >= 4 and rng.random() < 0.2 else 2
  shots = int(rng.integers(1, (max_images - 1) // ways + 1))
  kinds = sw.binding_kinds(rng, ways)
  words = [sw.BINDING_WORDS[j] for j in rng.choice(len(sw.BINDING_WORDS), size=ways,
                                                  replace=False)]
  background = tuple(sw.BACKGROUNDS)[rng.integers(len(sw.BACKGROUNDS))]
  order = [int(k) for _ in range(shots) for k in rng.permutation(ways)]
  segments: list[dict[str, Any]] = []
  for k in order + [int(rng.integers(ways))]:
    shape, colour = kinds[k]
    _, png = maker.png(lambda: sw.single_scene(rng, shape=shape, colour=colour,
                                               background=background))
    segments += [{"image": png}, {"text": f"{words[k]}."}]
  meta = {"page": "binding", "ways": ways, "shots": shots, "background": background,
          "bindings": {w: f"{c} {s}" for w, (s, c) in zip(words, kinds)}}
  return segments, meta


def induction_segments(rng: np.random.Generator, maker: ImageMaker,
                       max_images: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
  """A task-induction page: 2..max_images images, each followed by its label under the
  page's label type ("red.", "two.", "top left.", "hapo."), the type never named."""
  label_type = sw.INDUCTION_TYPES[rng.integers(len(sw.INDUCTION_TYPES))]
  segments: list[dict[str, Any]] = []
  for _ in range(int(rng.integers(2, max_images + 1))):
    scene, png = maker.png(lambda: sw.induction_scene(rng, label_type))
    segments += [{"image": png}, {"text": f"{sw.induction_labels(scene)[label_type]}."}]
  return segments, {"page": "induction", "label_type": label_type}


def page_record(i: int, rng: np.random.Generator, maker: ImageMaker, *, max_images: int,
                binding_fraction: float, induction_fraction: float) -> dict[str, Any]:
  """An interleaved page: a binding episode, a task-induction page, a gallery of captions
  or a quiz."""
  other = (1 - binding_fraction - induction_fraction) / 2
  kind = PAGE_KINDS[rng.choice(len(PAGE_KINDS),
                               p=[binding_fraction, induction_fraction, other, other])]
  if kind == "binding":
    segments, meta = binding_segments(rng, maker, max_images)
  elif kind == "induction":
    segments, meta = induction_segments(rng, maker, max_images)
  else:
    segments = []
    if kind == "gallery":
      segments.append({"text": GALLERY_TITLES[rng.integers(len(GALLERY_TITLES))]})
    for _ in range(int(rng.integers(2 if kind == "gallery" else 1, max_images + 1))):
      scene, png = maker.png(lambda: sw.sample_scene(rng))
      if kind == "gallery":
        text = sw.caption(scene, rng) + "."
      else:
        qas = sw.sample_questions(scene, rng, int(rng.integers(1, 3)))
        text = " ".join(f"Question: {q.question} Answer: {q.answer}." for q in qas)
      segments += [{"image": png}, {"text": text}]
    meta = {"page": kind}
  return {"id": f"{SOURCE}-page-{i:07d}", "source": SOURCE, "kind": "interleaved",
          "segments": segments, "meta": meta}


def text_record(i: int, rng: np.random.Generator) -> dict[str, Any]:
  text = " ".join(sw.fact_sentences(rng, int(rng.integers(3, 9))))
  return {"id": f"{SOURCE}-text-{i:07d}", "source": SOURCE, "kind": "text",
          "segments": [{"text": text}], "meta": {}}


def write_shard(task: dict[str, Any]) -> dict[str, Any]:
  """Worker: writes records [start, stop) of one kind into one shard; returns its info."""
  config: Config = task["config"]
  kind = task["kind"]
  maker = ImageMaker(config.image_size, task["forbidden"])
  with records.ShardWriter(task["path"]) as writer:
    for i in range(task["start"], task["stop"]):
      rng = stream_rng(config.seed, kind, i)
      if kind == "pair":
        record = pair_record(i, rng, maker)
      elif kind == "grounded":
        record = grounding.grounded_record(f"{SOURCE}-grounded-{i:07d}", SOURCE, rng, maker)
      elif kind == "interleaved":
        record = page_record(i, rng, maker, max_images=config.max_images_per_page,
                             binding_fraction=config.binding_fraction,
                             induction_fraction=config.induction_fraction)
      else:
        record = text_record(i, rng)
      writer.write(record)
  info = records.ShardInfo(name=os.path.basename(task["path"]),
                           records=task["stop"] - task["start"], bytes=writer.bytes,
                           sha256=records.sha256(task["path"]), kinds=dict(writer.counts))
  return {"info": info, "collisions": maker.collisions}


def _record_tasks(output: str, config: Config, forbidden: frozenset[bytes]
                  ) -> dict[str, list[dict[str, Any]]]:
  tasks = {}
  # Heaviest first (a page has ~3.5 images), so the workers finish together.
  for kind, count in (("interleaved", config.pages), ("pair", config.pairs),
                      ("text", config.texts), ("grounded", config.grounded)):
    if kind == "grounded" and not count:  # off unless asked for
      continue
    directory = os.path.join(output, "records", kind)
    os.makedirs(directory, exist_ok=True)
    for name in os.listdir(directory):  # a previous run's shards would be read as ours
      if name.endswith(records.SUFFIX) or name.startswith(records.MANIFEST):
        os.remove(os.path.join(directory, name))
    n = max(1, -(-count // config.records_per_shard))
    tasks[kind] = [{"kind": kind, "config": config, "forbidden": forbidden,
                    "path": os.path.join(directory, records.shard_name(SOURCE, s, n)),
                    "start": s * count // n, "stop": (s + 1) * count // n} for s in range(n)]
  return tasks


def _arguments(config: Config) -> dict[str, Any]:
  return {"format": SOURCE, **dataclasses.asdict(config)}


# ---------------------------------------------------------------------------- driver


def generate(output_dir: str, config: Config | None = None, *, workers: int = 1,
             **overrides: Any) -> dict[str, Any]:
  """Writes the whole world to `output_dir`; returns the world summary (world.json).

  `overrides` replace Config fields, e.g. generate(d, pairs=100, seed=3)."""
  config = dataclasses.replace(config or Config(), **overrides)
  config.check()
  if workers < 1:
    raise ValueError(f"workers {workers} must be >= 1")
  os.makedirs(output_dir, exist_ok=True)
  eval_maker = ImageMaker(config.image_size, set())
  eval_files, eval_counts = eval_sets.build_all(
      config, eval_maker, lambda stream, index, sub=0: stream_rng(config.seed, stream, index, sub))
  tasks = _record_tasks(output_dir, config, frozenset(eval_maker.forbidden))
  flat = [t for kind_tasks in tasks.values() for t in kind_tasks]
  if workers == 1 or len(flat) == 1:
    eval_sets.write_files(os.path.join(output_dir, "eval"), eval_files)
    results = list(map(write_shard, flat))
  else:  # the eval files are written while the workers render the records
    with multiprocessing.get_context("spawn").Pool(min(workers, len(flat))) as pool:
      pending = pool.map_async(write_shard, flat, chunksize=1)
      eval_sets.write_files(os.path.join(output_dir, "eval"), eval_files)
      results = pending.get()
  by_path = {t["path"]: r for t, r in zip(flat, results)}
  manifests = {}
  for kind, kind_tasks in tasks.items():
    done = [by_path[t["path"]] for t in kind_tasks]
    collisions = sum(r["collisions"] for r in done)
    manifests[kind] = records.write_manifest(
        os.path.join(output_dir, "records", kind), [r["info"] for r in done],
        converter=SOURCE, arguments=_arguments(config),
        dropped={COLLISION: collisions} if collisions else {})
  world = world_summary(config, eval_counts, manifests)
  with open(os.path.join(output_dir, "world.json"), "w") as f:
    json.dump(world, f, indent=1, sort_keys=True)
  return world


def world_summary(config: Config, eval_counts: dict[str, Any],
                  manifests: dict[str, dict[str, Any]]) -> dict[str, Any]:
  return {
      "generator": "kosmos.demo.prepare",
      "seed": config.seed,
      "config": dataclasses.asdict(config),
      "image_size": config.image_size,
      "shapes": list(sw.SHAPES),
      "colours": {k: list(v) for k, v in sw.COLOURS.items()},
      "backgrounds": list(sw.BACKGROUNDS),
      "sizes": list(sw.SIZES),
      "size_synonyms": sw.SIZE_SYNONYMS,
      "positions": list(sw.POSITIONS),
      "max_objects": sw.MAX_OBJECTS,
      "scene_kinds": dict(zip(sw.SCENE_KINDS, sw.SCENE_KIND_PROBS)),
      "nonce": {"syllables": list(sw.SYLLABLES), "codas": list(sw.CODAS),
                "words": len(sw.all_nonce_words()), "binding_words": list(sw.BINDING_WORDS)},
      "induction": {"types": list(sw.INDUCTION_TYPES), "code": sw.CODE_WORDS},
      "templates": sw.TEMPLATES,
      "records": {kind: {"records": m["records"], "kinds": m["kinds"], "dropped": m["dropped"],
                         "path": f"records/{kind}"} for kind, m in manifests.items()},
      "eval": eval_counts,
  }


def add_arguments(parser: argparse.ArgumentParser) -> None:
  defaults = Config()
  parser.add_argument("--output", required=True, metavar="DIR",
                      help="output directory (records/, eval/, world.json)")
  parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                      help="processes writing record shards (does not change the output)")
  helps = {
      "seed": "seed of every stream; same seed => byte-identical output",
      "pairs": "pair records (image + caption)",
      "pages": "interleaved pages (binding episodes, galleries, quizzes)",
      "texts": "text-only documents",
      "image_size": "image side in pixels; 48 = a 2x2 grid of 24-px cells, small shapes "
                    ">= 11 px (at 32 px small stars blur into circles)",
      "max_images_per_page": "images per interleaved page at most (data.max_images_per_doc)",
      "binding_fraction": "share of interleaved pages that are fast-binding episodes",
      "induction_fraction": "share of interleaved pages that are task-induction pages",
      "coco_train": "COCO-layout images in split 'train' (few-shot demonstrations)",
      "coco_val": "COCO-layout images in split 'val'",
      "coco_test": "COCO-layout images in split 'test' (queries)",
      "vqa_train": "VQAv2-layout images in split train (demonstrations)",
      "vqa_val": "VQAv2-layout images in split val (queries)",
      "questions_per_image": "VQA questions per image",
      "binding_episodes": "binding eval episodes (2-way, 4 shots available)",
      "induction_episodes": "task-induction eval episodes (8 supports, label types balanced)",
      "grounded": "grounded pair records: expressions of the objects with their boxes",
      "refexp_train": "referring eval images in split train (demonstrations)",
      "refexp_val": "referring eval images in split val (queries; one per object)",
      "records_per_shard": "records per ArrayRecord shard",
  }
  for field in dataclasses.fields(Config):
    default = getattr(defaults, field.name)
    parser.add_argument("--" + field.name.replace("_", "-"), type=type(default),
                        default=default, help=f"{helps[field.name]} (default {default})")


def main(args: argparse.Namespace) -> int:
  config = Config(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Config)})
  start = time.perf_counter()
  try:
    world = generate(args.output, config, workers=args.workers)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  seconds = time.perf_counter() - start
  summary = {"output": args.output, "seconds": round(seconds, 2),
             "records": {k: v["records"] for k, v in world["records"].items()},
             "dropped": {k: v["dropped"] for k, v in world["records"].items()},
             "eval": world["eval"]}
  print(json.dumps(summary, sort_keys=True))
  return 0


if __name__ == "__main__":
  _parser = argparse.ArgumentParser(description=DESCRIPTION)
  add_arguments(_parser)
  sys.exit(main(_parser.parse_args()))
