"""Scanned layer stacks (kosmos.model.stack) equal the unrolled model; chunked loss equals
the full one; loss edge cases (masked out-of-vocabulary targets, batches without text)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import tiny
import train_fixture
from kosmos import defaults, sharding, workdir
from kosmos.model import multimodal, stack
from kosmos.train import compile as compile_lib
from kosmos.train import loss as loss_lib
from kosmos.train import step as step_lib


def _scanned(model_config, decoder=True, vision=True):
  out = model_config.copy_and_resolve_references()
  out.decoder.scan_layers, out.vision.scan_layers = decoder, vision
  return out


def _params(model):
  return nnx.to_pure_dict(nnx.state(model, nnx.Param))


@pytest.mark.parametrize("family,connector,positions", [
    ("magneto", "resampler", "xpos"), ("magneto", "attention_pool", "sinusoidal"),
    ("llama", "mlp", "rope")])
def test_scanned_logits_equal_unrolled(family, connector, positions):
  config = tiny.model_config(family, connector, positions)
  config.vision.feature_layer = -2  # LLaVA's penultimate layer: the scan stops early
  unrolled = multimodal.Multimodal(config, rngs=nnx.Rngs(0))
  scanned = multimodal.Multimodal(_scanned(config), rngs=nnx.Rngs(1))
  params = _params(unrolled)
  stacked = stack.stack(params)
  assert stacked["decoder"]["blocks"]["attn"]["q_proj"]["kernel"].shape[0] == 2
  nnx.update(scanned, stacked)
  batch = tiny.batch(config, docs=2)
  np.testing.assert_allclose(scanned(batch)[0], unrolled(batch)[0], atol=2e-6, rtol=0)
  # the layouts convert both ways exactly
  jax.tree.map(np.testing.assert_array_equal, stack.unstack(_params(scanned)),
               jax.tree.map(np.asarray, params))


def test_layer_paths_and_stacked_sharding():
  assert stack.is_stacked_path("vision.blocks.attn.q_proj.kernel")
  assert not stack.is_stacked_path("vision.blocks.23.attn.q_proj.kernel")
  assert not stack.is_stacked_path("connector.layers.0.attn.q_proj.kernel")
  assert stack.layer_paths("decoder.blocks.mlp.fc1.kernel", 2) == [
      "decoder.blocks.0.mlp.fc1.kernel", "decoder.blocks.1.mlp.fc1.kernel"]
  model = nnx.eval_shape(lambda: multimodal.Multimodal(_scanned(tiny.model_config()),
                                                       rngs=nnx.Rngs(0)))
  mesh = sharding.make_mesh(dict(data=1, fsdp=4, tensor=2))
  shardings = nnx.to_pure_dict(sharding.param_shardings(nnx.state(model, nnx.Param), mesh,
                                                        defaults.SHARDING_RULES))
  # [L, d, n*k]: layers never sharded, then the unrolled kernel's (embed, heads) layout
  spec = shardings["decoder"]["blocks"]["attn"]["q_proj"]["kernel"].spec
  assert tuple(spec) == (None, "fsdp", "tensor")


def _batch(config, seed=0):
  b = tiny.batch(config.model, b=8, l=32, seed=seed, docs=2)
  b["targets"] = np.roll(b["tokens"], -1, axis=1)
  b["loss_mask"] = (b["targets"] >= 8).astype(np.float32)
  b["kind_ids"] = np.full(b["tokens"].shape, 2, np.int8)
  return b


def _train(config, batches, mesh=None):
  mesh = mesh or sharding.make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
  run = step_lib.setup(config, mesh)
  state = step_lib.init_state(config, run)
  if stack.is_scanned_tree(state.params) or stack.is_scanned_tree(state.frozen):
    # the unrolled model's initial values, stacked: both runs start from the same weights
    reference = step_lib.init_state(_unscanned(config), step_lib.setup(_unscanned(config), mesh))
    values = stack.stack(_merged(jax.device_get(reference)))
    take = lambda tree: jax.tree_util.tree_map_with_path(
        lambda path, _: jnp.asarray(_lookup(values, path)), tree)
    state = state.replace(params=take(state.params), frozen=take(state.frozen))
    state = state.replace(opt_state=run.tx.init(state.params))
  shapes = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batches[0].items()}
  train_step = step_lib.jit_train_step(config, run, mesh, shapes)
  metrics = []
  for b in batches:
    state, m = train_step(state, b)
    metrics.append(jax.device_get(m))
  return run, jax.device_get(state), metrics


def _unscanned(config):
  out = config.copy_and_resolve_references()
  out.model.decoder.scan_layers = out.model.vision.scan_layers = False
  return out


def _merged(state):
  """params and frozen as one per-layer pure dict."""
  merged = {}
  for tree in (stack.unstack(state.frozen), stack.unstack(state.params)):
    for part, value in tree.items():
      merged.setdefault(part, {})
      _deep_update(merged[part], value)
  return merged


def _lookup(tree, path):
  for entry in path:
    tree = tree[entry.key]
  return tree


def _deep_update(into, tree):
  for k, v in tree.items():
    if isinstance(v, dict):
      _deep_update(into.setdefault(k, {}), v)
    else:
      into[k] = v


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("records"))
  train_fixture.write_records(root)
  return root


@pytest.mark.parametrize("family", ["magneto", "llama"])
def test_scanned_train_step_equals_unrolled(data_root, family):
  """One step with KOSMOS-1's freezing (the ViT frozen but its last block): same loss, same
  params; the frozen ViT layer stays bit-identical although its array trains."""
  config = train_fixture.config(data_root)
  config.model = tiny.model_config(family, "resampler" if family == "magneto" else "mlp")
  config.model.decoder.vocab_size = 264
  config.optim.update(eps=1e-2, frozen=(r"^vision\.(?!blocks\.1\.|post_norm)",))
  batches = [_batch(config, seed=1), _batch(config, seed=2)]
  ref_run, ref_state, ref_metrics = _train(config, batches)
  scanned = config.copy_and_resolve_references()
  scanned.model = _scanned(config.model)
  run, state, metrics = _train(scanned, batches)
  # the partly trained ViT stack: one array per param, updates masked to layer 1
  assert list(run.layer_masks) and all(m.tolist() == [False, True] for m in run.layer_masks.values())
  # kosmos-compile's parameter counts see the masked layers as frozen, as unrolled
  assert compile_lib.param_counts(run) == compile_lib.param_counts(ref_run)
  for a, b in zip(metrics, ref_metrics):
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-6)
    np.testing.assert_allclose(a["grad_norm"], b["grad_norm"], rtol=1e-5)
  ours, theirs = _merged(state), _merged(ref_state)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), ours, theirs)
  frozen_before = stack.unstack(_merged(
      jax.device_get(step_lib.init_state(_unscanned(config), step_lib.setup(
          _unscanned(config), sharding.make_mesh(dict(data=1, fsdp=1, tensor=1),
                                                  jax.devices()[:1]))))))
  jax.tree.map(np.testing.assert_array_equal, ours["vision"]["blocks"][0],
               frozen_before["vision"]["blocks"][0])
  assert not np.array_equal(ours["vision"]["blocks"][1]["attn"]["q_proj"]["kernel"],
                            frozen_before["vision"]["blocks"][1]["attn"]["q_proj"]["kernel"])


def test_frozen_prefix_runs_no_backward(data_root):
  """The frozen leading ViT layers run in their own scan under stop_gradient."""
  config = train_fixture.config(data_root)
  config.model = _scanned(config.model)
  config.model.decoder.vocab_size = 264
  config.optim.frozen = (r"^vision\.(?!blocks\.1\.|post_norm)",)
  run = step_lib.setup(config, sharding.make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1]))
  model = nnx.merge(run.graphdef, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                                               run.abstract_state.params),
                    jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), run.abstract_state.frozen))
  assert model.vision.blocks.frozen_prefix == 1 and model.decoder.blocks.frozen_prefix == 0


def test_lora_and_hf_round_trip_on_a_scanned_model(tmp_path):
  """LoRA adapters stack like their kernels; the HF export of a scanned LoRA Llama equals
  transformers' logits and imports back (scanned) with the same logits."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from kosmos.interop import hf_export, hf_import  # pylint: disable=g-import-not-at-top
  config = defaults.base()
  config.model = _scanned(tiny.model_config("llama", "mlp"))
  config.model.decoder.update(vocab_size=96, tie_embeddings=False)
  config.model.decoder.lora.update(rank=2, targets=("q_proj", "down_proj"))
  model = multimodal.Multimodal(config.model, rngs=nnx.Rngs(3))
  params = _params(model)
  rng = np.random.default_rng(4)
  params = jax.tree_util.tree_map_with_path(
      lambda p, v: (rng.normal(0, 0.05, v.shape).astype(np.float32)
                    if str(p[-1].key) == "lora_b" else np.asarray(v)), params)
  nnx.update(model, params)
  assert params["decoder"]["blocks"]["attn"]["q_proj"]["lora_a"].shape[0] == 2
  src, hf_dir, back = (str(tmp_path / n) for n in ("src", "hf", "back"))
  workdir.save_config(config, src)
  workdir.save_params(src, 1, params)
  tokens = np.random.default_rng(0).integers(8, 96, (2, 20)).astype(np.int32)
  batch = dict(tokens=tokens, positions=np.tile(np.arange(20, dtype=np.int32), (2, 1)),
               segment_ids=np.ones((2, 20), np.int32))
  ours = np.asarray(model(batch)[0])
  hf_export.export_hf(src, hf_dir, text_only=True, log=lambda _: None)
  hf_model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
  with torch.no_grad():
    theirs = hf_model(input_ids=torch.from_numpy(tokens).long()).logits.numpy()
  np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=0)
  plain = config.copy_and_resolve_references()
  plain.model.decoder.lora.update(rank=0, targets=("q_proj", "v_proj"))
  plain.model.decoder.head_dim = 8  # as the checkpoint's config.json says
  hf_import.import_hf(hf_dir, back, config=plain, log=lambda _: None)
  _, imported = workdir.restore_params(back)
  assert imported["decoder"]["blocks"]["attn"]["q_proj"]["kernel"].shape[0] == 2
  again = multimodal.Multimodal(plain.model, rngs=nnx.Rngs(0))
  nnx.update(again, imported)
  np.testing.assert_allclose(np.asarray(again(batch)[0]), ours, atol=1e-4, rtol=0)


