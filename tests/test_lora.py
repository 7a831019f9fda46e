"""LoRA adapters: a no-op when fresh, only adapters train, folding and export are exact."""

import json
import os

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx

import tiny
import train_fixture
from kosmos import defaults, sharding, workdir
from kosmos.model import lora, multimodal
from kosmos.train import freeze
from kosmos.train import step as step_lib

ADAPTERS_ONLY = (r"\.lora_[ab]$",)


def _lora_config(family="magneto", targets=("q_proj", "v_proj"), rank=4):
  config = tiny.model_config(family=family)
  config.decoder.lora.update(rank=rank, alpha=8.0, targets=targets)
  return config


def _params(model) -> dict:
  return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def _set(model, params) -> None:
  state = nnx.state(model, nnx.Param)
  nnx.replace_by_pure_dict(state, params)
  nnx.update(model, state)


def _logits(model, batch) -> np.ndarray:
  return np.asarray(nnx.jit(lambda m, b: m(b)[0])(model, batch))


def _paths(tree) -> list[str]:
  return sorted(freeze.path_string(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0])


def _with_adapters(params, seed=0) -> dict:
  """Random values for every adapter (B is zero when fresh), the rest unchanged."""
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map_with_path(
      lambda p, x: (0.3 * rng.standard_normal(x.shape)).astype(x.dtype)
      if lora.is_adapter([getattr(k, "key", k) for k in p]) else x, params)


@pytest.mark.parametrize("family, targets", [
    ("magneto", ("q_proj", "v_proj", "fc2")),
    ("llama", ("k_proj", "o_proj", "gate_proj", "down_proj")),
])
def test_adapters_sit_next_to_their_kernels_and_start_as_a_no_op(family, targets):
  plain = multimodal.Multimodal(tiny.model_config(family=family), rngs=nnx.Rngs(0))
  adapted = multimodal.Multimodal(_lora_config(family, targets), rngs=nnx.Rngs(0))
  base, full = _params(plain), _params(adapted)
  extra = sorted(set(_paths(full)) - set(_paths(base)))
  kinds = {"q_proj": "attn", "k_proj": "attn", "v_proj": "attn", "o_proj": "attn"}
  assert extra == sorted(f"decoder.blocks.{i}.{kinds.get(t, 'mlp')}.{t}.{a}"
                         for i in range(2) for t in targets for a in lora.ADAPTERS)
  assert set(_paths(base)) <= set(_paths(full))  # base names unchanged: imports/init_from work
  block = full["decoder"]["blocks"][0]
  for t in targets:
    layer = block[kinds.get(t, "mlp")][t]
    din, dout = layer["kernel"].shape
    assert layer["lora_a"].shape == (din, 4) and layer["lora_b"].shape == (4, dout)
    assert not layer["lora_b"].any() and layer["lora_a"].std() > 0
  # Same base weights + fresh adapters (B = 0) -> the same logits (to XLA's fusion order).
  _set(adapted, _overlay(full, base))
  batch = tiny.batch(tiny.model_config(family=family))
  np.testing.assert_allclose(_logits(adapted, batch), _logits(plain, batch), atol=1e-6, rtol=0)


def _overlay(tree: dict, over: dict) -> dict:
  """`tree` with every leaf that `over` also has taken from `over`."""
  return {k: _overlay(v, over[k]) if isinstance(v, dict) else over.get(k, v) for k, v in tree.items()}


def test_fold_gives_the_plain_model_with_the_same_logits():
  config = _lora_config("llama", ("q_proj", "v_proj", "up_proj"))
  adapted = multimodal.Multimodal(config, rngs=nnx.Rngs(1))
  _set(adapted, _with_adapters(_params(adapted)))
  folded = lora.fold(_params(adapted), lora.spec_of(config.decoder).scale)
  plain_config = ml_collections.ConfigDict(config.to_dict())
  plain_config.decoder.lora.rank = 0
  plain = multimodal.Multimodal(plain_config, rngs=nnx.Rngs(2))
  assert _paths(folded) == _paths(_params(plain))
  _set(plain, folded)
  batch = tiny.batch(config)
  np.testing.assert_allclose(_logits(plain, batch), _logits(adapted, batch), atol=2e-5, rtol=0)


def test_adapters_shard_like_their_kernels():
  config = _lora_config()
  mesh = sharding.make_mesh(dict(data=2, fsdp=2, tensor=2))
  abstract = nnx.eval_shape(lambda: multimodal.Multimodal(config, rngs=nnx.Rngs(0)))
  specs = nnx.to_pure_dict(sharding.param_shardings(nnx.state(abstract, nnx.Param), mesh,
                                                    defaults.base().sharding_rules))
  q = specs["decoder"]["blocks"][0]["attn"]["q_proj"]
  kernel = q["kernel"].spec
  assert q["lora_a"].spec == jax.sharding.PartitionSpec(kernel[0], None)
  assert q["lora_b"].spec == jax.sharding.PartitionSpec(None, kernel[1])


