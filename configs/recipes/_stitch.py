"""Shared pieces of the stitched-route recipes (a helper module, not a config: no get_config).

Every recipe starts from `configs/palme.py` (7B llama-family decoder + CLIP ViT-L/14 in the
LLaVA-1.5 layout) and changes the vision features, the connector, what trains and the
schedule. Recipe files load this one with `kosmos.configs.load_module` (configs/ is not a
package), as `load("_stitch.py")`.
"""

from __future__ import annotations

import os

import ml_collections

from kosmos import configs
from kosmos.data import chat
from kosmos.model import connector

HERE = os.path.dirname(os.path.abspath(__file__))
STAGES = ("stage1", "stage2")


def load(name: str):
  """A config file next to this one (or `../palme.py`) as a module."""
  return configs.load_module(os.path.normpath(os.path.join(HERE, name)))


def parse_arg(arg: str | None, stages: tuple[str, ...] = STAGES) -> tuple[str, str]:
  """`"STAGE[,INIT_DIR]"`, or just `INIT_DIR` (first stage) -> (stage, init_dir or "")."""
  head, sep, init_dir = (arg or "").partition(",")
  if head in stages:
    return head, init_dir
  if sep or head.startswith("stage"):
    raise ValueError(f"recipe arg {arg!r}: expected 'STAGE[,INIT_DIR]' with STAGE in {stages}, "
                     "or just INIT_DIR")
  return stages[0], head


def llama7b(init_dir: str = "", *, llama1: bool = False) -> ml_collections.ConfigDict:
  """configs/palme.py: Llama-2-7B shape (Vicuna-7B v1.5 too); `llama1` for LLaMA-7B / Vicuna
  v0-v1.1 (RMSNorm eps 1e-6, 2048 positions, the same 6.74B parameters). `init_dir` sets
  train.init_from and the tokenizer path (`INIT_DIR/tokenizer.model`), as palme.py does."""
  config = load("../palme.py").get_config(init_dir or None)
  if llama1:
    config.model.decoder.update(norm_eps=1e-6, max_len=2048)
  config.data.sources = ml_collections.ConfigDict()
  return config


def resampler(num_tokens: int, width: int, depth: int, num_heads: int) -> ml_collections.ConfigDict:
  """The Perceiver resampler in the role of a Q-Former / visual abstractor: `num_tokens`
  queries at `width`, then `connector.out_proj` (width -> d_model) into the LM."""
  c = connector.default_config("resampler", num_tokens=num_tokens)
  c.update(width=width, depth=depth, num_heads=num_heads, ffn_mult=4, dtype="bfloat16")
  return c


def qformer_like() -> ml_collections.ConfigDict:
  """BLIP-2's Q-Former shape (BERT-base: 12 layers, 768 wide, 12 heads, 32 queries) as a
  resampler; shared by blip2.py and minigpt4.py so a BLIP-2 run initialises MiniGPT-4."""
  return resampler(num_tokens=32, width=768, depth=12, num_heads=12)


def blip2_vision(config: ml_collections.ConfigDict) -> None:
  """BLIP-2's ViT features: the second-to-last layer, every token (class token too), no
  CLIP post-LN (BLIP-2's fresh `ln_vision` is the resampler's `norm_media`)."""
  config.model.vision.update(feature_layer=-2, feature_select="all", post_norm=False)


def sources(**named: tuple[str, str, float]) -> ml_collections.ConfigDict:
  """name=(kind, path, weight) -> config.data.sources."""
  return ml_collections.ConfigDict({name: dict(kind=kind, path=path, weight=weight)
                                    for name, (kind, path, weight) in named.items()})


def llava_schedule(config: ml_collections.ConfigDict, steps: int, *, checkpoint_every: int,
                   keep: int) -> None:
  """LLaVA's optimiser: AdamW (0.9, 0.999), no weight decay, 3 % warm-up, cosine to 0."""
  config.optim.update(decay="cosine", warmup_steps=round(0.03 * steps), end_lr_fraction=0.0,
                      b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, grad_clip=1.0)
  config.train.update(steps=steps, checkpoint_every=checkpoint_every, keep=keep, keep_every=0)


def train_only(config: ml_collections.ConfigDict, *trainable: str, frozen: tuple[str, ...] = ()) -> None:
  config.optim.trainable = tuple(trainable)
  config.optim.frozen = tuple(frozen)


def chat_template(config: ml_collections.ConfigDict, name: str) -> None:
  """The system's conversation format (kosmos.data.chat.TEMPLATES[name]) for every stage: the
  last stage trains on it, and kosmos-chat / kosmos-eval --chat talk in it afterwards."""
  config.tokenizer.chat_template = chat.config(name)
