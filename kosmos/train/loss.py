"""Next-token cross-entropy on text targets, whole or in sequence chunks.

`loss_terms(logits, batch, z_loss)` takes logits [b, l, vocab]; `chunked_terms(hidden,
weight, batch, z_loss, chunk)` never holds them: it projects `chunk` positions of the final
hidden states at a time and computes the loss's gradients in the same pass (see "fused
chunks" below), so neither pass keeps [b, l, vocab] float32 (2 GiB per chip for kosmos1 at
4 rows of 2048 x 64k) nor recomputes the projection. Both return the same SUMMED terms
(micro-batches and chunks add up exactly), and `objective` = ce_sum + z_sum, the one to
differentiate:

  ce_sum   sum over text targets of logsumexp(logits) - logit[target]
  z_sum    z_loss * sum of logsumexp^2 over text targets
  count    number of text targets (loss_mask)
  ce_sum/<kind>, count/<kind>   the same per data kind (kind_ids), when given

Masked-out positions contribute exactly 0 whatever their target id: a target outside
the vocabulary (padding, image slots with out-of-vocabulary ids) is never gathered.
"""

from __future__ import annotations

import functools
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from kosmos import sharding
from kosmos.data import packing


def _term_sums(lse: jax.Array, target_logit: jax.Array, on: jax.Array, mask: jax.Array,
               kind_ids: jax.Array | None, z_loss: float) -> dict[str, jax.Array]:
  ce = jnp.where(on, (lse - target_logit) * mask, 0.0)
  z = jnp.where(on, z_loss * lse ** 2 * mask, 0.0)
  out = {"ce_sum": ce.sum(), "z_sum": z.sum(), "count": mask.sum()}
  if kind_ids is not None:
    for kind, kind_id in packing.KIND_IDS.items():
      kind_mask = (kind_ids == kind_id).astype(jnp.float32) * mask
      out[f"ce_sum/{kind}"] = (ce * kind_mask).sum()
      out[f"count/{kind}"] = kind_mask.sum()
  return out


def _terms(logits_blv: jax.Array, targets_bl: jax.Array, mask_bl: jax.Array,
           kind_ids_bl: jax.Array | None, z_loss: float) -> dict[str, jax.Array]:
  on = mask_bl > 0
  lse = jax.nn.logsumexp(logits_blv, axis=-1)
  safe = jnp.where(on, targets_bl, 0)
  target_logit = jnp.take_along_axis(logits_blv, safe[..., None], axis=-1)[..., 0]
  out = _term_sums(lse, target_logit, on, mask_bl, kind_ids_bl, z_loss)
  out["objective"] = out["ce_sum"] + out["z_sum"]
  return out


def loss_terms(logits_blv: jax.Array, batch: Mapping[str, jax.Array],
               z_loss: float) -> dict[str, jax.Array]:
  """Summed loss terms of full logits [b, l, vocab]."""
  return _terms(logits_blv, batch["targets"], batch["loss_mask"].astype(jnp.float32),
                batch.get("kind_ids"), z_loss)


def chunked_terms(hidden_bld: jax.Array, weight_vd: jax.Array, batch: Mapping[str, jax.Array],
                  z_loss: float, chunk: int, unroll: int = 1) -> dict[str, jax.Array]:
  """The terms of `loss_terms` for logits = hidden_bld @ weight_vd.T (cast to float32),
  computed `chunk` positions at a time (chunk must divide the sequence length).

  Only `objective` (ce_sum + z_sum) is differentiable, with respect to the hidden states
  and the weight [vocab, d]; the other terms are metrics (their gradient is zero).
  `unroll` unrolls the chunk loop (kosmos-compile's per-iteration cost).
  """
  b, l, d = hidden_bld.shape
  if chunk <= 0 or chunk >= l:
    chunk = l
  if l % chunk:
    raise ValueError(f"optim.loss_chunk={chunk} does not divide the sequence length {l}; "
                     f"use a divisor of {l} (or 0 for the whole sequence)")
  weight_vd = sharding.constrain(weight_vd, ("vocab", None))  # gathered once, not per chunk
  objective, terms = _fused_objective(hidden_bld, weight_vd, batch["targets"],
                                      batch["loss_mask"].astype(jnp.float32),
                                      batch.get("kind_ids"), z_loss, chunk, unroll)
  return dict(jax.lax.stop_gradient(terms), objective=objective)


# ----------------------------------------------------------------------------- fused chunks
#
# `chunked_terms` computes the gradient of ce_sum + z_sum with respect to the hidden
# states and the output weight while it computes the loss, chunk by chunk (as Liger's
# fused linear cross-entropy does): the backward pass only scales them by the incoming
# cotangent. Against differentiating a rematerialised chunk, this saves the recomputed
# [b, c, vocab] projection (a quarter of the head's FLOPs) and keeps no logits. Under a
# mesh the chunks run in shard_map: rows stay on their batch shard, the vocabulary on its
# tensor shard (log-sum-exp and the target logit reduced over it, Megatron's
# vocab-parallel cross-entropy), the weight is gathered once before the loop and its
# gradient summed over the batch shards once after it.


def _reduce(x: jax.Array, op: Callable, axes: tuple[str, ...]) -> jax.Array:
  return op(x, axes) if axes else x


