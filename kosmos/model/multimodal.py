"""The composite model: images and vectors written into their spans, one decoder.

`Multimodal(config.model)` holds `vision` (ViT), `connector` and `decoder`, plus
`vector_proj` when `config.model.vector_dim > 0` (PaLM-E state vectors). Forward on a
batch in the ARCHITECTURE.md format:

  tokens [b, l] -> decoder.embed -> x [b, l, d]
  images [b, m, h, w, 3] -> ViT -> connector -> [b, m*n, d]; the k-th real image of a row
      fills the k-th run of n image-slot positions of that row (a gather, static shapes)
  vectors [b, v, dv] -> vector_proj -> [b, v, d]; the j-th vector fills the j-th
      vector-slot position
  x -> decoder blocks (causal within `segment_ids` documents) -> logits [b, l, vocab]

Slots whose image (or vector) is masked out keep the embedding of token 0, so a masked
image has no effect at all. Slot ids are never looked up in the embedding table, so they
may lie outside the vocabulary (the kosmos2 config does this: XLM-R has no free id).
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from kosmos import defaults
from kosmos import sharding
from kosmos.model import connector as connector_lib
from kosmos.model import decoder as decoder_lib
from kosmos.model import layers
from kosmos.model import vision as vision_lib


def default_config(*, vision: ml_collections.ConfigDict, connector: ml_collections.ConfigDict,
                   decoder: ml_collections.ConfigDict, vector_dim: int = 0) -> ml_collections.ConfigDict:
  """The `config.model` section from its three parts."""
  return ml_collections.ConfigDict(dict(
      vision=vision, connector=connector, decoder=decoder, vector_dim=vector_dim,
      image_slot_id=defaults.IMAGE_SLOT_ID, vector_slot_id=defaults.VECTOR_SLOT_ID,
  ))


def check_config(config: ml_collections.ConfigDict) -> None:
  """All model-config errors, raised before any parameter is created or compiled."""
  decoder_lib.check_config(config.decoder)
  vision_lib.check_config(config.vision)
  connector_lib.check_config(config.connector)


def tokens_per_image(config: ml_collections.ConfigDict) -> int:
  """N, the number of image-slot tokens one image takes in the sequence."""
  return connector_lib.tokens_per_image(config.connector, vision_lib.num_features(config.vision))


def write_spans(x_bld: jax.Array, slot_bl: jax.Array, values_bmnd: jax.Array,
                valid_bm: jax.Array) -> jax.Array:
  """Writes item k's n embeddings into the k-th run of n slots of each row.

  slot_bl: bool, where the slots are. Slot positions are counted in order along the row;
  slot ordinal o belongs to item o // n, position o % n. Slots beyond m*n, or of items
  with valid_bm False, keep x.
  """
  b, m, n, d = values_bmnd.shape
  ordinal_bl = jnp.cumsum(slot_bl.astype(jnp.int32), axis=1) - 1
  in_range = slot_bl & (ordinal_bl < m * n)
  ordinal_bl = jnp.clip(ordinal_bl, 0, m * n - 1)
  item_valid_bl = jnp.take_along_axis(valid_bm, ordinal_bl // n, axis=1)
  gathered_bld = jnp.take_along_axis(values_bmnd.reshape(b, m * n, d), ordinal_bl[..., None], axis=1)
  write_bl = in_range & item_valid_bl
  return jnp.where(write_bl[..., None], gathered_bld.astype(x_bld.dtype), x_bld)


class Multimodal(nnx.Module):
  """Vision encoder + connector + decoder; each can be loaded or frozen alone."""

  def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    check_config(config)
    self.config = config
    self.vision = vision_lib.VisionTransformer(config.vision, rngs=rngs)
    self.connector = connector_lib.make(config.connector, config.vision.width,
                                        config.decoder.d_model, rngs=rngs)
    self.decoder = decoder_lib.Decoder(config.decoder, rngs=rngs)
    self.vector_proj = (layers.dense(config.vector_dim, config.decoder.d_model, (None, "embed"),
                                     rngs=rngs) if config.get("vector_dim", 0) else None)

  def embed_images(self, images_bmhwc: jax.Array) -> jax.Array:
    """[b, m, h, w, 3] -> [b, m, n, d] image embeddings."""
    b, m = images_bmhwc.shape[:2]
    flat = images_bmhwc.reshape((b * m,) + images_bmhwc.shape[2:])
    flat = sharding.constrain(flat, ("batch", None, None, None))
    features, _ = self.vision(flat)
    embeds = self.connector(features)
    return embeds.reshape((b, m) + embeds.shape[1:])

  def embed_inputs(self, batch: Mapping[str, jax.Array]) -> jax.Array:
    """Token embeddings with image and vector spans written in: [b, l, d]."""
    tokens = batch["tokens"]
    image_slot = tokens == self.config.image_slot_id
    # Vector slots exist only with vector_proj: otherwise vector_slot_id (7 by default) is an
    # ordinary token (e.g. in XLM-R for Kosmos-2) and must be embedded (interop parity fix).
    vector_slot = ((tokens == self.config.vector_slot_id) if self.vector_proj is not None
                   else jnp.zeros_like(image_slot))
    # Slot ids may lie outside the vocabulary (Kosmos-2 has no free id): never look them up.
    x_bld = self.decoder.embed(jnp.where(image_slot | vector_slot, 0, tokens))
    if "images" in batch and batch["images"].shape[1] > 0:
      image_embeds = self.embed_images(batch["images"])
      x_bld = write_spans(x_bld, image_slot, image_embeds, batch["image_mask"])
    if self.vector_proj is not None and "vectors" in batch:
      vector_embeds = self.vector_proj(batch["vectors"])[:, :, None, :]
      x_bld = write_spans(x_bld, vector_slot, vector_embeds, batch["vector_mask"])
    return x_bld

  def __call__(self, batch: Mapping[str, jax.Array], *,
               return_logits: bool = True) -> tuple[jax.Array | None, dict]:
    """Returns (logits [b, l, vocab] float32, aux); logits None with `return_logits=False`
    (aux["hidden"] holds the final states: the trainer's chunked loss)."""
    x_bld = self.embed_inputs(batch)
    return self.decoder(x_bld, batch["positions"], batch["segment_ids"],
                        return_logits=return_logits)


def create_sharded(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
                   rules: sharding.Rules, seed: int = 0) -> Multimodal:
  """Builds the model with every parameter created directly in its sharded layout.

  `eval_shape` gives the abstract state, `param_shardings` its layout from the logical
  names, and a jitted init with those `out_shardings` creates the values, so the full
  parameters never sit on one host.
  """
  check_config(config)
  sharding.check_model(config, mesh)
  abstract = nnx.eval_shape(lambda: Multimodal(config, rngs=nnx.Rngs(seed)))
  graphdef, abstract_state = nnx.split(abstract)
  shardings = sharding.param_shardings(abstract_state, mesh, rules)

  def init():
    return nnx.state(Multimodal(config, rngs=nnx.Rngs(seed)))

  state = jax.jit(init, out_shardings=shardings)()
  return nnx.merge(graphdef, state)
