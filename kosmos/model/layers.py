"""Building blocks: dense layers and norms with logical axes, attention, MLPs, positions.

Every parameter is created with logical axis names (`out_sharding` metadata) so that
`kosmos.sharding.param_shardings` can lay it out on any mesh. Dimension letters:
b batch, t query time, s key time, d model, f ffn, n heads, g kv heads, k head dim.
"""

from __future__ import annotations

import enum
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import normalization as flax_norm

from kosmos import sharding
from kosmos.model import attention as attention_lib
from kosmos.model import lora as lora_lib
from kosmos.model import remat as remat_lib

# Flax >= 0.12 would otherwise try to shard at creation; we lay params out from their
# logical names ourselves (kosmos.sharding.param_shardings).
nnx.use_eager_sharding(False)

Dtype = Any


class Activation(str, enum.Enum):
  GELU = "gelu"  # exact (erf) GELU
  GELU_TANH = "gelu_tanh"
  QUICK_GELU = "quick_gelu"  # x * sigmoid(1.702 x), CLIP
  SILU = "silu"


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
  table = {
      Activation.GELU: lambda x: jax.nn.gelu(x, approximate=False),
      Activation.GELU_TANH: lambda x: jax.nn.gelu(x, approximate=True),
      Activation.QUICK_GELU: lambda x: x * jax.nn.sigmoid(1.702 * x),
      Activation.SILU: jax.nn.silu,
  }
  try:
    return table[Activation(name)]
  except ValueError:
    raise ValueError(f"unknown activation {name!r}; valid: {[a.value for a in Activation]}") from None


def dtype_of(name: str | Dtype) -> Dtype:
  return jnp.dtype(name)


def dense(din: int, dout: int, axes: tuple[str | None, str | None], *, rngs: nnx.Rngs,
          use_bias: bool = True, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
          std: float = 0.02, lora: lora_lib.Spec | None = None) -> nnx.Linear:
  """A Linear [din, dout] whose kernel has logical axes `axes` and bias `axes[1:]`;
  a `lora_lib.LoraLinear` (same kernel and bias, plus adapters) when `lora` is given."""
  kw = dict(use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
            kernel_init=nnx.with_partitioning(nnx.initializers.normal(std), axes),
            bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), axes[1:]), rngs=rngs)
  if lora is not None:
    return lora_lib.LoraLinear(din, dout, spec=lora, axes=axes, **kw)
  return nnx.Linear(din, dout, **kw)


def norm(dim: int, *, rms: bool, eps: float, rngs: nnx.Rngs, axis_name: str = "embed",
         dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32) -> nnx.Module:
  """LayerNorm (scale + bias) or RMSNorm (scale only) over the last dim."""
  scale_init = nnx.with_partitioning(nnx.initializers.ones_init(), (axis_name,))
  if rms:
    return nnx.RMSNorm(dim, epsilon=eps, dtype=dtype, param_dtype=param_dtype,
                       scale_init=scale_init, rngs=rngs)
  return nnx.LayerNorm(dim, epsilon=eps, dtype=dtype, param_dtype=param_dtype,
                       scale_init=scale_init,
                       bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), (axis_name,)),
                       rngs=rngs)


# ----------------------------------------------------------------------------- positions


def sinusoidal(positions_bt: jax.Array, dim: int, offset: int = 0) -> jax.Array:
  """Fairseq/tensor2tensor sinusoids [b, t, dim]: [sin(p w_i) | cos(p w_i)], w_i = 1e4^(-i/(h-1)).

  This is the table transformers' Kosmos-2 uses (M2M100 layout); `offset` shifts the
  position (Kosmos-2: pad_id + 1 = 2). Differs from "Attention is all you need" by the
  (h - 1) denominator and by concatenating instead of interleaving sin and cos.
  """
  half = dim // 2
  freq = jnp.exp(jnp.arange(half, dtype=jnp.float32) * -(math.log(10000.0) / (half - 1)))
  angle = (positions_bt + offset).astype(jnp.float32)[..., None] * freq
  table = jnp.concatenate([jnp.sin(angle), jnp.cos(angle)], axis=-1)
  if dim % 2:
    table = jnp.pad(table, [(0, 0)] * (table.ndim - 1) + [(0, 1)])
  return table


def _per_head(table_btk: jax.Array, heads_first: bool) -> jax.Array:
  """A [b, t, k] table broadcast over the heads of [b, t, n, k] (or [b, n, t, k])."""
  return table_btk[:, None] if heads_first else table_btk[:, :, None]


