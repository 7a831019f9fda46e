"""Decoder-only transformer, two families chosen by `config.family`.

`magneto` (KOSMOS-1 / KOSMOS-2): pre-LN blocks with Magneto's Sub-LN (a LayerNorm before
the attention output projection and after the FFN activation), exact GELU, biases,
embeddings scaled by sqrt(d), sinusoidal absolute positions or xPos relative positions,
final LayerNorm, output head tied to the embedding. Laid out one-to-one with
transformers' `Kosmos2TextModel` (attn_norm = self_attn_layer_norm, attn.inner_norm =
inner_attn_ln, mlp_norm = final_layer_norm, mlp.inner_norm = ffn_layernorm, norm =
layer_norm). Differences from the paper: initialisation follows torchscale's Sub-LN
scaling (v/out/fc1/fc2 std times sqrt(log 2L)) but with a normal, not Xavier, base.

`llama`: RMSNorm, RoPE, SwiGLU, grouped-query attention, no biases, untied head; laid out
like transformers' `LlamaModel` (attn_norm = input_layernorm, mlp_norm =
post_attention_layernorm, mlp.{gate,up,down}_proj).
"""

from __future__ import annotations

import enum
import math

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from kosmos import sharding
from kosmos.model import attention as attention_lib
from kosmos.model import layers
from kosmos.model import lora as lora_lib
from kosmos.model import remat as remat_lib
from kosmos.model import stack as stack_lib


class Family(str, enum.Enum):
  MAGNETO = "magneto"
  LLAMA = "llama"


class Positions(str, enum.Enum):
  SINUSOIDAL = "sinusoidal"  # absolute, added to the embeddings (Kosmos-2)
  XPOS = "xpos"  # relative, inside attention (KOSMOS-1)
  ROPE = "rope"  # relative, inside attention (Llama)