def _fused_local(hidden_bld, weight_vd, targets_bl, mask_bl, kind_ids_bl, *, z_loss: float,
                 chunk: int, unroll: int, vocab_axes: tuple[str, ...],
                 batch_axes: tuple[str, ...]):
  """Terms, d(ce_sum + z_sum)/d hidden and /d weight on one shard (or the whole batch)."""
  b, l, d = hidden_bld.shape
  v_local = weight_vd.shape[0]
  n = l // chunk
  split = lambda x: x.reshape((b, n, chunk) + x.shape[2:]).swapaxes(0, 1)
  offset = (jax.lax.axis_index(vocab_axes) * v_local) if vocab_axes else 0
  xs = (split(hidden_bld), split(targets_bl), split(mask_bl),
        split(kind_ids_bl) if kind_ids_bl is not None else None)

  def one(dweight_vd, x):
    h, targets, mask, kind_ids = x
    logits = jnp.einsum("bcd,vd->bcv", h, weight_vd).astype(jnp.float32)
    peak = _reduce(logits.max(-1), jax.lax.pmax, vocab_axes)
    total = _reduce(jnp.exp(logits - peak[..., None]).sum(-1), jax.lax.psum, vocab_axes)
    lse = peak + jnp.log(total)
    on = mask > 0
    local = jnp.where(on, targets, 0) - offset
    here = (local >= 0) & (local < v_local)
    picked = jnp.take_along_axis(logits, jnp.clip(local, 0, v_local - 1)[..., None], -1)[..., 0]
    target_logit = _reduce(jnp.where(here, picked, 0.0), jax.lax.psum, vocab_axes)
    terms = _term_sums(lse, target_logit, on, mask, kind_ids, z_loss)
    # d/dlogits of mask * (lse - logit[target] + z_loss * lse^2): (1 + 2 z_loss lse) p - onehot
    probs = jnp.exp(logits - lse[..., None])
    onehot = (jnp.arange(v_local) == local[..., None]) & here[..., None]
    scale = jnp.where(on, mask, 0.0)[..., None]
    dlogits = (scale * ((1.0 + 2.0 * z_loss * lse[..., None]) * probs - onehot)).astype(h.dtype)
    dh = _reduce(jnp.einsum("bcv,vd->bcd", dlogits, weight_vd,
                            preferred_element_type=jnp.float32), jax.lax.psum, vocab_axes)
    dweight_vd = dweight_vd + jnp.einsum("bcv,bcd->vd", dlogits, h,
                                         preferred_element_type=jnp.float32)
    return dweight_vd, (terms, dh.astype(h.dtype))

  dweight, (terms, dh) = jax.lax.scan(one, jnp.zeros(weight_vd.shape, jnp.float32), xs,
                                      unroll=unroll)
  terms = jax.tree.map(lambda t: _reduce(t.sum(0), jax.lax.psum, batch_axes), terms)
  dweight = _reduce(dweight, jax.lax.psum, batch_axes)
  return terms, dh.swapaxes(0, 1).reshape(b, l, d), dweight


def _fused(hidden_bld, weight_vd, targets_bl, mask_bl, kind_ids_bl, z_loss, chunk, unroll):
  """(terms, dhidden, dweight), in shard_map under the active mesh."""
  local = functools.partial(_fused_local, z_loss=z_loss, chunk=chunk, unroll=unroll)
  mesh = sharding.active_mesh()
  if mesh is None:
    return local(hidden_bld, weight_vd, targets_bl, mask_bl, kind_ids_bl, vocab_axes=(),
                 batch_axes=())
  rows = sharding.spec_for(hidden_bld.shape, ("batch", None, None))
  vocab = sharding.spec_for(weight_vd.shape, ("vocab", None))
  axes = lambda entry: (entry,) if isinstance(entry, str) else tuple(entry or ())
  batch_axes, vocab_axes = axes(rows[0]), axes(vocab[0])
  row_spec = P(rows[0], None)
  args, specs = [hidden_bld, weight_vd, targets_bl, mask_bl], [rows, vocab, row_spec, row_spec]
  if kind_ids_bl is not None:
    args, specs = args + [kind_ids_bl], specs + [row_spec]

  def on_shard(h, w, targets, mask, kind_ids=None):
    return local(h, w, targets, mask, kind_ids, vocab_axes=vocab_axes, batch_axes=batch_axes)

  return jax.shard_map(on_shard, mesh=mesh, in_specs=tuple(specs),
                       out_specs=(P(), rows, vocab), check_vma=False)(*args)

@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _fused_objective(hidden_bld, weight_vd, targets_bl, mask_bl, kind_ids_bl, z_loss, chunk,
                     unroll):
  terms = _fused(hidden_bld, weight_vd, targets_bl, mask_bl, kind_ids_bl, z_loss, chunk,
                 unroll)[0]
  return terms["ce_sum"] + terms["z_sum"], terms


def _fused_fwd(hidden_bld, weight_vd, targets_bl, mask_bl, kind_ids_bl, z_loss, chunk, unroll):
  terms, dhidden, dweight = _fused(hidden_bld, weight_vd, targets_bl, mask_bl, kind_ids_bl,
                                   z_loss, chunk, unroll)
  residuals = (dhidden, dweight.astype(weight_vd.dtype), (targets_bl, mask_bl, kind_ids_bl))
  return (terms["ce_sum"] + terms["z_sum"], terms), residuals


def _fused_bwd(z_loss, chunk, unroll, residuals, cotangents):
  del z_loss, chunk, unroll
  dhidden, dweight, (targets, mask, kind_ids) = residuals
  g = cotangents[0]  # the terms' cotangents are zero: chunked_terms stops their gradient
  no_grad = lambda x: None if x is None else np.zeros(x.shape, jax.dtypes.float0)
  return ((g * dhidden).astype(dhidden.dtype), (g * dweight).astype(dweight.dtype),
          no_grad(targets), jnp.zeros_like(mask), no_grad(kind_ids))


_fused_objective.defvjp(_fused_fwd, _fused_bwd)
