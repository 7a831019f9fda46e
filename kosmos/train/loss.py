"""Next-token cross-entropy on text targets, whole or in sequence chunks.

`loss_terms(logits, batch, z_loss)` takes logits [b, l, vocab]; `chunked_terms(head,
hidden, batch, z_loss, chunk)` never holds them: it projects `chunk` positions of the
final hidden states at a time (`head`: [b, c, d] -> [b, c, vocab] float32), inside a scan
whose body is rematerialised, so the backward recomputes each chunk's logits instead of
keeping [b, l, vocab] float32 (2 GiB per chip for kosmos1 at 4 rows of 2048 x 64k).
Both return the same SUMMED terms (micro-batches and chunks add up exactly):

  ce_sum   sum over text targets of logsumexp(logits) - logit[target]
  z_sum    z_loss * sum of logsumexp^2 over text targets
  count    number of text targets (loss_mask)
  ce_sum/<kind>, count/<kind>   the same per data kind (kind_ids), when given

Masked-out positions contribute exactly 0 whatever their target id: a target outside
the vocabulary (padding, image slots with out-of-vocabulary ids) is never gathered.
"""

from __future__ import annotations

from typing import Callable, Mapping

import jax
import jax.numpy as jnp

from kosmos.data import packing


def _terms(logits_blv: jax.Array, targets_bl: jax.Array, mask_bl: jax.Array,
           kind_ids_bl: jax.Array | None, z_loss: float) -> dict[str, jax.Array]:
  on = mask_bl > 0
  lse = jax.nn.logsumexp(logits_blv, axis=-1)
  safe = jnp.where(on, targets_bl, 0)
  target_logit = jnp.take_along_axis(logits_blv, safe[..., None], axis=-1)[..., 0]
  ce = jnp.where(on, (lse - target_logit) * mask_bl, 0.0)
  z = jnp.where(on, z_loss * lse ** 2 * mask_bl, 0.0)
  out = {"ce_sum": ce.sum(), "z_sum": z.sum(), "count": mask_bl.sum()}
  if kind_ids_bl is not None:
    for kind, kind_id in packing.KIND_IDS.items():
      kind_mask = (kind_ids_bl == kind_id).astype(jnp.float32) * mask_bl
      out[f"ce_sum/{kind}"] = (ce * kind_mask).sum()
      out[f"count/{kind}"] = kind_mask.sum()
  return out


def loss_terms(logits_blv: jax.Array, batch: Mapping[str, jax.Array],
               z_loss: float) -> dict[str, jax.Array]:
  """Summed loss terms of full logits [b, l, vocab]."""
  return _terms(logits_blv, batch["targets"], batch["loss_mask"].astype(jnp.float32),
                batch.get("kind_ids"), z_loss)


def chunked_terms(head: Callable[[jax.Array], jax.Array], hidden_bld: jax.Array,
                  batch: Mapping[str, jax.Array], z_loss: float,
                  chunk: int) -> dict[str, jax.Array]:
  """Summed loss terms computed `chunk` positions at a time; equal to `loss_terms` of
  `head(hidden_bld)` (chunk must divide the sequence length)."""
  b, l, d = hidden_bld.shape
  if chunk <= 0 or chunk >= l:
    return loss_terms(head(hidden_bld), batch, z_loss)
  if l % chunk:
    raise ValueError(f"optim.loss_chunk={chunk} does not divide the sequence length {l}; "
                     f"use a divisor of {l} (or 0 for the whole sequence)")
  n = l // chunk
  split = lambda x: x.reshape((b, n, chunk) + x.shape[2:]).swapaxes(0, 1)
  kinds = batch.get("kind_ids")
  xs = (split(hidden_bld), split(batch["targets"]),
        split(batch["loss_mask"].astype(jnp.float32)),
        split(kinds) if kinds is not None else None)

  @jax.checkpoint
  def one(x):
    h, targets, mask, kind_ids = x
    return _terms(head(h), targets, mask, kind_ids, z_loss)

  def body(total, x):
    return jax.tree.map(jnp.add, total, one(x)), None

  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                       jax.eval_shape(one, jax.tree.map(lambda a: a[0], xs)))
  return jax.lax.scan(body, zeros, xs)[0]
