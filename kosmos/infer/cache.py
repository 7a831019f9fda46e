"""The KV cache: allocation, prefill over a right-padded prompt batch, one decode step.

Layout: per decoder layer {"k": [b, S, g, k], "v": [b, S, g, k]} (S slots, g kv heads,
k head dim). Prompts are RIGHT-padded with per-row lengths; slot s of a row holds the token
at position s, so a row's next token goes to slot `length_b` at position `length_b` (every
positional scheme here — xPos, sinusoidal, RoPE — takes per-token positions, so no left
padding is needed). The decoder masks slots with their segment id: 1 for slots holding real
tokens (those before the row's current length, including this call's), 0 for the rest; the
padding written by the prefill into slots >= length is overwritten by decode steps before it
is ever unmasked.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from kosmos import sharding

Cache = list[dict[str, jax.Array]]
CACHE_AXES = ("batch", None, "kv_heads", None)


def init(decoder_config: ml_collections.ConfigDict, batch_size: int, num_slots: int,
         dtype: jnp.dtype | str | None = None) -> Cache:
  """Zeros for every layer: {"k", "v"} of [batch_size, num_slots, g, k] in `dtype`
  (default: the decoder's compute dtype)."""
  heads = decoder_config.num_heads
  kv_heads = decoder_config.num_kv_heads or heads
  head_dim = decoder_config.head_dim or decoder_config.d_model // heads
  dtype = jnp.dtype(dtype or decoder_config.dtype)
  shape = (batch_size, num_slots, kv_heads, head_dim)
  return [{"k": sharding.constrain(jnp.zeros(shape, dtype), CACHE_AXES),
           "v": sharding.constrain(jnp.zeros(shape, dtype), CACHE_AXES)}
          for _ in range(decoder_config.num_layers)]


def num_slots(cache: Cache) -> int:
  return cache[0]["k"].shape[1]


def slot_segments(lengths_b: jax.Array, slots: int) -> jax.Array:
  """[b, S] int32: 1 where the slot holds a real token (slot < length), else 0."""
  return (jnp.arange(slots)[None, :] < lengths_b[:, None]).astype(jnp.int32)


def head(model, hidden_bd: jax.Array) -> jax.Array:
  """Output logits (float32) from final normed hidden states [..., d]."""
  decoder = model.decoder
  if decoder.lm_head is None:
    logits = decoder.embed_tokens.attend(hidden_bd)
  else:
    logits = decoder.lm_head(hidden_bd)
  return logits.astype(jnp.float32)


def prefill(model, batch: dict[str, jax.Array], cache: Cache) -> tuple[jax.Array, Cache]:
  """One forward over the padded prompts, filling slots [0, P) of the cache.

  batch: tokens [b, P] int32 (right-padded), lengths [b] int32 (>= 1), images
  [b, m, h, w, 3] uint8 and image_mask [b, m] (optional). Returns (logits of each row's
  last prompt token [b, vocab] float32, cache). Only the last token's logits are computed.
  """
  tokens_bp, lengths_b = batch["tokens"], batch["lengths"]
  b, p = tokens_bp.shape
  slots = num_slots(cache)
  if p > slots:
    raise ValueError(f"prompt length {p} exceeds the cache's {slots} slots")
  positions_bp = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32)[None], (b, p))
  segments_bp = slot_segments(lengths_b, p)
  x_bpd = model.embed_inputs(batch)
  _, aux = model.decoder(
      x_bpd, positions_bp, segments_bp, cache=cache, cache_index_b=jnp.zeros((b,), jnp.int32),
      cache_segment_ids_bs=slot_segments(lengths_b, slots),
      cache_positions_bs=jnp.broadcast_to(jnp.arange(slots, dtype=jnp.int32)[None], (b, slots)))
  last_bd = jnp.take_along_axis(aux["hidden"], (lengths_b - 1)[:, None, None], axis=1)[:, 0]
  return head(model, last_bd), _constrain(aux["cache"])


def step(model, tokens_b: jax.Array, index_b: jax.Array, cache: Cache) -> tuple[jax.Array, Cache]:
  """Decodes one token per row: `tokens_b` at position/slot `index_b`.

  Returns (next-token logits [b, vocab] float32, cache with the token's keys/values written).
  """
  b = tokens_b.shape[0]
  slots = num_slots(cache)
  x_b1d = model.embed_inputs({"tokens": tokens_b[:, None]})
  logits, aux = model.decoder(
      x_b1d, index_b[:, None], jnp.ones((b, 1), jnp.int32), cache=cache, cache_index_b=index_b,
      cache_segment_ids_bs=slot_segments(index_b + 1, slots),
      cache_positions_bs=jnp.broadcast_to(jnp.arange(slots, dtype=jnp.int32)[None], (b, slots)))
  return logits[:, 0], _constrain(aux["cache"])


def reorder(cache: Cache, rows_b: jax.Array) -> Cache:
  """Gathers cache rows (beam search: each new beam takes its parent's cache)."""
  return _constrain(jax.tree.map(lambda x: jnp.take(x, rows_b, axis=0), cache))


def _constrain(cache: Cache) -> Cache:
  return [{name: sharding.constrain(x, CACHE_AXES) for name, x in layer.items()} for layer in cache]
