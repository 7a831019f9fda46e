"""Which parameters train: regexes over dotted parameter paths.

A path is the module path joined by dots, e.g. `vision.blocks.23.attn.q_proj.kernel`.
A parameter trains when it matches one of `optim.trainable` and none of `optim.frozen`.
KOSMOS-1 freezes the ViT except its last block (and the final norm):
    frozen=(r"^vision\\.(?!blocks\\.23\\.|post_norm)",).
MiniGPT-4 / BLIP-2 train only the connector:     trainable=(r"^connector\\.",).
mPLUG-Owl stage 2 trains only LoRA adapters:      trainable=(r"\\.lora_[ab]$",)
(with `model.decoder.lora.rank` > 0; the kernels LoRA adapts are always frozen).
"""

from __future__ import annotations

import re
from typing import Any, Sequence

from flax import nnx


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

  def __call__(self, path, value) -> bool:
    return isinstance(value, nnx.Param) and self.matches(path_string(path))

  def __repr__(self) -> str:
    return f"Trainable({[p.pattern for p in self.trainable]}, frozen={[p.pattern for p in self.frozen]})"


def from_config(optim_config, always_frozen: Sequence[str] = ()) -> Trainable:
  """`optim.trainable` / `optim.frozen`, plus `always_frozen` (e.g. the kernels that LoRA
  adapts: `kosmos.model.lora.frozen_patterns`)."""
  return Trainable(tuple(optim_config.trainable), tuple(optim_config.frozen) + tuple(always_frozen))
