"""LoRA adapters (Hu et al. 2021) on chosen decoder projections (mPLUG-Owl stage 2).

A targeted projection y = x W + c becomes y = x W + c + (alpha / rank) * (x A) B with
A [d_in, rank] (fan-in uniform init, as PEFT) and B [rank, d_out] (zeros), so a fresh
adapter leaves the model unchanged. The adapters are ordinary Params next to the kernel
they adapt (`decoder.blocks.3.attn.q_proj.lora_a` / `.lora_b`): checkpoints, sharding
(A's rows like the kernel's input axis, B's columns like its output axis), eval and
inference need nothing special. The adapted kernels and biases themselves are frozen by
the trainer (`frozen_patterns`); `optim.trainable` decides what else trains, e.g.
`(r"\\.lora_[ab]$",)` for adapters only.

Config (`config.model.decoder.lora`): rank (0 = off), alpha, targets (projection names of
a decoder block: q_proj k_proj v_proj o_proj, and fc1 fc2 for magneto or gate_proj
up_proj down_proj for llama). Export folds the adapters into the kernels (`fold`), so an
exported model is a plain one.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = {"magneto": ("fc1", "fc2"), "llama": ("gate_proj", "up_proj", "down_proj")}
ADAPTERS = ("lora_a", "lora_b")


def default_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(rank=0, alpha=16.0, targets=("q_proj", "v_proj")))


@dataclasses.dataclass(frozen=True)
class Spec:
  rank: int
  alpha: float
  targets: tuple[str, ...]

  @property
  def scale(self) -> float:
    return self.alpha / self.rank

  def get(self, name: str) -> "Spec | None":
    """This spec if projection `name` is a target, else None."""
    return self if name in self.targets else None


def spec_of(decoder_config: ml_collections.ConfigDict) -> Spec | None:
  """The decoder's LoRA spec, or None when off (rank 0 or no `lora` field: older configs)."""
  lora = decoder_config.get("lora")
  if lora is None or not lora.rank:
    return None
  return Spec(int(lora.rank), float(lora.alpha), tuple(lora.targets))


def check_config(decoder_config: ml_collections.ConfigDict) -> None:
  lora = decoder_config.get("lora")
  if lora is None:
    return
  if lora.rank < 0 or (lora.rank and lora.alpha <= 0):
    raise ValueError(f"decoder.lora rank={lora.rank}, alpha={lora.alpha}: rank must be >= 0 "
                     "(0 = off) and alpha > 0")
  valid = ATTENTION + MLP.get(decoder_config.family, ())
  bad = [t for t in lora.targets if t not in valid]
  if lora.rank and (bad or not lora.targets):
    raise ValueError(f"decoder.lora.targets {tuple(lora.targets)}: {bad or 'empty'}; valid "
                     f"projections of a {decoder_config.family} block: {valid}")


def frozen_patterns(decoder_config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """Param-path regexes of the adapted kernels and biases (frozen whenever LoRA is on)."""
  spec = spec_of(decoder_config)
  if spec is None:
    return ()
  names = "|".join(spec.targets)
  return (rf"^decoder\.blocks\.\d+\.(attn|mlp)\.({names})\.(kernel|bias)$",)


class LoraLinear(nnx.Linear):
  """nnx.Linear plus a low-rank update; kernel/bias keep their names and layout."""

  def __init__(self, din: int, dout: int, *, spec: Spec, axes: tuple[str | None, str | None],
               rngs: nnx.Rngs, **kwargs: Any):
    super().__init__(din, dout, rngs=rngs, **kwargs)
    param_dtype = kwargs.get("param_dtype", jnp.float32)
    a_init = nnx.with_partitioning(nnx.initializers.variance_scaling(1 / 3, "fan_in", "uniform"),
                                   (axes[0], None))
    b_init = nnx.with_partitioning(nnx.initializers.zeros_init(), (None, axes[1]))
    self.lora_a = nnx.Param(a_init(rngs.params(), (din, spec.rank), param_dtype))
    self.lora_b = nnx.Param(b_init(rngs.params(), (spec.rank, dout), param_dtype))
    self.lora_scale = spec.scale

  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    """x [..., din] -> [..., dout]."""
    y = super().__call__(x)
    dtype = self.dtype or y.dtype
    a, b = self.lora_a[...].astype(dtype), self.lora_b[...].astype(dtype)
    return y + ((x.astype(dtype) @ a) @ b) * jnp.asarray(self.lora_scale, dtype)


def fold_kernel(kernel: Any, lora_a: Any, lora_b: Any, scale: float) -> np.ndarray:
  """kernel [din, dout] + scale * A B, computed in float32, returned in kernel's dtype."""
  kernel = np.asarray(kernel)
  delta = np.asarray(lora_a, np.float32) @ np.asarray(lora_b, np.float32)
  return (kernel.astype(np.float32) + np.float32(scale) * delta).astype(kernel.dtype)


def fold(params: dict[str, Any], scale: float) -> dict[str, Any]:
  """A params pure dict with every adapter folded into its kernel and removed."""
  out = {}
  for key, value in params.items():
    if isinstance(value, dict):
      if all(k in value for k in ADAPTERS):
        value = dict(value, kernel=fold_kernel(value["kernel"], value["lora_a"], value["lora_b"],
                                               scale))
        value = {k: v for k, v in value.items() if k not in ADAPTERS}
      out[key] = fold(value, scale)
    else:
      out[key] = value
  return out


def is_adapter(path: Sequence[Any]) -> bool:
  return bool(path) and str(path[-1]) in ADAPTERS
