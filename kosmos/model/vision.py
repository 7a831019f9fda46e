"""Vision Transformer in the CLIP layout, with a SigLIP variant.

CLIP (`variant="clip"`): patch conv without bias, a class token, learned positions,
`pre_norm` before the blocks, pre-LN blocks with quick-GELU, `post_norm`. Laid out like
transformers' `CLIPVisionTransformer` / `Kosmos2VisionTransformer`.
SigLIP (`variant="siglip"`): patch conv with bias, no class token, no pre-norm,
GELU-tanh, LayerNorm eps 1e-6; the attention-pool head is not built (kosmos uses the
patch features). Laid out like transformers' `SiglipVisionTransformer`.

Output features [b, p, width] are taken after block `feature_layer` (hidden-state index
as in transformers: 0 = embeddings, -1 = last block, -2 = LLaVA's penultimate), then
optionally `post_norm`-ed (Kosmos-2 norms all tokens), stripped of the class token
(`feature_select="patch"`, LLaVA's "default") and L2-normalised (Kosmos-2).
"""

from __future__ import annotations

import enum

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from kosmos import sharding
from kosmos.model import attention as attention_lib
from kosmos.model import layers
from kosmos.model import remat as remat_lib
from kosmos.model import stack as stack_lib

# Sizes by name, big_vision style: "L/14" = ViT-L with 14-px patches.
SIZES = {
    "Ti": dict(width=192, depth=12, num_heads=3, mlp_dim=768),
    "S": dict(width=384, depth=12, num_heads=6, mlp_dim=1536),
    "B": dict(width=768, depth=12, num_heads=12, mlp_dim=3072),
    "L": dict(width=1024, depth=24, num_heads=16, mlp_dim=4096),
    "So400m": dict(width=1152, depth=27, num_heads=16, mlp_dim=4304),
    "H": dict(width=1280, depth=32, num_heads=16, mlp_dim=5120),
}

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class Variant(str, enum.Enum):
  CLIP = "clip"
  SIGLIP = "siglip"


class FeatureSelect(str, enum.Enum):
  ALL = "all"  # every token (class token first, CLIP)
  PATCH = "patch"  # drop the class token (LLaVA "default")


def default_config(size: str = "L/14", variant: str = "clip",
                   image_size: int = 224) -> ml_collections.ConfigDict:
  """A ViT config from a big_vision-style size string, e.g. 'L/14', 'B/16'."""
  name, patch = size.split("/")
  if name not in SIZES:
    raise ValueError(f"unknown ViT size {name!r}; valid: {sorted(SIZES)}")
  siglip = variant == Variant.SIGLIP
  return ml_collections.ConfigDict(dict(
      variant=variant, image_size=image_size, patch_size=int(patch), **SIZES[name],
      norm_eps=1e-6 if siglip else 1e-5,
      pixel_mean=(0.5,) * 3 if siglip else CLIP_MEAN,
      pixel_std=(0.5,) * 3 if siglip else CLIP_STD,
      feature_layer=-1, feature_select="all", post_norm=True, l2_normalize=False,
      dtype="float32", param_dtype="float32", remat="none",  # kosmos.model.remat
      attention="xla",  # xla | splash (TPU; 257 tokens padded to its block) | cudnn | auto
      attention_block=512,
      scan_layers=False,  # blocks stacked and run under lax.scan (kosmos.model.stack)
  ))


def check_config(config: ml_collections.ConfigDict) -> None:
  if config.variant not in [v.value for v in Variant]:
    raise ValueError(f"unknown vision variant {config.variant!r}; valid: {[v.value for v in Variant]}")
  if config.feature_select not in [f.value for f in FeatureSelect]:
    raise ValueError(f"unknown vision feature_select {config.feature_select!r}; valid: "
                     f"{[f.value for f in FeatureSelect]}")
  if config.image_size % config.patch_size:
    raise ValueError(f"vision image_size={config.image_size} is not a multiple of "
                     f"patch_size={config.patch_size}")
  remat_lib.check(config.remat, "vision.remat")
  attention_lib.check(config.get("attention", "xla"), "vision.attention",
                      config.get("attention_block", 512))
  if not -config.depth - 1 <= config.feature_layer <= config.depth:
    raise ValueError(f"vision feature_layer={config.feature_layer} outside "
                     f"[{-config.depth - 1}, {config.depth}] for depth {config.depth}")