def default_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      family="magneto", vocab_size=64000, d_model=2048, num_layers=24, num_heads=32,
      num_kv_heads=0,  # 0 = num_heads
      head_dim=0,  # 0 = d_model // num_heads
      ffn_dim=8192, positions="xpos", position_offset=0, rope_theta=10000.0,
      xpos_scale_base=512.0, max_len=2048, norm_eps=1e-5, tie_embeddings=True,
      scale_embeddings=True, dtype="float32", param_dtype="float32",
      remat="none",  # kosmos.model.remat: none | full | dots | dots_all | qkv | qkv_attn ...
      attention="xla",  # kosmos.model.attention: xla | splash (TPU) | cudnn (GPU) | auto
      attention_block=512,  # splash block size (q and kv, forward and backward)
      scan_layers=False,  # blocks stacked [L, ...] and run under lax.scan (kosmos.model.stack)
      # Token embedding init std. torchscale (KOSMOS-1/2) uses d_model**-0.5, so that the
      # sqrt(d)-scaled embeddings are O(1) like the sinusoidal positions; at 0.02 they are
      # ~sqrt(d)/50 of that and content (tokens, image embeddings) starts drowned by position.
      embed_init_std=0.02,
      # Init std of the attention's query and key projections (0 = the blocks' 0.02). At
      # small d, torchscale's Xavier base is d**-0.5 (0.088 at d 128): attention is then
      # not uniform at init, and on symbolic binding episodes (kosmos.bench.binding) the
      # demo decoder's copy circuit forms by step 300 instead of not by step 600
      # (docs/performance.md, Demo).
      qk_init_std=0.0,
      lora=lora_lib.default_config(),  # adapters on block projections (kosmos.model.lora)
  ))


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the bad field, before any parameter is created."""
  valid = [f.value for f in Family]
  if config.family not in valid:
    raise ValueError(f"unknown decoder family {config.family!r}; valid: {valid}")
  if config.positions not in [p.value for p in Positions]:
    raise ValueError(f"unknown decoder positions {config.positions!r}; valid: "
                     f"{[p.value for p in Positions]}")
  if not config.head_dim and config.d_model % config.num_heads:
    raise ValueError(f"decoder d_model={config.d_model} not divisible by num_heads={config.num_heads}")
  kv = config.num_kv_heads or config.num_heads
  if config.num_heads % kv:
    raise ValueError(f"decoder num_heads={config.num_heads} not a multiple of num_kv_heads={kv}")
  remat_lib.check(config.remat, "decoder.remat")
  attention_lib.check(config.get("attention", "xla"), "decoder.attention",
                      config.get("attention_block", 512))
  lora_lib.check_config(config)


class Block(nnx.Module):
  """One pre-norm transformer block: x + attn(norm(x)); x + mlp(norm(x))."""

  def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    magneto = config.family == Family.MAGNETO
    dtype, pdtype = layers.dtype_of(config.dtype), layers.dtype_of(config.param_dtype)
    std = 0.02
    out_std = std * math.sqrt(math.log(2 * config.num_layers)) if magneto else std
    rotary = {Positions.XPOS: layers.Rotary.XPOS, Positions.ROPE: layers.Rotary.ROPE}.get(
        Positions(config.positions), layers.Rotary.NONE)
    kw = dict(dtype=dtype, param_dtype=pdtype, rngs=rngs)
    lora = lora_lib.spec_of(config)
    self.attn_norm = layers.norm(config.d_model, rms=not magneto, eps=config.norm_eps, **kw)
    self.attn = layers.Attention(
        config.d_model, config.num_heads, num_kv_heads=config.num_kv_heads or None,
        head_dim=config.head_dim or None, use_bias=magneto, inner_norm=magneto,
        norm_eps=config.norm_eps, rotary=rotary, rope_theta=config.rope_theta,
        xpos_scale_base=config.xpos_scale_base, xpos_center=config.max_len // 2,
        std=std, out_std=out_std, qk_std=config.get("qk_init_std") or None, lora=lora,
        impl=config.get("attention", "xla"), causal=True,
        block=config.get("attention_block", 512), **kw)
    self.mlp_norm = layers.norm(config.d_model, rms=not magneto, eps=config.norm_eps, **kw)
    if magneto:
      self.mlp = layers.Mlp(config.d_model, config.ffn_dim, act=layers.Activation.GELU,
                            inner_norm=True, norm_eps=config.norm_eps, std=std, out_std=out_std,
                            lora=lora, **kw)
    else:
      self.mlp = layers.GatedMlp(config.d_model, config.ffn_dim, std=std, lora=lora, **kw)

  def __call__(self, x_btd, mask_b1ts, positions_bt, segment_ids_bt=None, cache=None,
               cache_index_b=None):
    y, cache = self.attn(self.attn_norm(x_btd), mask_b1ts=mask_b1ts,
                         segment_ids_bt=segment_ids_bt, positions_bt=positions_bt,
                         cache=cache, cache_index_b=cache_index_b)
    x_btd = x_btd + y
    x_btd = x_btd + self.mlp(self.mlp_norm(x_btd))
    return sharding.constrain(x_btd, ("batch", "length", "act_embed")), cache


class Decoder(nnx.Module):
  """Token embedding, blocks, final norm and output head.

  Split in two calls so images can be written between them:
    `embed(tokens_bt)` -> unscaled embeddings [b, t, d];
    `__call__(x_btd, positions_bt, segment_ids_bt)` -> (logits [b, t, vocab] float32, aux).
  """

  def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    check_config(config)
    self.config = config
    magneto = config.family == Family.MAGNETO
    dtype, pdtype = layers.dtype_of(config.dtype), layers.dtype_of(config.param_dtype)
    self.embed_tokens = nnx.Embed(
        config.vocab_size, config.d_model, dtype=dtype, param_dtype=pdtype,
        embedding_init=nnx.with_partitioning(
            nnx.initializers.normal(config.get("embed_init_std", 0.02)), ("vocab", "embed")),
        rngs=rngs)
    if config.get("scan_layers", False):
      self.blocks = stack_lib.create(lambda r: Block(config, rngs=r), config.num_layers, rngs)
    else:
      self.blocks = nnx.List([Block(config, rngs=rngs) for _ in range(config.num_layers)])
    self.norm = layers.norm(config.d_model, rms=not magneto, eps=config.norm_eps, dtype=dtype,
                            param_dtype=pdtype, rngs=rngs)
    self.lm_head = (None if config.tie_embeddings else
                    layers.dense(config.d_model, config.vocab_size, ("embed", "vocab"),
                                 use_bias=False, dtype=dtype, param_dtype=pdtype, rngs=rngs))

  @property
  def embed_scale(self) -> float:
    return math.sqrt(self.config.d_model) if self.config.scale_embeddings else 1.0

  def embed(self, tokens_bt: jax.Array) -> jax.Array:
    return self.embed_tokens(tokens_bt)

  def __call__(self, x_btd: jax.Array, positions_bt: jax.Array, segment_ids_bt: jax.Array, *,
               cache: list[dict] | None = None, cache_index_b: jax.Array | None = None,
               cache_segment_ids_bs: jax.Array | None = None,
               cache_positions_bs: jax.Array | None = None,
               return_logits: bool = True) -> tuple[jax.Array | None, dict]:
    """Runs the blocks on (image-filled) embeddings.

    Training: causal attention within packed documents (`segment_ids_bt`, 0 = padding).
    Decoding with a cache: `cache` holds per-layer {"k","v"} of S slots;
    `cache_segment_ids_bs` / `cache_positions_bs` describe the slots AFTER this call's
    tokens are written at `cache_index_b` (positions give the causal order).
    Returns (logits [b, t, vocab] float32, aux {"hidden": final normed states}); with
    `return_logits=False` the logits are None (the trainer's chunked loss projects the
    hidden states itself, `logits`).
    """
    config = self.config
    x_btd = x_btd * jnp.asarray(self.embed_scale, x_btd.dtype)
    if config.positions == Positions.SINUSOIDAL:
      x_btd = x_btd + layers.sinusoidal(positions_bt, config.d_model,
                                        config.position_offset).astype(x_btd.dtype)
    x_btd = sharding.constrain(x_btd, ("batch", "length", "act_embed"))
    scanned = stack_lib.is_stack(self.blocks)
    new_cache = []
    if cache is None:
      splash = attention_lib.resolve(config.get("attention", "xla"),
                                     x_btd.dtype) == attention_lib.Impl.SPLASH
      mask = None if splash else layers.attention_mask(segment_ids_bt, segment_ids_bt, causal=True)
      if scanned:
        x_btd = stack_lib.run(self.blocks, x_btd, mask, positions_bt, segment_ids_bt,
                              remat=config.remat)
      else:
        for block in self.blocks:
          x_btd, _ = layers.remat_call(block, config.remat, x_btd, mask, positions_bt,
                                       segment_ids_bt)
    else:
      mask = layers.attention_mask(segment_ids_bt, cache_segment_ids_bs, causal=True,
                                   index_q_bt=positions_bt, index_k_bs=cache_positions_bs)
      for i in range(config.num_layers):
        block = stack_lib.layer(self.blocks, i) if scanned else self.blocks[i]
        x_btd, layer_cache = block(x_btd, mask, positions_bt, None, cache[i], cache_index_b)
        new_cache.append(layer_cache)
    hidden = self.norm(x_btd)
    aux = {"hidden": hidden}
    if cache is not None:
      aux["cache"] = new_cache
    return (self.logits(hidden) if return_logits else None), aux

  def head_weight(self) -> jax.Array:
    """The output projection as [vocab, d] in the compute dtype (the trainer's chunked
    loss, kosmos.train.loss.chunked_terms, projects with it)."""
    if self.lm_head is None:
      return self.embed_tokens.embedding.value.astype(self.embed_tokens.dtype)
    return self.lm_head.kernel.value.astype(self.lm_head.dtype).T

  def logits(self, hidden_btd: jax.Array) -> jax.Array:
    """Final hidden states -> logits [b, t, vocab] float32."""
    if self.lm_head is None:
      logits = self.embed_tokens.attend(hidden_btd)
    else:
      logits = self.lm_head(hidden_btd)
    return sharding.constrain(logits.astype(jnp.float32), ("batch", "length", "act_vocab"))
