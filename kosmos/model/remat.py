"""Remat (activation checkpointing) policies, named by what a block keeps for its backward.

Blocks tag their intermediates with `jax.ad_checkpoint.checkpoint_name` (the names below);
a policy keeps some and recomputes the rest in the backward pass. As in MaxText, the
policy applies to one block (inside the layer scan when `scan_layers` is on).

  none          no remat: every intermediate is kept (most memory, least compute)
  full          keep nothing but the block's input: the forward runs twice
  dots          keep matmul outputs without batch dims (projections, MLP; not attention
                scores) -- MaxText's "minimal"
  dots_attn     dots, and the attention output with the kernel's residuals: a splash
                kernel's forward is not run again in the backward pass
  dots_attn_mlp ... and the MLP's activated hidden: its activation is not recomputed
  dots_attn_mlp_normed  ... and Magneto's Sub-LN output on that hidden (fc2's input)
  dots_all      keep every matmul output, attention scores included
  qkv           keep the q, k, v projections (after rotary)
  qkv_attn      ... and the attention output with the kernel's residuals: attention is
                not recomputed, the MLP is
  qkv_attn_out  ... and the attention block's output projection
  mlp           keep the MLP's hidden and output projections only (attention recomputed)
"""

from __future__ import annotations

from typing import Any

import jax
from jax import ad_checkpoint

QUERY, KEY, VALUE = "query_proj", "key_proj", "value_proj"
ATTENTION = "attention_out"  # the attention's context [b, t, n*k], before the out projection
ATTENTION_RESIDUALS = "attention_residuals"  # splash kernel's saved logsumexp etc.
OUT_PROJ = "out_proj"
MLP_HIDDEN, MLP_OUT = "mlp_hidden", "mlp_out"
MLP_NORMED = "mlp_normed"  # Magneto's Sub-LN output on the MLP hidden (fc2's input)

NO_REMAT = object()  # sentinel: call the block as it is

_NAMES = {
    "qkv": (QUERY, KEY, VALUE),
    "qkv_attn": (QUERY, KEY, VALUE, ATTENTION, ATTENTION_RESIDUALS),
    "qkv_attn_out": (QUERY, KEY, VALUE, ATTENTION, ATTENTION_RESIDUALS, OUT_PROJ),
    "mlp": (MLP_HIDDEN, MLP_OUT),
}
# Policies that keep the matmul outputs (as "dots") and these names too.
_DOTS_AND = {
    "dots_attn": (ATTENTION, ATTENTION_RESIDUALS),
    "dots_attn_mlp": (ATTENTION, ATTENTION_RESIDUALS, MLP_HIDDEN),
    "dots_attn_mlp_normed": (ATTENTION, ATTENTION_RESIDUALS, MLP_HIDDEN, MLP_NORMED),
}
POLICIES = ("none", "full", "dots", "dots_all") + tuple(_DOTS_AND) + tuple(_NAMES)


def policy(name: str) -> Any:
  """The jax.checkpoint policy of a named remat policy (NO_REMAT for "none")."""
  if name == "none":
    return NO_REMAT
  if name == "full":
    return jax.checkpoint_policies.nothing_saveable
  if name == "dots":
    return jax.checkpoint_policies.dots_with_no_batch_dims_saveable
  if name in _DOTS_AND:
    return jax.checkpoint_policies.save_from_both_policies(
        jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
        jax.checkpoint_policies.save_only_these_names(*_DOTS_AND[name]))
  if name == "dots_all":
    return jax.checkpoint_policies.checkpoint_dots
  if name in _NAMES:
    return jax.checkpoint_policies.save_only_these_names(*_NAMES[name])
  raise ValueError(f"unknown remat policy {name!r}; valid: {list(POLICIES)}")


def check(name: str, field: str) -> None:
  if name not in POLICIES:
    raise ValueError(f"{field}={name!r}: unknown remat policy; valid: {list(POLICIES)}")


def tag(x: jax.Array, name: str) -> jax.Array:
  return ad_checkpoint.checkpoint_name(x, name)
