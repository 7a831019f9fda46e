"""A tiny trainable config over small record shards made here (real ArrayRecord + PNG)."""

from __future__ import annotations

import io
import os

import ml_collections
import numpy as np
from PIL import Image

import tiny
from kosmos import defaults
from kosmos.data import records

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 60, 220), "yellow": (230, 220, 30)}


def _png(colour, seed: int) -> bytes:
  rng = np.random.default_rng(seed)
  pixels = np.clip(np.asarray(colour)[None, None] + rng.normal(0, 12, (16, 16, 3)), 0, 255)
  buf = io.BytesIO()
  Image.fromarray(pixels.astype(np.uint8)).save(buf, format="PNG")
  return buf.getvalue()


def write_records(root: str, n_pairs: int = 64, n_text: int = 32) -> dict[str, str]:
  """Pairs (a coloured image + 'a COLOUR square') and text documents; returns kind -> dir."""
  names = list(COLOURS)
  dirs = {}
  for kind in ("pair", "text"):
    path = os.path.join(root, kind)
    os.makedirs(path, exist_ok=True)
    dirs[kind] = path
    with records.ShardWriter(os.path.join(path, records.shard_name(kind, 0, 1))) as writer:
      for i in range(n_pairs if kind == "pair" else n_text):
        name = names[i % len(names)]
        segments = ([{"image": _png(COLOURS[name], i)}, {"text": f"a {name} square"}]
                    if kind == "pair" else [{"text": f"the {name} square is {name}. " * 3}])
        writer.write({"id": f"{kind}{i}", "source": kind, "kind": kind, "segments": segments})
  return dirs


def config(data_root: str, **train) -> ml_collections.ConfigDict:
  c = defaults.base()
  c.model = tiny.model_config()
  c.model.decoder.vocab_size = 264  # the byte-level tokenizer
  dirs = {k: os.path.join(data_root, k) for k in ("pair", "text")}
  c.data.update(seq_len=48, global_batch_size=8, max_images_per_row=2, mix_estimate_records=16)
  c.data.sources = ml_collections.ConfigDict({
      "pair": dict(path=dirs["pair"], kind="pair", weight=0.6),
      "text": dict(path=dirs["text"], kind="text", weight=0.4)})
  c.optim.update(peak_lr=3e-3, warmup_steps=2, decay="cosine")
  c.train.update(steps=12, log_every=2, checkpoint_every=4, keep=10)
  c.train.update(train)
  c.mesh.update(data=-1, fsdp=1, tensor=1)
  return c
