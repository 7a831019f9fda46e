"""Beam search with a KV cache under one `jax.jit` (fixed shapes, `lax.while_loop`).

Per prompt row, `n` alive beams and a pool of `n` finished hypotheses (the layout of t5x's
beam search). Each step expands the alive beams to their top 2n (beam, token) candidates;
candidates ending in a stop id enter the finished pool scored by
sum log-prob / (generated tokens) ** length_penalty, the best n others stay alive and take
their parent's cache. A row is done when its pool is full and no alive beam can still beat
the pool's worst entry (log-probs only fall, so that bound is exact); the loop ends when all
rows are done or after `max_new_tokens`, when the alive beams join the pool with their
current length. With 1 beam and length_penalty 0 this is greedy decoding.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from kosmos.infer import cache as cache_lib
from kosmos.infer import generate
from kosmos.infer import sampling

NEG = -1e30


def _penalty(length, alpha: float):
  return jnp.maximum(length, 1).astype(jnp.float32) ** alpha


def search(model, batch: dict[str, jax.Array], *,
           options: generate.Options) -> dict[str, jax.Array]:
  """Beam search over a prompt batch (format of `generate.decode`).

  Returns tokens [b, n, T] (best first; pad after a hypothesis' end), num_tokens [b, n]
  (generated, including the stop id), scores [b, n] (length-normalised), logprob [b, n].
  """
  b, p = batch["tokens"].shape
  n, steps, alpha = options.num_beams, options.max_new_tokens, options.length_penalty
  cache = cache_lib.init(model.decoder.config, b, p + steps)
  logits_bv, cache = cache_lib.prefill(model, batch, cache)
  vocab = logits_bv.shape[-1]
  # Every beam starts from the prompt; only beam 0 is live at first (the others -inf) so
  # the first expansion does not pick the same token n times.
  cache = cache_lib.reorder(cache, jnp.repeat(jnp.arange(b), n))
  logits_xv = jnp.repeat(logits_bv, n, axis=0)  # x = b * n
  lengths_x = jnp.repeat(batch["lengths"].astype(jnp.int32), n)
  alive_logp_bn = jnp.tile(jnp.asarray([0.0] + [NEG] * (n - 1), jnp.float32), (b, 1))
  pad = options.pad_id
  alive_seq_bnt = jnp.full((b, n, steps), pad, jnp.int32)
  fin_seq_bnt = jnp.full((b, n, steps), pad, jnp.int32)
  fin_score_bn = jnp.full((b, n), NEG, jnp.float32)
  fin_logp_bn = jnp.full((b, n), NEG, jnp.float32)
  fin_len_bn = jnp.zeros((b, n), jnp.int32)

  def row_done(i, alive_logp_bn, fin_score_bn):
    # Best score an alive beam could still reach: its log-prob cannot rise, the penalty
    # is largest at one of the ends of the remaining lengths.
    best = jnp.maximum(alive_logp_bn[:, 0] / _penalty(i + 1, alpha),
                       alive_logp_bn[:, 0] / _penalty(steps, alpha))
    return fin_score_bn[:, -1] >= best

  def cond(carry):
    i, _, _, alive_logp_bn, _, _, fin_score_bn, _, _ = carry
    return (i < steps) & ~jnp.all(row_done(i, alive_logp_bn, fin_score_bn))

  def body(carry):
    (i, logits_xv, cache, alive_logp_bn, alive_seq_bnt, fin_seq_bnt, fin_score_bn,
     fin_logp_bn, fin_len_bn) = carry
    logp_bnv = jax.nn.log_softmax(sampling.ban(logits_xv, options.banned_ids)).reshape(b, n, vocab)
    cand_bc = (alive_logp_bn[:, :, None] + logp_bnv).reshape(b, n * vocab)
    top_logp_bk, top_idx_bk = jax.lax.top_k(cand_bc, 2 * n)  # k = 2n candidates
    parent_bk, token_bk = top_idx_bk // vocab, (top_idx_bk % vocab).astype(jnp.int32)
    seq_bkt = jnp.take_along_axis(alive_seq_bnt, parent_bk[:, :, None], axis=1)
    seq_bkt = jax.lax.dynamic_update_slice_in_dim(seq_bkt, token_bk[:, :, None], i, axis=2)
    stop_bk = generate.is_stop(token_bk, options.stop_ids)
    # Finished pool: old entries first, so ties keep them.
    new_score_bk = jnp.where(stop_bk, top_logp_bk / _penalty(i + 1, alpha), NEG)
    pool_score = jnp.concatenate([fin_score_bn, new_score_bk], axis=1)
    fin_score_bn, pick = jax.lax.top_k(pool_score, n)
    fin_seq_bnt = jnp.take_along_axis(jnp.concatenate([fin_seq_bnt, seq_bkt], 1),
                                      pick[:, :, None], axis=1)
    fin_logp_bn = jnp.take_along_axis(
        jnp.concatenate([fin_logp_bn, jnp.where(stop_bk, top_logp_bk, NEG)], 1), pick, axis=1)
    fin_len_bn = jnp.take_along_axis(
        jnp.concatenate([fin_len_bn, jnp.full((b, 2 * n), i + 1, jnp.int32)], 1), pick, axis=1)
    # Alive: the best n candidates that did not stop (at most n of the 2n stop).
    alive_logp_bn, keep = jax.lax.top_k(jnp.where(stop_bk, NEG, top_logp_bk), n)
    alive_seq_bnt = jnp.take_along_axis(seq_bkt, keep[:, :, None], axis=1)
    parent_bn = jnp.take_along_axis(parent_bk, keep, axis=1)
    token_x = jnp.take_along_axis(token_bk, keep, axis=1).reshape(b * n)
    rows_x = (jnp.arange(b)[:, None] * n + parent_bn).reshape(b * n)
    cache = cache_lib.reorder(cache, rows_x)
    logits_xv, cache = cache_lib.step(model, token_x, lengths_x + i, cache)
    return (i + 1, logits_xv, cache, alive_logp_bn, alive_seq_bnt, fin_seq_bnt, fin_score_bn,
            fin_logp_bn, fin_len_bn)

  carry = (jnp.int32(0), logits_xv, cache, alive_logp_bn, alive_seq_bnt, fin_seq_bnt,
           fin_score_bn, fin_logp_bn, fin_len_bn)
  (i, _, _, alive_logp_bn, alive_seq_bnt, fin_seq_bnt, fin_score_bn, fin_logp_bn,
   fin_len_bn) = jax.lax.while_loop(cond, body, carry)
  # Alive beams (cut at max_new_tokens) compete with the finished ones.
  alive_score_bn = jnp.where(alive_logp_bn > NEG / 2, alive_logp_bn / _penalty(i, alpha), NEG)
  score_bm = jnp.concatenate([fin_score_bn, alive_score_bn], 1)
  score_bn, pick = jax.lax.top_k(score_bm, n)
  seq_bnt = jnp.take_along_axis(jnp.concatenate([fin_seq_bnt, alive_seq_bnt], 1),
                                pick[:, :, None], axis=1)
  logp_bn = jnp.take_along_axis(jnp.concatenate([fin_logp_bn, alive_logp_bn], 1), pick, axis=1)
  len_bn = jnp.take_along_axis(
      jnp.concatenate([fin_len_bn, jnp.full((b, n), i, jnp.int32)], 1), pick, axis=1)
  return {"tokens": seq_bnt, "num_tokens": len_bn, "scores": score_bn, "logprob": logp_bn}
