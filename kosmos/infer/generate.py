"""Jitted generation on token batches: prefill + KV-cache decode loop (greedy or sampling).

`decode(model, batch, rng, options=...)`, jitted with `jit(decode)(graphdef)`, is a prefill over the
right-padded prompts (per-row `lengths`), then a `jax.lax.while_loop` of one-token decode
steps that stops when every row has produced a stop id or after `max_new_tokens`. Shapes
are fixed (cache of P + max_new_tokens slots), so one compile serves every batch with the
same (b, P, m). Beam search is `kosmos.infer.beam`; text in/out is `kosmos.infer.engine`.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from kosmos import sharding
from kosmos.infer import cache as cache_lib
from kosmos.infer import sampling


@dataclasses.dataclass(frozen=True)
class Options:
  """Static decoding options (hashable: they key the jit cache).

  stop_ids: ids that end a row (eos); the stop id is part of the output.
  banned_ids: ids never generated (pad, bos, image/vector placeholders by default).
  temperature 0 = greedy; top_k 0 = off; top_p 1 = off.
  num_beams > 1 selects beam search (`kosmos.infer.beam`), with `length_penalty` alpha:
  hypotheses are ranked by sum log-prob / (generated tokens) ** alpha.
  """
  max_new_tokens: int = 20
  stop_ids: tuple[int, ...] = (2,)
  banned_ids: tuple[int, ...] = ()
  pad_id: int = 0
  temperature: float = 0.0
  top_k: int = 0
  top_p: float = 1.0
  num_beams: int = 1
  length_penalty: float = 0.0
  mesh: Any = None  # jax.sharding.Mesh or None; with it `rules` lay activations out
  rules: tuple = ()

  def __post_init__(self):
    if self.max_new_tokens < 1:
      raise ValueError(f"max_new_tokens={self.max_new_tokens} must be >= 1")
    if self.num_beams < 1:
      raise ValueError(f"num_beams={self.num_beams} must be >= 1")
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"top_p={self.top_p} must be in (0, 1]")
    if self.temperature < 0 or self.top_k < 0:
      raise ValueError(f"temperature={self.temperature} and top_k={self.top_k} must be >= 0")
    if self.num_beams > 1 and (self.temperature > 0 and self.top_k != 1):
      raise ValueError("beam search is deterministic: use temperature=0 with num_beams > 1")


def mesh_context(options: Options):
  """The `sharding.use_mesh` context for traced code (a no-op without a mesh)."""
  if options.mesh is None:
    return contextlib.nullcontext()
  return sharding.use_mesh(options.mesh, options.rules)


def is_stop(tokens_b: jax.Array, stop_ids: tuple[int, ...]) -> jax.Array:
  if not stop_ids:
    return jnp.zeros(tokens_b.shape, bool)
  return jnp.isin(tokens_b, jnp.asarray(stop_ids, jnp.int32))


def jit(fn, donate_argnums: tuple[int, ...] = ()):
  """Turns `fn(model, *args, options)` into `bind(graphdef)` -> a `jax.jit` of
  `(state, *args, options=...)` (options static, traced under its mesh). The graph
  definition is closed over rather than static: it holds ConfigDicts, which do not hash.
  `donate_argnums` index `(state, *args)` (e.g. a KV cache updated in place)."""
  def bind(graphdef: nnx.GraphDef):
    def run(state, *args, options):
      with mesh_context(options):
        return fn(nnx.merge(graphdef, state), *args, options=options)
    return jax.jit(run, static_argnames=("options",), donate_argnums=donate_argnums)
  return bind


def decode(model, batch: dict[str, jax.Array], rng: jax.Array, *,
           options: Options) -> dict[str, jax.Array]:
  """Greedy / sampled continuation of each prompt row (trace under `jit`).

  batch: tokens [b, P] (right-padded), lengths [b], images [b, m, h, w, 3], image_mask [b, m].
  Returns tokens [b, T] (pad after a row's stop id), num_tokens [b] (generated, including
  the stop id), logprob [b] (sum of the chosen tokens' log-probabilities under the
  unfiltered, ban-renormalised distribution), T = max_new_tokens.
  """
  b, p = batch["tokens"].shape
  steps = options.max_new_tokens
  cache = cache_lib.init(model.decoder.config, b, p + steps)
  logits_bv, cache = cache_lib.prefill(model, batch, cache)
  lengths_b = batch["lengths"].astype(jnp.int32)

  def cond(carry):
    i, _, _, _, done_b, _, _, _ = carry
    return (i < steps) & ~jnp.all(done_b)

  def body(carry):
    i, logits_bv, cache, out_bt, done_b, count_b, logprob_b, rng = carry
    logits_bv = sampling.ban(logits_bv, options.banned_ids)
    rng, sub = jax.random.split(rng)
    token_b = sampling.choose(logits_bv, sub, temperature=options.temperature,
                              top_k=options.top_k, top_p=options.top_p)
    logp_b = jnp.take_along_axis(jax.nn.log_softmax(logits_bv), token_b[:, None], axis=1)[:, 0]
    token_b = jnp.where(done_b, options.pad_id, token_b)
    out_bt = jax.lax.dynamic_update_slice_in_dim(out_bt, token_b[:, None], i, axis=1)
    logprob_b = logprob_b + jnp.where(done_b, 0.0, logp_b)
    count_b = count_b + (~done_b).astype(jnp.int32)
    done_b = done_b | is_stop(token_b, options.stop_ids)
    next_logits_bv, cache = cache_lib.step(model, token_b, lengths_b + i, cache)
    return i + 1, next_logits_bv, cache, out_bt, done_b, count_b, logprob_b, rng

  carry = (jnp.int32(0), logits_bv, cache,
           jnp.full((b, steps), options.pad_id, jnp.int32), jnp.zeros((b,), bool),
           jnp.zeros((b,), jnp.int32), jnp.zeros((b,), jnp.float32), rng)
  _, _, _, out_bt, _, count_b, logprob_b, _ = jax.lax.while_loop(cond, body, carry)
  return {"tokens": out_bt, "num_tokens": count_b, "logprob": logprob_b}


def stream_start(model, batch: dict[str, jax.Array], *, options: Options):
  """Streaming, step 0 (trace under `jit`): the prefill of `decode` -> (logits [b, V] of
  the next token, cache of P + max_new_tokens slots)."""
  b, p = batch["tokens"].shape
  cache = cache_lib.init(model.decoder.config, b, p + options.max_new_tokens)
  return cache_lib.prefill(model, batch, cache)


def stream_step(model, logits_bv: jax.Array, cache, index_b: jax.Array, rng: jax.Array, *,
                options: Options):
  """Streaming, one token (trace under `jit`): chooses it from `logits_bv` as `decode`'s
  loop body does and runs it at slot `index_b` -> (token [b], next logits, cache). With
  `decode`'s rng sequence the tokens are `decode`'s (`Engine.stream`)."""
  logits_bv = sampling.ban(logits_bv, options.banned_ids)
  token_b = sampling.choose(logits_bv, rng, temperature=options.temperature,
                            top_k=options.top_k, top_p=options.top_p)
  next_logits_bv, cache = cache_lib.step(model, token_b, index_b, cache)
  return token_b, next_logits_bv, cache
