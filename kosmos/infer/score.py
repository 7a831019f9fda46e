"""Log-likelihood of continuations: one forward over prompt + continuation, no cache.

For rank classification and multiple choice: each row is a prompt followed by one candidate
continuation; only the continuation's tokens are scored (each given everything before it).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from kosmos.infer import generate


def score(model, batch: dict[str, jax.Array], *,
          options: generate.Options) -> dict[str, jax.Array]:
  """Sum of log p(token | prefix) over each row's continuation.

  batch: tokens [b, L] (prompt then continuation, right-padded), lengths [b] (prompt +
  continuation), starts [b] (index of the first continuation token, >= 1), images, image_mask.
  Returns logprob [b] (sum) and num_tokens [b] (scored tokens = lengths - starts);
  `options` only supplies the mesh.
  """
  tokens_bl = batch["tokens"]
  b, l = tokens_bl.shape
  index_bl = jnp.broadcast_to(jnp.arange(l, dtype=jnp.int32)[None], (b, l))
  segments_bl = (index_bl < batch["lengths"][:, None]).astype(jnp.int32)
  logits_blv, _ = model.decoder(model.embed_inputs(batch), index_bl, segments_bl)
  logp_blv = jax.nn.log_softmax(logits_blv[:, :-1])
  target_bl = tokens_bl[:, 1:]
  logp_bl = jnp.take_along_axis(logp_blv, target_bl[..., None], axis=-1)[..., 0]
  target_index_bl = index_bl[:, 1:]
  scored_bl = ((target_index_bl >= batch["starts"][:, None]) &
               (target_index_bl < batch["lengths"][:, None]))
  return {"logprob": jnp.sum(jnp.where(scored_bl, logp_bl, 0.0), axis=1),
          "num_tokens": jnp.sum(scored_bl, axis=1).astype(jnp.int32)}
