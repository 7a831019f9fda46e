"""Scaled dot-product attention, three implementations chosen in config (`attention`).

  xla     `jax.nn.dot_product_attention` with a dense boolean mask [b, 1, t, s]: runs
          everywhere, materialises the [b, n, t, s] scores (the reference path).
  splash  Pallas splash attention (TPU): causal or full, packed documents by segment ids,
          no dense mask and no [t, s] scores in HBM; fully masked blocks are skipped.
          Under a mesh it runs in `shard_map` over the batch axes and the head axis;
          on a non-TPU backend it runs in Pallas interpret mode (tests, parity).
  cudnn   `jax.nn.dot_product_attention(implementation="cudnn")`: the fused cuDNN
          kernel on NVIDIA GPUs (bf16/fp16); a clear error elsewhere.
  auto    splash on TPU, cudnn on GPU for bf16/fp16 activations, xla otherwise (the
          platform of the active mesh's devices, so an AOT compile for TPU picks splash).

Shapes: q [b, t, n, k], k / v [b, s, g, k] (g kv heads divide n: grouped-query), out
[b, t, n, k]. Splash pads t to a multiple of its block size; padded keys get a segment
id no real query has, so they are never attended.
"""

from __future__ import annotations

import enum
import functools
import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from kosmos import sharding
from kosmos.model import remat as remat_lib


class Impl(str, enum.Enum):
  XLA = "xla"
  SPLASH = "splash"
  CUDNN = "cudnn"
  AUTO = "auto"


IMPLS = tuple(i.value for i in Impl)
_PAD_SEGMENT = -1  # segment id of splash's padding (real ids are >= 0)


def check(name: str, field: str, block: int = 512) -> None:
  if name not in IMPLS:
    raise ValueError(f"{field}={name!r}: unknown attention implementation; valid: {list(IMPLS)}")
  if name in (Impl.SPLASH, Impl.AUTO):
    check_block(block, field + "_block")


def _platform() -> str:
  mesh = sharding.active_mesh()
  if mesh is not None:
    return mesh.devices.flat[0].platform
  return jax.default_backend()


def resolve(impl: str, dtype) -> Impl:
  """The implementation `impl` names on this run's platform ("auto" chooses)."""
  impl = Impl(impl)
  if impl != Impl.AUTO:
    return impl
  platform = _platform()
  if platform == "tpu":
    return Impl.SPLASH
  if platform == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16):
    return Impl.CUDNN
  return Impl.XLA


def attend(q_btnk: jax.Array, k_bsgk: jax.Array, v_bsgk: jax.Array, *, impl: str,
           mask_b1ts: jax.Array | None = None, segment_ids_bt: jax.Array | None = None,
           causal: bool = False, block: int = 512) -> jax.Array:
  """Attention of q over k/v by `impl`; xla/cudnn take `mask_b1ts`, splash takes
  `segment_ids_bt` (self-attention, s == t) and `causal`."""
  impl = resolve(impl, q_btnk.dtype)
  if impl == Impl.SPLASH:
    return splash(q_btnk, k_bsgk, v_bsgk, segment_ids_bt, causal=causal, block=block)
  if impl == Impl.CUDNN:
    platform = _platform()
    if platform != "gpu":
      raise ValueError(f"attention implementation 'cudnn' needs an NVIDIA GPU; this run's "
                       f"devices are {platform!r} (use attention='xla', or 'splash' on TPU)")
    if q_btnk.dtype not in (jnp.bfloat16, jnp.float16):
      raise ValueError(f"attention implementation 'cudnn' needs bfloat16 or float16 "
                       f"activations, got {q_btnk.dtype} (set the model's dtype=bfloat16)")
    return jax.nn.dot_product_attention(q_btnk, k_bsgk.astype(q_btnk.dtype),
                                        v_bsgk.astype(q_btnk.dtype), mask=mask_b1ts,
                                        implementation="cudnn")
  return jax.nn.dot_product_attention(q_btnk, k_bsgk.astype(q_btnk.dtype),
                                      v_bsgk.astype(q_btnk.dtype), mask=mask_b1ts)