# ----------------------------------------------------------------------------- loss


@pytest.mark.parametrize("tied,mesh_axes", [(True, None), (True, dict(data=2, fsdp=2, tensor=2)),
                                             pytest.param(False, dict(data=1, fsdp=2, tensor=4),
                                                          marks=pytest.mark.slow)])
def test_chunked_loss_equals_full_loss_and_gradients(tied, mesh_axes):
  """The fused chunks (gradients computed with the loss; under a mesh in shard_map with the
  vocabulary split over `tensor`) equal differentiating the full logits."""
  config = tiny.model_config("llama", "mlp")
  config.decoder.tie_embeddings = tied
  model = multimodal.Multimodal(config, rngs=nnx.Rngs(0))
  b = tiny.batch(config, b=4, l=32, docs=2)
  b["targets"] = np.roll(b["tokens"], -1, axis=1)
  b["loss_mask"] = (b["targets"] >= 8).astype(np.float32) * (1.0 + (b["targets"] % 3 == 0))
  b["kind_ids"] = np.full(b["tokens"].shape, 3, np.int8)
  b["kind_ids"][1] = 1
  graphdef, params = nnx.split(model, nnx.Param)
  mesh = None if mesh_axes is None else sharding.make_mesh(mesh_axes)

  @functools.partial(jax.jit, static_argnums=1)
  def loss(p, chunk):
    def objective(p):
      m = nnx.merge(graphdef, p)
      if chunk:
        _, aux = m(b, return_logits=False)
        terms = loss_lib.chunked_terms(aux["hidden"], m.decoder.head_weight(), b, 1e-3, chunk)
      else:
        terms = loss_lib.loss_terms(m(b)[0], b, 1e-3)
      return terms.pop("objective"), terms
    if mesh is None:
      return jax.value_and_grad(objective, has_aux=True)(p)
    with sharding.use_mesh(mesh, defaults.SHARDING_RULES):
      return jax.value_and_grad(objective, has_aux=True)(p)

  (full, t_full), g_full = loss(params, 0)
  (part, t_part), g_part = loss(params, 8)
  assert float(t_full["count/interleaved"]) > 0 and float(t_full["count/text"]) > 0
  np.testing.assert_allclose(part, full, rtol=1e-6)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6), t_part, t_full)
  # fp32 sums in another order: differences ~1e-7 of each array's largest entry (and
  # ~1e-11 on gradients that are zero up to rounding)
  close = lambda x, y: np.testing.assert_allclose(
      x, y, rtol=1e-4, atol=max(1e-6 * float(np.abs(y).max()), 1e-8))
  jax.tree.map(close, g_part, g_full)
  with pytest.raises(ValueError, match="loss_chunk=5 does not divide"):
    loss(params, 5)


