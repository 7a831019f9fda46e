"""Connectors: ViT features [b, p, width] -> image embeddings [b, n, d_model].

- `attention_pool` (Kosmos-2's image-to-text projection): dense width->d, then n learned
  latent queries attend (one cross-attention, biases, no Sub-LN) over the concatenation
  of the projected features and the queries themselves. n = `num_tokens` (64).
- `resampler` (Perceiver resampler of Flamingo; the role of BLIP-2/MiniGPT-4's query
  tokens and mPLUG-Owl's visual abstractor): dense vision width -> `width` (0 = d), n
  latents, `depth` layers of [latents += attn(LN(latents), kv = [LN(features);
  LN(latents)]); latents += FFN(LN(latents))], final LN, then dense `width` -> d when
  they differ. Differs from Flamingo by the input projection (Flamingo works in the
  vision width) and by having no time embeddings (single images).
- `mlp` (LLaVA-1.5): linear width->d, GELU, linear d->d; n = number of ViT features.
- `linear` (MiniGPT-4's and SEEChat's projection): linear width->d; n = features.
"""

from __future__ import annotations

import enum

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from kosmos import sharding
from kosmos.model import layers


class Kind(str, enum.Enum):
  ATTENTION_POOL = "attention_pool"
  RESAMPLER = "resampler"
  MLP = "mlp"
  LINEAR = "linear"


def default_config(kind: str = "resampler", num_tokens: int = 64) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      kind=kind, num_tokens=num_tokens, num_heads=16, depth=2, ffn_mult=4,
      width=0,  # resampler working width; 0 = the decoder's d_model
      dtype="float32", param_dtype="float32",
  ))


def check_config(config: ml_collections.ConfigDict) -> None:
  valid = [k.value for k in Kind]
  if config.kind not in valid:
    raise ValueError(f"unknown connector {config.kind!r}; valid: {valid}")


def tokens_per_image(config: ml_collections.ConfigDict, vision_features: int) -> int:
  """N: embeddings each image contributes (learned queries, or one per ViT feature)."""
  check_config(config)
  if config.kind in (Kind.ATTENTION_POOL, Kind.RESAMPLER):
    return config.num_tokens
  return vision_features


class AttentionPool(nnx.Module):

  def __init__(self, config, vision_width: int, d_model: int, *, rngs: nnx.Rngs):
    kw = dict(dtype=layers.dtype_of(config.dtype), param_dtype=layers.dtype_of(config.param_dtype),
              rngs=rngs)
    # Optional config key init_std (default 0.02). Kosmos-2 L2-normalises the ViT features,
    # so at 0.02 the image-dependent part of the pooled tokens is ~25x smaller than a token
    # embedding at init and images barely reach a small decoder for hundreds of steps.
    # configs/demo.py uses 0.5 (with the embedding at d**-0.5: images used within 300
    # steps, docs/performance.md, Demo); the default stays for the other configs.
    self.dense = layers.dense(vision_width, d_model, ("embed", "mlp"),
                              std=config.get("init_std", 0.02), **kw)
    self.latent_query = nnx.Param(
        nnx.initializers.normal(1.0)(rngs.params(), (config.num_tokens, d_model),
                                     layers.dtype_of(config.param_dtype)),
        out_sharding=("latents", "embed"))
    self.x_attn = layers.Attention(d_model, config.num_heads, use_bias=True, **kw)

  def __call__(self, features_bpw: jax.Array) -> jax.Array:
    h_bpd = self.dense(features_bpw)
    q_bnd = jnp.broadcast_to(self.latent_query.value.astype(h_bpd.dtype),
                             (h_bpd.shape[0],) + self.latent_query.value.shape)
    kv = jnp.concatenate([h_bpd, q_bnd], axis=1)
    return self.x_attn(q_bnd, kv_bsd=kv)[0]


