"""Model invariants: causality, document isolation, image spans, gradients, config errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import tiny
from kosmos import defaults
from kosmos.model import multimodal
from kosmos.train import freeze

VARIANTS = [
    ("magneto", "resampler", "xpos"),
    ("magneto", "attention_pool", "sinusoidal"),
    ("llama", "mlp", "rope"),
    ("llama", "linear", "rope"),
]


def _model(family="magneto", connector_kind="resampler", positions=None, **kw):
  config = tiny.model_config(family, connector_kind, positions, **kw)
  return config, multimodal.Multimodal(config, rngs=nnx.Rngs(0))


@nnx.jit
def _logits(model, batch):
  return model(batch)[0]


@pytest.mark.parametrize("family,connector_kind,positions", VARIANTS)
def test_causal_no_logit_before_a_changed_token_changes(family, connector_kind, positions):
  config, model = _model(family, connector_kind, positions)
  batch = tiny.batch(config)
  base = np.asarray(_logits(model, batch))
  t = 25  # a text position after both image spans
  assert batch["tokens"][0, t] >= 8
  changed = dict(batch, tokens=batch["tokens"].copy())
  changed["tokens"][0, t] = 8 + (changed["tokens"][0, t] - 7) % (config.decoder.vocab_size - 8)
  out = np.asarray(_logits(model, changed))
  np.testing.assert_array_equal(out[0, :t], base[0, :t])
  assert np.abs(out[0, t:] - base[0, t:]).max() > 1e-4
  np.testing.assert_array_equal(out[1], base[1])


@pytest.mark.parametrize("family,connector_kind,positions", VARIANTS[:3])
def test_packed_documents_do_not_see_each_other(family, connector_kind, positions):
  config, model = _model(family, connector_kind, positions)
  batch = tiny.batch(config, l=40, docs=2, images_per_row=1)  # doc 1 = [0, 20), doc 2 = [20, 40)
  base = np.asarray(_logits(model, batch))
  changed = dict(batch, tokens=batch["tokens"].copy(), images=batch["images"].copy())
  changed["tokens"][:, 12:18] = 9  # text of document 1
  changed["images"][:, 0] = 255 - changed["images"][:, 0]  # document 1's image
  out = np.asarray(_logits(model, changed))
  assert np.abs(out[:, :20] - base[:, :20]).max() > 1e-4
  np.testing.assert_allclose(out[:, 20:], base[:, 20:], rtol=0, atol=1e-6)
  # Document 2 on its own (positions restart at 0) gives the same logits as packed.
  alone = {k: v for k, v in batch.items()}
  alone.update(tokens=batch["tokens"][:, 20:], positions=batch["positions"][:, 20:],
               segment_ids=batch["segment_ids"][:, 20:], image_mask=np.zeros_like(batch["image_mask"]))
  np.testing.assert_allclose(np.asarray(_logits(model, alone)), base[:, 20:], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family,connector_kind,positions", VARIANTS)
def test_image_k_changes_nothing_before_its_span_and_masked_images_nothing(
    family, connector_kind, positions):
  config, model = _model(family, connector_kind, positions)
  n = multimodal.tokens_per_image(config)
  batch = tiny.batch(config, l=2 * (n + 4) + 8, m=3)
  base = np.asarray(_logits(model, batch))
  span2 = 2 + (n + 4)  # start of the second image span
  changed = dict(batch, images=batch["images"].copy())
  changed["images"][:, 1] = 255 - changed["images"][:, 1]
  out = np.asarray(_logits(model, changed))
  np.testing.assert_array_equal(out[:, :span2], base[:, :span2])
  assert np.abs(out[:, span2:] - base[:, span2:]).max() > 1e-4
  # The third image is masked out: changing it has no effect at all.
  changed = dict(batch, images=batch["images"].copy())
  changed["images"][:, 2] = 0
  np.testing.assert_array_equal(np.asarray(_logits(model, changed)), base)
  # Masking the second image removes its effect (slots keep the token-0 embedding).
  masked = dict(batch, image_mask=batch["image_mask"].copy())
  masked["image_mask"][:, 1] = False
  masked_out = np.asarray(_logits(model, masked))
  changed_masked = dict(masked, images=changed["images"])
  changed_masked["images"][:, 1] = 17
  np.testing.assert_array_equal(np.asarray(_logits(model, changed_masked)), masked_out)


def test_write_spans_places_kth_image_in_kth_run():
  b, l, m, n, d = 2, 12, 3, 2, 1
  slot = np.zeros((b, l), bool)
  slot[0, [1, 2, 6, 7]] = True  # two runs of n=2
  slot[1, [3, 4]] = True
  values = np.arange(b * m * n * d, dtype=np.float32).reshape(b, m, n, d) + 100
  valid = np.array([[True, True, False], [False, True, True]])
  out = np.asarray(multimodal.write_spans(jnp.zeros((b, l, d)), slot, values, valid))[..., 0]
  np.testing.assert_array_equal(out[0], [0, 100, 101, 0, 0, 0, 102, 103, 0, 0, 0, 0])
  np.testing.assert_array_equal(out[1], np.zeros(l))  # its first image is masked


def test_vector_spans_are_written():
  config, model = _model(vector_dim=5)
  batch = tiny.batch(config, l=32, vectors=2)
  base = np.asarray(_logits(model, batch))
  changed = dict(batch, vectors=batch["vectors"] + 1.0)
  out = np.asarray(_logits(model, changed))
  first = 32 - 3  # earliest vector slot
  assert batch["tokens"][0, first] == defaults.VECTOR_SLOT_ID
  np.testing.assert_array_equal(out[:, :first], base[:, :first])
  assert np.abs(out[:, first:] - base[:, first:]).max() > 1e-4


@nnx.jit(static_argnames="trainable")
def _grads(model, batch, trainable):
  def loss_fn(m):
    logits = m(batch)[0]
    return jnp.mean(jax.nn.logsumexp(logits, -1) - logits[..., 0])
  return nnx.grad(loss_fn, argnums=nnx.DiffState(0, trainable))(model)


def _norms(grads, prefix):
  leaves = jax.tree.leaves(grads[prefix]) if prefix in grads else []
  return [float(jnp.abs(x).max()) for x in leaves]


def test_gradients_reach_vision_and_connector_and_skip_frozen_parts():
  config, model = _model()
  batch = tiny.batch(config)
  grads = _grads(model, batch, trainable=freeze.Trainable())
  for part in ("vision", "connector", "decoder"):
    norms = _norms(grads, part)
    assert norms and all(np.isfinite(norms))
    assert sum(n > 0 for n in norms) >= 0.9 * len(norms), part
  # KOSMOS-1 style: the ViT frozen except its last block.
  kosmos1 = freeze.Trainable(frozen=(r"^vision\.(?!blocks\.1\.|post_norm)",))
  grads = _grads(model, batch, trainable=kosmos1)
  paths = {freeze.path_string(p) for p, _ in jax.tree_util.tree_flatten_with_path(
      nnx.to_pure_dict(grads))[0]}
  assert not any(p.startswith("vision.blocks.0.") or p.startswith("vision.patch_embed") for p in paths)
  assert any(p.startswith("vision.blocks.1.") for p in paths)
  # BLIP-2 / MiniGPT-4 style: only the connector trains.
  grads = _grads(model, batch, trainable=freeze.Trainable(trainable=(r"^connector\.",)))
  assert set(nnx.to_pure_dict(grads)) == {"connector"}
  assert max(_norms(grads, "connector")) > 0


@pytest.mark.parametrize("section,field,value,message", [
    ("decoder", "family", "gpt9", "unknown decoder family 'gpt9'"),
    ("connector", "kind", "qformer", "unknown connector 'qformer'"),
    ("vision", "variant", "dino", "unknown vision variant 'dino'"),
    ("decoder", "positions", "alibi", "unknown decoder positions 'alibi'"),
])
def test_unknown_architecture_choices_fail_before_building(section, field, value, message):
  config = tiny.model_config()
  config[section][field] = value
  with pytest.raises(ValueError, match=message):
    multimodal.check_config(config)
  with pytest.raises(ValueError, match=message):
    nnx.eval_shape(lambda: multimodal.Multimodal(config, rngs=nnx.Rngs(0)))


@pytest.mark.parametrize("family", ["magneto", "llama"])
def test_decoder_init_stds(family):
  """embed_init_std and qk_init_std set those initialisations; every other block weight
  keeps its own (0 = the default 0.02 for queries and keys)."""
  from kosmos.model import decoder as decoder_lib
  config = decoder_lib.default_config()
  config.update(family=family, vocab_size=4096, d_model=256, num_layers=2, num_heads=4,
                ffn_dim=512, max_len=64)
  base = decoder_lib.Decoder(config, rngs=nnx.Rngs(0))
  config.update(embed_init_std=256 ** -0.5, qk_init_std=256 ** -0.5)
  wide = decoder_lib.Decoder(config, rngs=nnx.Rngs(0))
  std = lambda p: float(np.asarray(p.value).std())
  assert std(base.embed_tokens.embedding) == pytest.approx(0.02, rel=0.05)
  assert std(wide.embed_tokens.embedding) == pytest.approx(1 / 16, rel=0.05)
  for b, w in zip(base.blocks, wide.blocks):
    for name in ("q_proj", "k_proj"):
      assert std(getattr(b.attn, name).kernel) == pytest.approx(0.02, rel=0.05)
      assert std(getattr(w.attn, name).kernel) == pytest.approx(1 / 16, rel=0.05)
    for name in ("v_proj", "o_proj"):
      np.testing.assert_array_equal(getattr(b.attn, name).kernel.value,
                                    getattr(w.attn, name).kernel.value)