def num_features(config: ml_collections.ConfigDict) -> int:
  """Tokens per image the ViT outputs (patches, plus the class token if kept)."""
  patches = (config.image_size // config.patch_size) ** 2
  has_cls = config.variant == Variant.CLIP and config.feature_select == FeatureSelect.ALL
  return patches + int(has_cls)


class EncoderBlock(nnx.Module):
  """Pre-LN block: x + attn(ln1(x)); x + mlp(ln2(x))."""

  def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    kw = dict(dtype=layers.dtype_of(config.dtype), param_dtype=layers.dtype_of(config.param_dtype),
              rngs=rngs)
    act = layers.Activation.GELU_TANH if config.variant == Variant.SIGLIP else layers.Activation.QUICK_GELU
    self.layer_norm1 = layers.norm(config.width, rms=False, eps=config.norm_eps, **kw)
    self.attn = layers.Attention(config.width, config.num_heads, use_bias=True,
                                 impl=config.get("attention", "xla"),
                                 block=config.get("attention_block", 512), **kw)
    self.layer_norm2 = layers.norm(config.width, rms=False, eps=config.norm_eps, **kw)
    self.mlp = layers.Mlp(config.width, config.mlp_dim, act=act, use_bias=True, **kw)

  def __call__(self, x_bpd: jax.Array) -> jax.Array:
    x_bpd = x_bpd + self.attn(self.layer_norm1(x_bpd))[0]
    x_bpd = x_bpd + self.mlp(self.layer_norm2(x_bpd))
    return sharding.constrain(x_bpd, ("batch", "length", "act_embed"))


class VisionTransformer(nnx.Module):
  """images [b, h, w, 3] uint8 (or float in [0, 1]) -> features [b, p, width] float32."""

  def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    check_config(config)
    self.config = config
    dtype, pdtype = layers.dtype_of(config.dtype), layers.dtype_of(config.param_dtype)
    clip = config.variant == Variant.CLIP
    p = config.patch_size
    self.patch_embed = nnx.Conv(
        3, config.width, kernel_size=(p, p), strides=(p, p), padding="VALID", use_bias=not clip,
        dtype=dtype, param_dtype=pdtype,
        kernel_init=nnx.with_partitioning(nnx.initializers.normal(0.02), (None, None, None, "embed")),
        bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("embed",)), rngs=rngs)
    grid = config.image_size // p
    self.class_embed = (nnx.Param(nnx.initializers.normal(0.02)(rngs.params(), (config.width,), pdtype),
                                  out_sharding=("embed",)) if clip else None)
    self.pos_embed = nnx.Param(
        nnx.initializers.normal(0.02)(rngs.params(), (grid * grid + int(clip), config.width), pdtype),
        out_sharding=(None, "embed"))
    kw = dict(rms=False, eps=config.norm_eps, dtype=dtype, param_dtype=pdtype, rngs=rngs)
    self.pre_norm = layers.norm(config.width, **kw) if clip else None
    if config.get("scan_layers", False):
      self.blocks = stack_lib.create(lambda r: EncoderBlock(config, rngs=r), config.depth, rngs)
    else:
      self.blocks = nnx.List([EncoderBlock(config, rngs=rngs) for _ in range(config.depth)])
    self.post_norm = layers.norm(config.width, **kw)

  def _positions(self, grid_h: int, grid_w: int) -> jax.Array:
    """Learned positions, bicubically resized when the input grid differs from training.

    jax.image.resize's cubic kernel (a = -0.5) differs slightly from torch's (a = -0.75).
    """
    pos = self.pos_embed.value
    has_cls = self.class_embed is not None
    cls_pos, patch_pos = (pos[:1], pos[1:]) if has_cls else (pos[:0], pos)
    grid = int(round(patch_pos.shape[0] ** 0.5))
    if (grid_h, grid_w) != (grid, grid):
      patch_pos = jax.image.resize(patch_pos.reshape(grid, grid, -1), (grid_h, grid_w, pos.shape[-1]),
                                   method="bicubic").reshape(grid_h * grid_w, -1)
    return jnp.concatenate([cls_pos, patch_pos], axis=0)

  def normalize(self, images_bhwc: jax.Array) -> jax.Array:
    """uint8 [0, 255] (or float [0, 1]) -> (x - mean) / std in float32, on device."""
    x = images_bhwc.astype(jnp.float32)
    if images_bhwc.dtype == jnp.uint8:
      x = x / 255.0
    mean = jnp.asarray(self.config.pixel_mean, jnp.float32)
    std = jnp.asarray(self.config.pixel_std, jnp.float32)
    return (x - mean) / std

  def __call__(self, images_bhwc: jax.Array) -> tuple[jax.Array, dict]:
    config = self.config
    x = self.patch_embed(self.normalize(images_bhwc).astype(layers.dtype_of(config.dtype)))
    b, gh, gw, d = x.shape
    x_bpd = x.reshape(b, gh * gw, d)
    if self.class_embed is not None:
      cls = jnp.broadcast_to(self.class_embed.value.astype(x_bpd.dtype), (b, 1, d))
      x_bpd = jnp.concatenate([cls, x_bpd], axis=1)
    x_bpd = x_bpd + self._positions(gh, gw).astype(x_bpd.dtype)
    if self.pre_norm is not None:
      x_bpd = self.pre_norm(x_bpd)
    stop = config.feature_layer % (config.depth + 1)  # hidden-state index to keep
    if stack_lib.is_stack(self.blocks):
      x_bpd = stack_lib.run(self.blocks, x_bpd, remat=config.remat, stop=stop)
    else:
      for block in list(self.blocks)[:stop]:
        x_bpd = layers.remat_call(block, config.remat, x_bpd)
    features = x_bpd
    if config.post_norm:
      features = self.post_norm(features)
    if config.feature_select == FeatureSelect.PATCH and self.class_embed is not None:
      features = features[:, 1:]
    features = features.astype(jnp.float32)
    if config.l2_normalize:
      norm = jnp.linalg.norm(features, axis=-1, keepdims=True)
      features = features / jnp.maximum(norm, 1e-12)
    return features, {"num_patches": gh * gw}