class ResamplerLayer(nnx.Module):

  def __init__(self, config, width: int, *, rngs: nnx.Rngs):
    kw = dict(dtype=layers.dtype_of(config.dtype), param_dtype=layers.dtype_of(config.param_dtype),
              rngs=rngs)
    self.norm_media = layers.norm(width, rms=False, eps=1e-5, **kw)
    self.norm_latents = layers.norm(width, rms=False, eps=1e-5, **kw)
    self.attn = layers.Attention(width, config.num_heads, use_bias=False, **kw)
    self.mlp_norm = layers.norm(width, rms=False, eps=1e-5, **kw)
    self.mlp = layers.Mlp(width, config.ffn_mult * width, act=layers.Activation.GELU,
                          use_bias=False, **kw)

  def __call__(self, media_bpd: jax.Array, latents_bnd: jax.Array) -> jax.Array:
    q = self.norm_latents(latents_bnd)
    kv = jnp.concatenate([self.norm_media(media_bpd), q], axis=1)
    latents_bnd = latents_bnd + self.attn(q, kv_bsd=kv)[0]
    return latents_bnd + self.mlp(self.mlp_norm(latents_bnd))


class Resampler(nnx.Module):

  def __init__(self, config, vision_width: int, d_model: int, *, rngs: nnx.Rngs):
    kw = dict(dtype=layers.dtype_of(config.dtype), param_dtype=layers.dtype_of(config.param_dtype),
              rngs=rngs)
    width = config.width or d_model
    self.dense = layers.dense(vision_width, width, ("embed", "mlp"), **kw)
    self.latents = nnx.Param(
        nnx.initializers.normal(1.0)(rngs.params(), (config.num_tokens, width),
                                     layers.dtype_of(config.param_dtype)),
        out_sharding=("latents", "embed"))
    self.layers = nnx.List([ResamplerLayer(config, width, rngs=rngs) for _ in range(config.depth)])
    self.norm = layers.norm(width, rms=False, eps=1e-5, **kw)
    self.out_proj = (layers.dense(width, d_model, ("mlp", "embed"), **kw)
                     if width != d_model else None)

  def __call__(self, features_bpw: jax.Array) -> jax.Array:
    # Batch-sharded, feature-replicated like the decoder's activations. Left to XLA's
    # propagation (jax 0.10.2), a (data=2, fsdp=2, tensor=2) mesh gave outputs 0.5% off
    # the single-device ones; tests/test_train.py checks the step on that mesh.
    media = sharding.constrain(self.dense(features_bpw), ("batch", "length", "act_embed"))
    latents = jnp.broadcast_to(self.latents.value.astype(media.dtype),
                               (media.shape[0],) + self.latents.value.shape)
    latents = sharding.constrain(latents, ("batch", "length", "act_embed"))
    for layer in self.layers:
      latents = layer(media, latents)
    latents = self.norm(latents)
    return latents if self.out_proj is None else self.out_proj(latents)


class MlpProjector(nnx.Module):

  def __init__(self, config, vision_width: int, d_model: int, *, rngs: nnx.Rngs):
    kw = dict(dtype=layers.dtype_of(config.dtype), param_dtype=layers.dtype_of(config.param_dtype),
              rngs=rngs)
    self.linear_1 = layers.dense(vision_width, d_model, ("embed", "mlp"), **kw)
    self.linear_2 = layers.dense(d_model, d_model, ("mlp", "embed"), **kw)

  def __call__(self, features_bpw: jax.Array) -> jax.Array:
    return self.linear_2(jax.nn.gelu(self.linear_1(features_bpw), approximate=False))


class LinearProjector(nnx.Module):

  def __init__(self, config, vision_width: int, d_model: int, *, rngs: nnx.Rngs):
    self.linear = layers.dense(vision_width, d_model, ("embed", "mlp"),
                               dtype=layers.dtype_of(config.dtype),
                               param_dtype=layers.dtype_of(config.param_dtype), rngs=rngs)

  def __call__(self, features_bpw: jax.Array) -> jax.Array:
    return self.linear(features_bpw)


_CLASSES = {Kind.ATTENTION_POOL: AttentionPool, Kind.RESAMPLER: Resampler, Kind.MLP: MlpProjector,
            Kind.LINEAR: LinearProjector}


def make(config: ml_collections.ConfigDict, vision_width: int, d_model: int, *,
         rngs: nnx.Rngs) -> nnx.Module:
  """The connector named by `config.kind`."""
  check_config(config)
  return _CLASSES[Kind(config.kind)](config, vision_width, d_model, rngs=rngs)