def test_masked_target_outside_the_vocabulary_is_not_nan():
  logits = jnp.asarray(np.random.default_rng(0).normal(size=(1, 3, 5)), jnp.float32)
  batch = {"targets": jnp.asarray([[1, 64003, 2]]), "loss_mask": jnp.asarray([[1.0, 0.0, 1.0]])}
  terms = loss_lib.loss_terms(logits, batch, z_loss=1e-4)
  assert np.isfinite(float(terms["ce_sum"])) and float(terms["count"]) == 2.0
  kept = {"targets": jnp.asarray([[1, 0, 2]]), "loss_mask": batch["loss_mask"]}
  np.testing.assert_allclose(terms["ce_sum"], loss_lib.loss_terms(logits, kept, 1e-4)["ce_sum"])
  grads = jax.grad(lambda x: loss_lib.loss_terms(x, batch, 1e-4)["ce_sum"])(logits)
  assert np.isfinite(np.asarray(grads)).all()


def test_batch_without_text_targets_does_not_advance_the_optimizer(data_root):
  """No weight decay, no moment update, no schedule step; the metric says so."""
  config = train_fixture.config(data_root)
  config.optim.update(weight_decay=0.1, warmup_steps=0)
  b = _batch(config)
  b["loss_mask"] = np.zeros_like(b["loss_mask"])
  mesh = sharding.make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
  run = step_lib.setup(config, mesh)
  state = step_lib.init_state(config, run)
  before = jax.device_get(state)
  shapes = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in b.items()}
  after, metrics = step_lib.jit_train_step(config, run, mesh, shapes)(state, b)
  after = jax.device_get(after)
  assert float(metrics["no_text"]) == 1.0 and float(metrics["finite"]) == 1.0
  assert int(after.step) == int(before.step) == 0
  jax.tree.map(np.testing.assert_array_equal, after.params, before.params)
  jax.tree.map(np.testing.assert_array_equal, after.opt_state, before.opt_state)


def test_flops_count_the_trained_layers_of_a_stack(data_root):
  """flops: trained ViT layers counted from the stack's layer masks as from unrolled paths."""
  from kosmos.train import flops  # pylint: disable=g-import-not-at-top
  config = train_fixture.config(data_root)
  config.optim.frozen = (r"^vision\.(?!blocks\.1\.|post_norm)",)
  mesh = sharding.make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
  counts = []
  for model in (config.model, _scanned(config.model)):
    c = config.copy_and_resolve_references()
    c.model = model
    run = step_lib.setup(c, mesh)
    counts.append(flops.trainable_vision_layers(run.abstract_state.params, 2, run.layer_masks))
  assert counts == [1, 1]
