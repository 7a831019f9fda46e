"""Attention implementations: splash (Pallas, interpret mode on CPU) equals the xla path,
forward and gradients, on packed rows with several documents and image spans; cudnn and
bad settings fail clearly."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import tiny
from kosmos import defaults, sharding
from kosmos.model import attention, multimodal


def _with(config, impl, scan=False):
  out = config.copy_and_resolve_references()
  for part in (out.decoder, out.vision):
    part.update(attention=impl, attention_block=128, scan_layers=scan)
  return out


def _loss(model, batch):
  logits, _ = model(batch)
  return jnp.mean(jax.nn.log_softmax(logits)[..., 0] * (batch["segment_ids"] > 0))


@pytest.mark.parametrize("family,connector,positions,scan", [
    ("magneto", "resampler", "xpos", False),
    ("magneto", "attention_pool", "sinusoidal", True),
    ("llama", "mlp", "rope", True),  # grouped-query: 4 heads over 2 kv heads
])
def test_splash_equals_xla_forward_and_gradients(family, connector, positions, scan):
  config = tiny.model_config(family, connector, positions)
  batch = tiny.batch(config, b=2, l=40, docs=3)  # 3 documents per row, 2 image spans
  batch["segment_ids"][:, -4:] = 0  # and padding
  models = {}
  for impl in ("xla", "splash"):
    models[impl] = multimodal.Multimodal(_with(config, impl, scan), rngs=nnx.Rngs(0))
  grads, logits = {}, {}
  for impl, model in models.items():
    graphdef, params = nnx.split(model, nnx.Param)
    fn = lambda p: _loss(nnx.merge(graphdef, p), batch)  # pylint: disable=cell-var-from-loop
    grads[impl] = jax.grad(fn)(params)
    logits[impl] = model(batch)[0]
  real = batch["segment_ids"] > 0
  np.testing.assert_allclose(np.asarray(logits["splash"])[real], np.asarray(logits["xla"])[real],
                             atol=2e-5, rtol=0)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-6, rtol=1e-4),
               grads["splash"], grads["xla"])


def test_splash_under_a_mesh_equals_xla():
  """shard_map over the batch axes and the head axis (tensor=2 splits 4 heads)."""
  config = tiny.model_config("llama", "mlp")
  config.decoder.num_kv_heads = 4
  batch = tiny.batch(config, b=4, l=40, docs=2)
  mesh = sharding.make_mesh(dict(data=2, fsdp=2, tensor=2))
  out = {}
  for impl in ("xla", "splash"):
    model = multimodal.Multimodal(_with(config, impl, scan=True), rngs=nnx.Rngs(0))
    with sharding.use_mesh(mesh, defaults.SHARDING_RULES):
      out[impl] = np.asarray(jax.jit(lambda b: model(b)[0])(batch))  # pylint: disable=cell-var-from-loop
  np.testing.assert_allclose(out["splash"], out["xla"], atol=2e-5, rtol=0)


def test_splash_pads_to_its_block_and_never_attends_the_padding():
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.normal(size=(2, 130, 2, 8)), jnp.float32) for _ in range(3))
  seg = jnp.asarray(np.repeat([[1] * 70 + [2] * 60], 2, 0), jnp.int32)
  mask = (seg[:, :, None] == seg[:, None, :]) & (np.arange(130)[:, None] >= np.arange(130)[None])
  ref = jax.nn.dot_product_attention(q, k, v, mask=mask[:, None])
  got = attention.splash(q, k, v, seg, causal=True, block=128)  # 130 -> 256, two blocks
  np.testing.assert_allclose(got, ref, atol=2e-6, rtol=0)
  assert attention.splash_block(257, 512) == 384 and attention.splash_block(2048, 512) == 512


def test_cudnn_off_gpu_and_bad_settings_fail_clearly():
  config = _with(tiny.model_config(), "cudnn")
  model = multimodal.Multimodal(config, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="'cudnn' needs an NVIDIA GPU; this run's devices are 'cpu'"):
    model(tiny.batch(config))
  bad = _with(tiny.model_config(), "flash")
  with pytest.raises(ValueError, match=r"decoder.attention='flash'.*valid: \['xla', 'splash', 'cudnn', 'auto'\]"):
    multimodal.Multimodal(bad, rngs=nnx.Rngs(0))
  bad = _with(tiny.model_config(), "splash")
  bad.decoder.attention_block = 100
  with pytest.raises(ValueError, match="decoder.attention_block=100: splash blocks must be"):
    multimodal.Multimodal(bad, rngs=nnx.Rngs(0))
  bad = tiny.model_config()
  bad.decoder.remat = "some"
  with pytest.raises(ValueError, match="decoder.remat='some': unknown remat policy"):
    multimodal.Multimodal(bad, rngs=nnx.Rngs(0))


def test_auto_picks_by_platform():
  """auto: splash on TPU (also when compiling for TPU chips from a CPU host), xla on CPU."""
  assert attention.resolve("auto", jnp.bfloat16) == attention.Impl.XLA  # tests run on CPU
  assert attention.resolve("xla", jnp.bfloat16) == attention.Impl.XLA
  config = _with(tiny.model_config(), "auto")
  batch = tiny.batch(config)
  model = multimodal.Multimodal(config, rngs=nnx.Rngs(0))
  reference = multimodal.Multimodal(_with(tiny.model_config(), "xla"), rngs=nnx.Rngs(0))
  np.testing.assert_array_equal(model(batch)[0], reference(batch)[0])


def test_xpos_rotates_interleaved_pairs_with_the_decay():
  """torchscale's XPOS: pairs (2i, 2i+1) rotated by p * theta_i, scaled by zeta_i^(p/base)
  (keys by its inverse); written out pair by pair here."""
  from kosmos.model import layers  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 7, 3, 8)).astype(np.float32)
  positions = np.tile(np.arange(7) + 5, (2, 1))
  k, base, center = 8, 512.0, 100
  for downscale in (False, True):
    got = np.asarray(layers.xpos(jnp.asarray(x), jnp.asarray(positions), scale_base=base,
                                 downscale=downscale, center=center))
    want = np.empty_like(x)
    for i in range(k // 2):
      zeta = (2 * i + 0.4 * k) / (1.4 * k)
      theta = 10000 ** (-i / (k // 2))
      p = positions[..., None].astype(np.float64)
      scale = zeta ** ((p - center) / base)
      scale = 1 / scale if downscale else scale
      c, s = np.cos(p * theta) * scale, np.sin(p * theta) * scale
      x0, x1 = x[..., 2 * i], x[..., 2 * i + 1]
      want[..., 2 * i] = x0 * c - x1 * s
      want[..., 2 * i + 1] = x1 * c + x0 * s
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)
