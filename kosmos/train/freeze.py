"""Which parameters train: regexes over dotted parameter paths.

A path is the module path joined by dots, e.g. `vision.blocks.23.attn.q_proj.kernel`.
A parameter trains when it matches one of `optim.trainable` and none of `optim.frozen`.
KOSMOS-1 freezes the ViT except its last block (and the final norm):
    frozen=(r"^vision\\.(?!blocks\\.23\\.|post_norm)",).
MiniGPT-4 / BLIP-2 train only the connector:     trainable=(r"^connector\\.",).
mPLUG-Owl stage 2 trains only LoRA adapters:      trainable=(r"\\.lora_[ab]$",)
(with `model.decoder.lora.rank` > 0; the kernels LoRA adapts are always frozen).

Scanned stacks (`scan_layers`) keep these per-layer paths: a stacked param
(`vision.blocks.attn.q_proj.kernel` [L, ...]) is matched layer by layer against
`vision.blocks.<i>.attn.q_proj.kernel`; it trains when any of its layers does, and
`layer_mask` then says which layers' updates apply (kosmos.model.stack).
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import numpy as np
from flax import nnx
from flax import traverse_util

from kosmos.model import stack


def path_string(path: Sequence[Any]) -> str:
  return ".".join(str(getattr(p, "key", p)) for p in path)


class Trainable:
  """An nnx filter: `Trainable(trainable, frozen)(path, value)` is True for trained Params."""

  def __init__(self, trainable: Sequence[str] = (".*",), frozen: Sequence[str] = ()):
    self.trainable = [re.compile(p) for p in trainable]
    self.frozen = [re.compile(p) for p in frozen]

  def matches(self, path: str) -> bool:
    return (any(p.search(path) for p in self.trainable)
            and not any(p.search(path) for p in self.frozen))

  def layers(self, path: str, num_layers: int) -> np.ndarray:
    """[L] bool: which layers of the stacked param at `path` train."""
    return np.asarray([self.matches(p) for p in stack.layer_paths(path, num_layers)])

  def __call__(self, path, value) -> bool:
    if not isinstance(value, nnx.Param):
      return False
    path = path_string(path)
    if stack.is_stacked_path(path):
      return bool(self.layers(path, value.shape[0]).any())
    return self.matches(path)

  def __repr__(self) -> str:
    return f"Trainable({[p.pattern for p in self.trainable]}, frozen={[p.pattern for p in self.frozen]})"


def from_config(optim_config, always_frozen: Sequence[str] = ()) -> Trainable:
  """`optim.trainable` / `optim.frozen`, plus `always_frozen` (e.g. the kernels that LoRA
  adapts: `kosmos.model.lora.frozen_patterns`)."""
  return Trainable(tuple(optim_config.trainable), tuple(optim_config.frozen) + tuple(always_frozen))


def layer_masks(params: Any, trainable: Trainable) -> dict[tuple, np.ndarray]:
  """{flat key path: [L] bool} for the trained stacked params in which some layers are
  frozen (their updates must be zeroed); `params` is the trainable pure dict."""
  out = {}
  for key, leaf in traverse_util.flatten_dict(params).items():
    path = ".".join(str(k) for k in key)
    if stack.is_stacked_path(path):
      mask = trainable.layers(path, leaf.shape[0])
      if not mask.all():
        out[key] = mask
  return out