def _round_up(n: int, m: int) -> int:
  return -(-n // m) * m


LANES = 128  # splash blocks are multiples of the TPU lane width (also in interpret mode)


def check_block(block: int, field: str) -> None:
  if block < LANES or block % LANES:
    raise ValueError(f"{field}={block}: splash blocks must be a positive multiple of {LANES}")


def splash_block(t: int, block: int) -> int:
  """The block size splash uses for length t: `block`, or less for short sequences."""
  return min(block, _round_up(t, LANES))


def _splash_modules():
  """The Pallas splash modules, imported on first use (about 1 s: not at kosmos import)."""
  # pylint: disable=g-import-not-at-top
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask
  return splash_attention_kernel, splash_attention_mask


@functools.lru_cache(maxsize=64)
def _kernel(heads: int, t: int, block: int, causal: bool, interpret: bool):
  kernel, masks = _splash_modules()
  one = masks.CausalMask((t, t)) if causal else masks.FullMask((t, t))
  sizes = kernel.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                            block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
                            block_q_dq=block, block_kv_dq=block)
  # The kernel holds its block masks as arrays and is cached across traces: build them as
  # constants even when the first call happens inside a trace (a scan body), or the cache
  # would hand that trace's tracers to the next one.
  with jax.ensure_compile_time_eval():
    return kernel.make_splash_mha(masks.MultiHeadMask([one] * heads), block_sizes=sizes,
                                  head_shards=1, q_seq_shards=1, interpret=interpret,
                                  residual_checkpoint_name=remat_lib.ATTENTION_RESIDUALS)


def splash(q_btnk: jax.Array, k_btgk: jax.Array, v_btgk: jax.Array,
           segment_ids_bt: jax.Array | None, *, causal: bool, block: int) -> jax.Array:
  """Splash attention [b, t, n, k] (self-attention: keys at the queries' positions)."""
  heads_first = lambda x: x.transpose(0, 2, 1, 3)
  return heads_first(splash_heads(heads_first(q_btnk), heads_first(k_btgk), heads_first(v_btgk),
                                  segment_ids_bt, causal=causal, block=block))


def splash_heads(q_bntk: jax.Array, k_bgtk: jax.Array, v_bgtk: jax.Array,
                 segment_ids_bt: jax.Array | None, *, causal: bool, block: int) -> jax.Array:
  """Splash attention in its own layout, heads first: [b, n, t, k] -> [b, n, t, k]. A
  caller that projects q, k, v head-major (layers.Attention) saves the transposes, which
  on TPU are copies with k < 128 lanes."""
  b, n, t, d = q_bntk.shape
  if k_bgtk.shape[2] != t:
    raise ValueError(f"splash attention is self-attention only: {t} queries, "
                     f"{k_bgtk.shape[2]} keys (use attention='xla' for cross-attention)")
  if segment_ids_bt is None:
    segment_ids_bt = jnp.zeros((b, t), jnp.int32)
  blk = splash_block(t, block)
  padded = _round_up(t, blk)
  # Splash does not scale the logits.
  q = q_bntk * jnp.asarray(1.0 / math.sqrt(d), q_bntk.dtype)
  k = k_bgtk.astype(q.dtype)
  v = v_bgtk.astype(q.dtype)
  seg = segment_ids_bt.astype(jnp.int32)
  if padded != t:
    pad = [(0, 0), (0, 0), (0, padded - t), (0, 0)]
    q, k, v = jnp.pad(q, pad), jnp.pad(k, pad), jnp.pad(v, pad)
    seg = jnp.pad(seg, [(0, 0), (0, padded - t)], constant_values=_PAD_SEGMENT)
  interpret = _platform() != "tpu"

  kernel = _splash_modules()[0]

  def local(q, k, v, seg):
    fn = _kernel(q.shape[1], padded, blk, causal, interpret)
    return jax.vmap(lambda q1, k1, v1, s1: fn(q1, k1, v1, segment_ids=kernel.SegmentIds(s1, s1)))(
        q, k, v, seg)

  mesh = sharding.active_mesh()
  if mesh is None:
    out = local(q, k, v, seg)
  else:
    qkv_spec = sharding.spec_for(q.shape, ("batch", "act_heads", None, None))
    kv_spec = sharding.spec_for(k.shape, ("batch", "act_heads", None, None))
    if qkv_spec[1] != kv_spec[1]:  # kv heads must split like the query heads (GQA groups)
      qkv_spec = PartitionSpec(qkv_spec[0], None, None, None)
      kv_spec = PartitionSpec(kv_spec[0], None, None, None)
    seg_spec = PartitionSpec(qkv_spec[0], None)
    out = jax.shard_map(local, mesh=mesh, in_specs=(qkv_spec, kv_spec, kv_spec, seg_spec),
                        out_specs=qkv_spec, check_vma=False)(q, k, v, seg)
  return out[:, :, :t]