def rope(x_btnk: jax.Array, positions_bt: jax.Array, theta: float, *,
         heads_first: bool = False) -> jax.Array:
  """Rotary embedding in the Llama/transformers layout (rotate the two halves of k); x is
  [b, t, n, k], or [b, n, t, k] with `heads_first`."""
  k = x_btnk.shape[-1]
  inv_freq = 1.0 / (theta ** (jnp.arange(0, k, 2, dtype=jnp.float32) / k))
  angle = positions_bt.astype(jnp.float32)[..., None] * inv_freq  # [b, t, k/2]
  cos = _per_head(jnp.concatenate([jnp.cos(angle)] * 2, -1), heads_first)
  sin = _per_head(jnp.concatenate([jnp.sin(angle)] * 2, -1), heads_first)
  x = x_btnk.astype(jnp.float32)
  x1, x2 = x[..., : k // 2], x[..., k // 2:]
  rotated = jnp.concatenate([-x2, x1], axis=-1)
  return (x * cos + rotated * sin).astype(x_btnk.dtype)


def xpos(x_btnk: jax.Array, positions_bt: jax.Array, *, scale_base: float, downscale: bool,
         center: int, heads_first: bool = False) -> jax.Array:
  """xPos (Sun et al. 2022, torchscale's XPOS): rotary on interleaved pairs with a decay;
  x is [b, t, n, k], or [b, n, t, k] with `heads_first`.

  Queries are multiplied by zeta^((p - center) / scale_base), keys by its inverse, so
  q_i . k_j decays with i - j. torchscale centres on the sequence middle; here the centre
  is a constant (`center`), which leaves every q.k product unchanged (the factors depend
  on p_i - p_j only) and lets packed documents use their own positions.
  """
  k = x_btnk.shape[-1]
  zeta = (jnp.arange(0, k, 2, dtype=jnp.float32) + 0.4 * k) / (1.4 * k)  # [k/2]
  p = positions_bt.astype(jnp.float32)[..., None]  # [b, t, 1]
  scale = zeta ** ((p - center) / scale_base)  # [b, t, k/2]
  if downscale:
    scale = 1.0 / scale
  inv_freq = 1.0 / (10000 ** (jnp.arange(k // 2, dtype=jnp.float32) / (k // 2)))
  angle = p * inv_freq
  cos = _per_head(jnp.repeat(jnp.cos(angle) * scale, 2, axis=-1), heads_first)
  sin = _per_head(jnp.repeat(jnp.sin(angle) * scale, 2, axis=-1), heads_first)
  x = x_btnk.astype(jnp.float32)
  # rotated[2i] = -x[2i+1], rotated[2i+1] = x[2i], as a product with a signed permutation
  # [k, k]: slicing the interleaved pairs (x[..., ::2]) makes a trailing axis of 2 that TPU
  # layouts pad to 128 lanes (measured: ten f32 copies of q per layer in kosmos1's HLO), and
  # lane rotations (jnp.roll) measured 3.5 ms per layer slower on v5p. The product is exact
  # in the input dtype (each output is one input, negated or not; HIGHEST keeps float32
  # inputs exact on TPU), so bf16 runs as one pass and remat's "dots" policies save a bf16
  # copy, not a float32 one.
  i = jnp.arange(k)
  swap = ((i[:, None] ^ 1) == i[None, :]) * jnp.where(i[:, None] % 2 == 1, -1, 1)
  rotated = jnp.einsum("...k,kj->...j", x_btnk, swap.astype(x_btnk.dtype),
                       precision=jax.lax.Precision.HIGHEST).astype(jnp.float32)
  return (x * cos + rotated * sin).astype(x_btnk.dtype)


# ----------------------------------------------------------------------------- attention


def attention_mask(segment_q_bt: jax.Array, segment_k_bs: jax.Array, *, causal: bool,
                   index_q_bt: jax.Array | None = None,
                   index_k_bs: jax.Array | None = None) -> jax.Array:
  """Boolean [b, 1, t, s]: same packed document, and key not after query when causal.

  `index_*` are absolute row indices (default arange), used for the causal test so that
  a KV cache can pass its own indices.
  """
  mask = segment_q_bt[:, :, None] == segment_k_bs[:, None, :]
  if causal:
    t, s = segment_q_bt.shape[1], segment_k_bs.shape[1]
    iq = jnp.arange(t)[None] if index_q_bt is None else index_q_bt
    ik = jnp.arange(s)[None] if index_k_bs is None else index_k_bs
    mask &= iq[:, :, None] >= ik[:, None, :]
  return mask[:, None]


class Rotary(str, enum.Enum):
  NONE = "none"
  ROPE = "rope"
  XPOS = "xpos"


class Attention(nnx.Module):
  """Multi-head (grouped-query) attention; `impl` picks the kernel (kosmos.model.attention).

  q_proj [d, n*k], k_proj/v_proj [dkv, g*k], o_proj [n*k, d]. `inner_norm` is Magneto's
  Sub-LN: a LayerNorm on the attention output before o_proj (Kosmos-2 `inner_attn_ln`).
  Self-attention when `kv_bsd` is None, else cross-attention over `kv_bsd`. q, k, v, the
  context and the output projection carry remat names (kosmos.model.remat).
  """

  def __init__(self, d_model: int, num_heads: int, *, num_kv_heads: int | None = None,
               head_dim: int | None = None, kv_dim: int | None = None, use_bias: bool = True,
               inner_norm: bool = False, norm_eps: float = 1e-5, rotary: str = Rotary.NONE,
               rope_theta: float = 10000.0, xpos_scale_base: float = 512.0, xpos_center: int = 0,
               dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32, std: float = 0.02,
               out_std: float | None = None, qk_std: float | None = None,
               lora: lora_lib.Spec | None = None, impl: str = attention_lib.Impl.XLA,
               causal: bool = False, block: int = 512, rngs: nnx.Rngs):
    attention_lib.check(impl, "attention")
    self.impl = attention_lib.Impl(impl)
    self.causal = causal  # splash builds its causal mask itself (xla/cudnn take `mask_b1ts`)
    self.block = block
    self.num_heads = num_heads
    self.num_kv_heads = num_kv_heads or num_heads
    if num_heads % self.num_kv_heads:
      raise ValueError(f"num_heads={num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
    self.head_dim = head_dim or d_model // num_heads
    self.rotary = Rotary(rotary)
    self.rope_theta = rope_theta
    self.xpos_scale_base = xpos_scale_base
    self.xpos_center = xpos_center
    self.dtype = dtype
    kv_dim = kv_dim or d_model
    kw = dict(use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.q_proj = dense(d_model, num_heads * self.head_dim, ("embed", "heads"),
                        std=qk_std or std, lora=lora and lora.get("q_proj"), **kw)
    self.k_proj = dense(kv_dim, self.num_kv_heads * self.head_dim, ("embed", "kv_heads"),
                        std=qk_std or std, lora=lora and lora.get("k_proj"), **kw)
    self.v_proj = dense(kv_dim, self.num_kv_heads * self.head_dim, ("embed", "kv_heads"),
                        std=out_std or std, lora=lora and lora.get("v_proj"), **kw)
    self.inner_norm = (norm(num_heads * self.head_dim, rms=False, eps=norm_eps, axis_name="heads",
                            dtype=dtype, param_dtype=param_dtype, rngs=rngs)
                       if inner_norm else None)
    self.o_proj = dense(num_heads * self.head_dim, d_model, ("heads", "embed"),
                        std=out_std or std, lora=lora and lora.get("o_proj"), **kw)

  def _rotate(self, x_btnk, positions_bt, is_key, heads_first=False):
    if self.rotary == Rotary.ROPE:
      return rope(x_btnk, positions_bt, self.rope_theta, heads_first=heads_first)
    if self.rotary == Rotary.XPOS:
      return xpos(x_btnk, positions_bt, scale_base=self.xpos_scale_base, downscale=is_key,
                  center=self.xpos_center, heads_first=heads_first)
    return x_btnk

  def _heads_first(self, impl: attention_lib.Impl, cache, kv_bsd) -> bool:
    """Splash self-attention on plain projections runs heads first end to end: q, k, v
    are projected straight into [b, n, t, k] and the output projection contracts (n, k),
    so no [b, t, n, k] <-> [b, n, t, k] transpose is materialised (measured on v5p: the
    transposes and their gradients were ~15 % of a kosmos1 decoder layer's cycles)."""
    plain = all(type(m) is nnx.Linear for m in (self.q_proj, self.k_proj, self.v_proj, self.o_proj))
    return impl == attention_lib.Impl.SPLASH and cache is None and kv_bsd is None and plain

  def _splash_heads_first(self, x_btd, segment_ids_bt, positions_bt):
    n, g, k = self.num_heads, self.num_kv_heads, self.head_dim
    q = self._rotate(_project_heads(self.q_proj, x_btd, n), positions_bt, is_key=False,
                     heads_first=True)
    kk = self._rotate(_project_heads(self.k_proj, x_btd, g), positions_bt, is_key=True,
                      heads_first=True)
    v = _project_heads(self.v_proj, x_btd, g)
    q = remat_lib.tag(sharding.constrain(q, ("batch", "act_heads", "length", "head_dim")),
                      remat_lib.QUERY)
    kk, v = remat_lib.tag(kk, remat_lib.KEY), remat_lib.tag(v, remat_lib.VALUE)
    y = attention_lib.splash_heads(q, kk, v, segment_ids_bt, causal=self.causal, block=self.block)
    y = remat_lib.tag(y, remat_lib.ATTENTION)
    if self.inner_norm is not None:
      y = _norm_heads_first(self.inner_norm, y)
    kernel, bias = _promoted(self.o_proj, y)
    out = jnp.einsum("bntk,nkd->btd", y.astype(kernel.dtype), kernel.reshape(n, k, -1))
    if bias is not None:
      out = out + bias
    return remat_lib.tag(out, remat_lib.OUT_PROJ)

  def __call__(self, x_btd: jax.Array, *, mask_b1ts: jax.Array | None = None,
               segment_ids_bt: jax.Array | None = None,
               positions_bt: jax.Array | None = None, kv_bsd: jax.Array | None = None,
               kv_positions_bs: jax.Array | None = None,
               cache: dict[str, jax.Array] | None = None,
               cache_index_b: jax.Array | None = None) -> tuple[jax.Array, dict | None]:
    """Returns (y [b, t, d], updated cache or None).

    cache: {"k": [b, S, g, k], "v": [b, S, g, k]} for incremental decoding; the new keys and
    values are written at row offsets `cache_index_b` and attention runs over all S slots
    (the caller's mask hides unwritten ones). Decoding and cross-attention always take the
    xla path; splash uses `segment_ids_bt` (and `self.causal`) instead of `mask_b1ts`.
    """
    b, t, _ = x_btd.shape
    impl = attention_lib.resolve(self.impl, self.dtype or x_btd.dtype)
    if self._heads_first(impl, cache, kv_bsd):
      return self._splash_heads_first(x_btd, segment_ids_bt, positions_bt), None
    source = x_btd if kv_bsd is None else kv_bsd
    q = self.q_proj(x_btd).reshape(b, t, self.num_heads, self.head_dim)
    k = self.k_proj(source).reshape(b, source.shape[1], self.num_kv_heads, self.head_dim)
    v = self.v_proj(source).reshape(b, source.shape[1], self.num_kv_heads, self.head_dim)
    if self.rotary != Rotary.NONE:
      q = self._rotate(q, positions_bt, is_key=False)
      k = self._rotate(k, positions_bt if kv_positions_bs is None else kv_positions_bs, is_key=True)
    q = sharding.constrain(q, ("batch", "length", "act_heads", "head_dim"))
    q = remat_lib.tag(q, remat_lib.QUERY)
    k = remat_lib.tag(k, remat_lib.KEY)
    v = remat_lib.tag(v, remat_lib.VALUE)
    if cache is not None:
      write = jax.vmap(lambda c, new, i: jax.lax.dynamic_update_slice_in_dim(c, new, i, axis=0))
      k = write(cache["k"], k.astype(cache["k"].dtype), cache_index_b)
      v = write(cache["v"], v.astype(cache["v"].dtype), cache_index_b)
      cache = {"k": k, "v": v}
    if impl == attention_lib.Impl.SPLASH and (cache is not None or kv_bsd is not None):
      impl = attention_lib.Impl.XLA  # decoding and cross-attention: the mask path
    y = attention_lib.attend(q, k, v, impl=impl, mask_b1ts=mask_b1ts,
                             segment_ids_bt=segment_ids_bt, causal=self.causal, block=self.block)
    y = y.reshape(b, t, self.num_heads * self.head_dim)
    y = remat_lib.tag(y, remat_lib.ATTENTION)
    if self.inner_norm is not None:
      y = self.inner_norm(y)
    return remat_lib.tag(self.o_proj(y), remat_lib.OUT_PROJ), cache


def _promoted(linear: nnx.Linear, x: jax.Array) -> tuple[jax.Array, jax.Array | None]:
  """A Linear's kernel and bias in the dtype its own call would compute in."""
  bias = linear.bias[...] if linear.bias is not None else None
  _, kernel, bias = linear.promote_dtype((x, linear.kernel[...], bias), dtype=linear.dtype)
  return kernel, bias


def _project_heads(linear: nnx.Linear, x_btd: jax.Array, heads: int) -> jax.Array:
  """`linear(x).reshape(b, t, heads, k)` transposed to [b, heads, t, k], computed by one
  dot that writes that layout."""
  kernel, bias = _promoted(linear, x_btd)
  d, out = kernel.shape
  y = jnp.einsum("btd,dnk->bntk", x_btd.astype(kernel.dtype),
                 kernel.reshape(d, heads, out // heads))
  return y if bias is None else y + bias.reshape(heads, 1, out // heads)


def _norm_heads_first(layer_norm: nnx.LayerNorm, y_bntk: jax.Array) -> jax.Array:
  """`layer_norm` over the features (n, k) of [b, n, t, k]: the same statistics and
  scale/bias layout as over the last axis of [b, t, n*k] (flax's own normalisation)."""
  # pylint: disable=protected-access
  scale = layer_norm.scale[...] if layer_norm.scale is not None else None
  bias = layer_norm.bias[...] if layer_norm.bias is not None else None
  x, scale, bias = layer_norm.promote_dtype((y_bntk, scale, bias), dtype=layer_norm.dtype)
  mean, var = flax_norm._compute_stats(x, (1, 3), layer_norm.dtype,
                                       use_fast_variance=layer_norm.use_fast_variance)
  return flax_norm._normalize(x, mean, var, scale, bias, (1, 3), (1, 3), layer_norm.dtype,
                              layer_norm.epsilon)


# ----------------------------------------------------------------------------- MLPs


class Mlp(nnx.Module):
  """fc1 -> act -> [Sub-LN] -> fc2 (Magneto / CLIP / SigLIP); `inner_norm` is Magneto's."""

  def __init__(self, d_model: int, ffn_dim: int, *, act: str, use_bias: bool = True,
               inner_norm: bool = False, norm_eps: float = 1e-5, dtype: Dtype = jnp.float32,
               param_dtype: Dtype = jnp.float32, std: float = 0.02, out_std: float | None = None,
               lora: lora_lib.Spec | None = None, rngs: nnx.Rngs):
    kw = dict(use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.act = act
    self.fc1 = dense(d_model, ffn_dim, ("embed", "mlp"), std=out_std or std,
                     lora=lora and lora.get("fc1"), **kw)
    self.inner_norm = (norm(ffn_dim, rms=False, eps=norm_eps, axis_name="mlp", dtype=dtype,
                            param_dtype=param_dtype, rngs=rngs) if inner_norm else None)
    self.fc2 = dense(ffn_dim, d_model, ("mlp", "embed"), std=out_std or std,
                     lora=lora and lora.get("fc2"), **kw)

  def __call__(self, x_btd: jax.Array) -> jax.Array:
    h_btf = activation(self.act)(self.fc1(x_btd))
    h_btf = remat_lib.tag(sharding.constrain(h_btf, ("batch", "length", "act_mlp")),
                          remat_lib.MLP_HIDDEN)
    if self.inner_norm is not None:
      h_btf = remat_lib.tag(self.inner_norm(h_btf), remat_lib.MLP_NORMED)
    return remat_lib.tag(self.fc2(h_btf), remat_lib.MLP_OUT)


class GatedMlp(nnx.Module):
  """SwiGLU (Llama): down(silu(gate(x)) * up(x)), no biases."""

  def __init__(self, d_model: int, ffn_dim: int, *, dtype: Dtype = jnp.float32,
               param_dtype: Dtype = jnp.float32, std: float = 0.02,
               lora: lora_lib.Spec | None = None, rngs: nnx.Rngs):
    kw = dict(use_bias=False, dtype=dtype, param_dtype=param_dtype, std=std, rngs=rngs)
    self.gate_proj = dense(d_model, ffn_dim, ("embed", "mlp"), lora=lora and lora.get("gate_proj"), **kw)
    self.up_proj = dense(d_model, ffn_dim, ("embed", "mlp"), lora=lora and lora.get("up_proj"), **kw)
    self.down_proj = dense(ffn_dim, d_model, ("mlp", "embed"), lora=lora and lora.get("down_proj"),
                           **kw)

  def __call__(self, x_btd: jax.Array) -> jax.Array:
    h_btf = jax.nn.silu(self.gate_proj(x_btd)) * self.up_proj(x_btd)
    h_btf = remat_lib.tag(sharding.constrain(h_btf, ("batch", "length", "act_mlp")),
                          remat_lib.MLP_HIDDEN)
    return remat_lib.tag(self.down_proj(h_btf), remat_lib.MLP_OUT)


def remat_call(block: nnx.Module, policy: str, *args: Any, **kwargs: Any):
  """Calls `block(*args, **kwargs)` under jax.checkpoint with the named policy
  (kosmos.model.remat); the unrolled layers' path, `stack.run` is the scanned one."""
  checkpoint_policy = remat_lib.policy(policy)
  if checkpoint_policy is remat_lib.NO_REMAT:
    return block(*args, **kwargs)
  return nnx.remat(lambda m, *a: m(*a, **kwargs), policy=checkpoint_policy)(block, *args)
