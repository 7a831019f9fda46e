"""Next-token choice from logits: banned ids, greedy, temperature / top-k / top-p sampling."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

NEG_INF = -1e30  # finite, so log_softmax of a row with banned ids stays finite


def ban(logits_bv: jax.Array, banned_ids: Sequence[int]) -> jax.Array:
  """Sets the logits of `banned_ids` (ids outside the vocab are ignored) to NEG_INF."""
  vocab = logits_bv.shape[-1]
  banned = [i for i in banned_ids if 0 <= i < vocab]
  if not banned:
    return logits_bv
  return logits_bv.at[..., jnp.asarray(banned)].set(NEG_INF)


def top_k_filter(logits_bv: jax.Array, k: int) -> jax.Array:
  """Keeps the k largest logits of each row (ties at the k-th value are kept)."""
  if k <= 0 or k >= logits_bv.shape[-1]:
    return logits_bv
  kth = jax.lax.top_k(logits_bv, k)[0][..., -1:]
  return jnp.where(logits_bv < kth, NEG_INF, logits_bv)


def top_p_filter(logits_bv: jax.Array, p: float) -> jax.Array:
  """Nucleus: keeps the smallest set of most likely tokens whose probability reaches p
  (always at least the most likely token)."""
  if p >= 1.0:
    return logits_bv
  sorted_bv = jnp.sort(logits_bv, axis=-1)[..., ::-1]
  probs = jax.nn.softmax(sorted_bv, axis=-1)
  before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly above each sorted token
  keep = before < p
  cutoff = jnp.min(jnp.where(keep, sorted_bv, jnp.inf), axis=-1, keepdims=True)
  return jnp.where(logits_bv < cutoff, NEG_INF, logits_bv)


def choose(logits_bv: jax.Array, rng: jax.Array, *, temperature: float, top_k: int,
           top_p: float) -> jax.Array:
  """Token ids [b]: argmax when temperature == 0, else a sample from the filtered softmax."""
  if temperature <= 0.0 or top_k == 1:
    return jnp.argmax(logits_bv, axis=-1).astype(jnp.int32)
  logits_bv = logits_bv / temperature
  logits_bv = top_k_filter(logits_bv, top_k)
  logits_bv = top_p_filter(logits_bv, top_p)
  return jax.random.categorical(rng, logits_bv, axis=-1).astype(jnp.int32)
