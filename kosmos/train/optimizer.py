"""AdamW with warm-up and linear or cosine decay (optax), from `config.optim`.

KOSMOS-1's recipe is the default section (kosmos.defaults.optim): betas (0.9, 0.98),
weight decay 0.01, peak lr 2e-4, 375 warm-up steps, linear decay. Weight decay skips
biases, norm scales and 1-D parameters (per layer: a scanned stack's [L, d] norm scale is
1-D). Frozen parameters (kosmos.train.freeze) are not
in the optimizer at all, so they get no update and no optimizer memory.
"""

from __future__ import annotations

import enum

import jax
import ml_collections
import optax

from kosmos.model import stack
from kosmos.train import freeze


class Decay(str, enum.Enum):
  LINEAR = "linear"
  COSINE = "cosine"
  CONSTANT = "constant"


def schedule(optim: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """Linear warm-up from 0 to peak_lr, then decay to end_lr_fraction * peak_lr."""
  peak, end = optim.peak_lr, optim.peak_lr * optim.end_lr_fraction
  warmup = min(optim.warmup_steps, max(total_steps - 1, 0))
  decay_steps = max(total_steps - warmup, 1)
  try:
    decay = Decay(optim.decay)
  except ValueError:
    raise ValueError(f"unknown optim.decay {optim.decay!r}; valid: {[d.value for d in Decay]}") from None
  if decay == Decay.LINEAR:
    after = optax.linear_schedule(peak, end, decay_steps)
  elif decay == Decay.COSINE:
    after = optax.cosine_decay_schedule(peak, decay_steps, alpha=optim.end_lr_fraction)
  else:
    after = optax.constant_schedule(peak)
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after], [warmup])


def _decay_mask(params):
  def decays(path, p):
    layer_ndim = p.ndim - int(stack.is_stacked_path(freeze.path_string(path)))
    return layer_ndim > 1
  return jax.tree_util.tree_map_with_path(decays, params)


def make(optim: ml_collections.ConfigDict, total_steps: int) -> optax.GradientTransformation:
  """clip_by_global_norm (if grad_clip > 0) then AdamW on the schedule."""
  chain = []
  if optim.grad_clip > 0:
    chain.append(optax.clip_by_global_norm(optim.grad_clip))
  chain.append(optax.adamw(schedule(optim, total_steps), b1=optim.b1, b2=optim.b2, eps=optim.eps,
                           weight_decay=optim.weight_decay, mask=_decay_mask))
  return optax.chain(*chain)
