"""Remat policies (kosmos.model.remat): policies leave the gradients as they are (scanned
layers), and the named ones keep exactly what their name says (jax's saved residuals)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import tiny
from kosmos.model import decoder as decoder_lib
from kosmos.model import layers, multimodal, remat


def _loss(model, batch):
  logits, _ = model(batch)
  return jnp.mean(jax.nn.log_softmax(logits)[..., 0] * (batch["segment_ids"] > 0))


def _grads(config, batch):
  model = multimodal.Multimodal(config, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)
  return jax.grad(lambda p: _loss(nnx.merge(graphdef, p), batch))(params)


def test_policies_keep_the_gradients():
  config = tiny.model_config("magneto", "mlp", "xpos")
  config.decoder.scan_layers = True
  batch = tiny.batch(config, b=2, l=24, docs=2)
  want = _grads(config, batch)
  for name in ("full", "dots_attn", "dots_attn_mlp_normed", "qkv_attn_out"):
    config.decoder.remat = name
    got = _grads(config, batch)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5,
                                                         err_msg=name), got, want)


@pytest.mark.parametrize("name, kept, recomputed", [
    ("dots_attn", (remat.ATTENTION,), (remat.MLP_HIDDEN, remat.MLP_NORMED)),
    ("dots_attn_mlp", (remat.ATTENTION, remat.MLP_HIDDEN), (remat.MLP_NORMED,)),
    ("dots_attn_mlp_normed", (remat.ATTENTION, remat.MLP_HIDDEN, remat.MLP_NORMED), ()),
    ("mlp", (remat.MLP_HIDDEN,), (remat.ATTENTION, remat.MLP_NORMED)),  # mlp_out: no residual
])
def test_named_policies_keep_their_names(name, kept, recomputed, capsys):
  config = decoder_lib.default_config()
  config.update(d_model=32, num_layers=1, num_heads=4, ffn_dim=64, vocab_size=64, max_len=16)
  block = decoder_lib.Block(config, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(0), (1, 8, 32))
  positions = jnp.arange(8)[None]
  segments = jnp.ones((1, 8), jnp.int32)
  mask = layers.attention_mask(segments, segments, causal=True)
  graphdef, params = nnx.split(block)

  def f(p, x):
    return layers.remat_call(nnx.merge(graphdef, p), name, x, mask, positions, segments)[0].sum()

  capsys.readouterr()
  jax.ad_checkpoint.print_saved_residuals(f, params, x)
  saved = capsys.readouterr().out
  for tag in kept:
    assert f"'{tag}'" in saved, (name, tag, saved)
  for tag in recomputed:
    assert f"'{tag}'" not in saved, (name, tag, saved)