@pytest.mark.parametrize("targets, message", [
    (("q_proj", "gate_proj"), "gate_proj"),  # llama's name on a magneto block
    ((), "empty"),
])
def test_bad_targets_are_named(targets, message):
  with pytest.raises(ValueError, match=message) as info:
    multimodal.check_config(_lora_config("magneto", targets))
  assert "fc1" in str(info.value)  # the valid names are listed


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("records"))
  train_fixture.write_records(root)
  return root


def test_only_adapters_train(data_root):
  """mPLUG-Owl stage 2: trainable = adapters only; every other param stays bit-identical."""
  config = train_fixture.config(data_root)
  config.model.decoder.lora.update(rank=4, alpha=8.0, targets=("q_proj", "v_proj", "fc1"))
  config.optim.update(trainable=ADAPTERS_ONLY, peak_lr=1e-2, warmup_steps=0)
  mesh = sharding.make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
  run = step_lib.setup(config, mesh)
  state = step_lib.init_state(config, run)
  assert all(p.endswith((".lora_a", ".lora_b")) for p in _paths(state.params))
  assert len(_paths(state.params)) == 2 * 3 * 2  # 2 layers x 3 projections x (A, B)
  sizes = lambda tree: sum(x.size for x in jax.tree.leaves(tree) if x.ndim)
  assert sizes(state.opt_state) == 2 * sizes(state.params)  # Adam moments of the adapters only
  before = jax.device_get(state)
  b = tiny.batch(config.model, b=8, l=32, seed=3)
  b["targets"] = np.roll(b["tokens"], -1, axis=1)
  b["loss_mask"] = (b["targets"] >= 8).astype(np.float32)
  b["kind_ids"] = np.full(b["tokens"].shape, 2, np.int8)
  shapes = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in b.items()}
  train_step = step_lib.jit_train_step(config, run, mesh, shapes)
  losses = []
  for _ in range(6):
    state, metrics = train_step(state, b)
    losses.append(float(metrics["loss"]))
  after = jax.device_get(state)
  assert losses[-1] < losses[0] - 0.05, losses
  jax.tree.map(np.testing.assert_array_equal, after.frozen, before.frozen)
  q = after.params["decoder"]["blocks"][0]["attn"]["q_proj"]
  assert np.abs(q["lora_b"]).max() > 0  # B moved off zero


def test_default_trainable_still_freezes_the_adapted_kernels(data_root):
  config = train_fixture.config(data_root)
  config.model.decoder.lora.update(rank=2, targets=("q_proj",))
  run = step_lib.setup(config, sharding.make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1]))
  trained, frozen = _paths(run.abstract_state.params), _paths(run.abstract_state.frozen)
  assert "decoder.blocks.0.attn.q_proj.kernel" in frozen
  assert "decoder.blocks.0.attn.q_proj.bias" in frozen
  assert "decoder.blocks.0.attn.q_proj.lora_a" in trained
  assert "decoder.blocks.0.attn.k_proj.kernel" in trained  # not adapted: trains as configured


def test_exports_fold_the_adapters(tmp_path):
  """HF export of a LoRA Llama equals the adapted model in transformers; params export is a
  plain model with the same logits."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from kosmos.interop import hf_export, params_export  # pylint: disable=g-import-not-at-top
  config = defaults.base()
  config.model = _lora_config("llama", ("q_proj", "o_proj", "down_proj"))
  config.model.decoder.update(vocab_size=96, tie_embeddings=False)
  model = multimodal.Multimodal(config.model, rngs=nnx.Rngs(3))
  _set(model, _with_adapters(_params(model), seed=4))
  src, hf_dir, plain_dir = (str(tmp_path / n) for n in ("src", "hf", "plain"))
  workdir.save_config(config, src)
  workdir.save_params(src, 7, _params(model))
  tokens = np.random.default_rng(0).integers(8, 96, (2, 20)).astype(np.int32)
  batch = dict(tokens=tokens, positions=np.tile(np.arange(20, dtype=np.int32), (2, 1)),
               segment_ids=np.ones((2, 20), np.int32))
  ours = _logits(model, batch)

  hf_export.export_hf(src, hf_dir, text_only=True, log=lambda _: None)
  with open(os.path.join(hf_dir, "config.json")) as f:
    assert "lora" not in json.dumps(json.load(f))
  hf_model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
  with torch.no_grad():
    theirs = hf_model(input_ids=torch.from_numpy(tokens).long()).logits.numpy()
  np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=0)

  params_export.export_params(src, plain_dir, log=lambda _: None)
  plain_config = workdir.load_config(plain_dir)
  assert plain_config.model.decoder.lora.rank == 0
  _, params = workdir.restore_params(plain_dir)
  plain = multimodal.Multimodal(plain_config.model, rngs=nnx.Rngs(0))
  _set(plain, _int_keys(params))
  np.testing.assert_allclose(_logits(plain, batch), ours, atol=2e-5, rtol=0)


def _int_keys(tree):
  if isinstance(tree, dict):
    return {(int(k) if isinstance(k, str) and k.isdigit() else k): _int_keys(v) for k, v in tree.items()}
  return tree
