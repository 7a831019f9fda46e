"""Hugging Face interop: tiny random Kosmos-2 / LLaVA / Llama models converted both ways.

Checks: logits equal to 1e-4 (fp32) on the same text and image inputs, in both directions
(HF-initialised -> kosmos, kosmos-initialised -> HF loaded by transformers with no custom
code); greedy generation identical to transformers' `generate` on Kosmos-2; export after
import reproduces every HF tensor bit for bit and import after export every kosmos param;
unsupported features are refused with a message naming them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch", reason="torch (CPU) is needed for the transformers parity tests")
transformers = pytest.importorskip("transformers", reason="transformers is needed for parity tests")

from kosmos import defaults  # noqa: E402
from kosmos import workdir  # noqa: E402
from kosmos.interop import hf_config  # noqa: E402
from kosmos.interop import hf_export  # noqa: E402
from kosmos.interop import hf_import  # noqa: E402
from kosmos.interop import mapping  # noqa: E402
from kosmos.interop import stream  # noqa: E402
from kosmos.model import multimodal  # noqa: E402

TOL = 1e-4
VOCAB, SIZE = 96, 16
LLAVA_IMAGE_ID = 95


def quiet(_: str) -> None:
  pass


# ----------------------------------------------------------------------------- helpers


def perturb_torch(model, seed: int = 0) -> None:
  """Random weights everywhere (norm scales/biases too), so every mapping is exercised."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for _, p in sorted(model.named_parameters()):
      p.add_(0.1 * torch.randn(p.shape, generator=gen))


def load_kosmos(directory: str) -> tuple[ml_collections.ConfigDict, multimodal.Multimodal]:
  config = workdir.load_config(directory)
  _, params = workdir.restore_params(directory)
  model = multimodal.Multimodal(config.model, rngs=nnx.Rngs(0))
  set_params(model, params)
  return config, model


def _int_keys(tree):
  if isinstance(tree, dict):
    return {(int(k) if isinstance(k, str) and k.isdigit() else k): _int_keys(v) for k, v in tree.items()}
  return tree


def set_params(model, params) -> None:
  state = nnx.state(model, nnx.Param)
  nnx.replace_by_pure_dict(state, _int_keys(params))
  nnx.update(model, state)


def kosmos_params(model) -> dict:
  return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def perturb_kosmos(model, seed: int = 1) -> None:
  params = kosmos_params(model)
  rng = np.random.default_rng(seed)
  params = jax.tree.map(lambda x: (x + 0.1 * rng.standard_normal(x.shape)).astype(x.dtype), params)
  set_params(model, params)


def save_kosmos(directory: str, config: ml_collections.ConfigDict, model) -> None:
  workdir.save_config(config, directory)
  workdir.save_params(directory, 0, kosmos_params(model))


def pixel_values(images_nhwc: np.ndarray, vision_config) -> "torch.Tensor":
  x = images_nhwc.astype(np.float32) / np.float32(255.0)
  x = (x - np.asarray(vision_config.pixel_mean, np.float32)) / np.asarray(vision_config.pixel_std, np.float32)
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def kosmos_logits(model, tokens, images=None, image_mask=None) -> np.ndarray:
  b, l = tokens.shape
  batch = dict(tokens=tokens, positions=np.tile(np.arange(l, dtype=np.int32), (b, 1)),
               segment_ids=np.ones((b, l), np.int32))
  if images is not None:
    batch.update(images=images, image_mask=image_mask)
  return np.array(_forward(model, batch))


@nnx.jit
def _forward(model, batch):
  return model(batch)[0]


def hf_tensors(directory: str) -> dict[str, np.ndarray]:
  reader = stream.SafetensorsReader(directory)
  return {k: reader.get(k) for k in reader.keys()}


def assert_same_tree(a, b) -> None:
  a, b = hf_export.leaves(_int_keys(a)), hf_export.leaves(_int_keys(b))
  assert sorted(map(str, a)) == sorted(map(str, b))
  for key in a:
    assert a[key].dtype == b[key].dtype, key
    np.testing.assert_array_equal(a[key], b[key], err_msg=str(key))


# ----------------------------------------------------------------------------- Kosmos-2


def kosmos2_hf_config():
  return transformers.Kosmos2Config(
      text_config=dict(vocab_size=VOCAB, embed_dim=32, layers=2, ffn_dim=64, attention_heads=4,
                       max_position_embeddings=64, dropout=0.0, attention_dropout=0.0),
      vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, image_size=SIZE, patch_size=8),
      latent_query_num=4)


def kosmos2_inputs(seed: int = 0, b: int = 2, l: int = 16, n: int = 4):
  """kosmos tokens (slots = image_slot_id), HF ids, HF position mask, images [b, 1, h, w, 3]."""
  rng = np.random.default_rng(seed)
  hf_ids = rng.integers(3, VOCAB, (b, l)).astype(np.int32)
  hf_ids[:, 0] = 0  # <s>
  mask = np.zeros((b, l), bool)
  mask[:, 2:2 + n] = True
  tokens = np.where(mask, VOCAB, hf_ids).astype(np.int32)  # kosmos slot id = vocab (never embedded)
  images = rng.integers(0, 256, (b, 1, SIZE, SIZE, 3)).astype(np.uint8)
  return tokens, hf_ids, mask, images


def kosmos2_hf_logits(model, hf_ids, mask, images, vision_config) -> np.ndarray:
  with torch.no_grad():
    out = model(pixel_values=pixel_values(images[:, 0], vision_config),
                input_ids=torch.from_numpy(hf_ids).long(),
                image_embeds_position_mask=torch.from_numpy(mask).long(),
                attention_mask=torch.ones(hf_ids.shape, dtype=torch.long))
  return out.logits.numpy()


@pytest.fixture(scope="module")
def kosmos2_dirs(tmp_path_factory):
  """An HF Kosmos-2 directory, its import, and the re-export of that import."""
  root = tmp_path_factory.mktemp("kosmos2")
  torch.manual_seed(0)
  model = transformers.Kosmos2ForConditionalGeneration(kosmos2_hf_config()).eval()
  perturb_torch(model)
  hf_dir, wd, back = str(root / "hf"), str(root / "wd"), str(root / "back")
  model.save_pretrained(hf_dir)
  hf_import.import_hf(hf_dir, wd, log=quiet)
  hf_export.export_hf(wd, back, log=quiet)
  return model, hf_dir, wd, back


def test_kosmos2_hf_to_kosmos_logits(kosmos2_dirs):
  hf_model, _, wd, _ = kosmos2_dirs
  config, model = load_kosmos(wd)
  assert config.model.decoder.positions == "sinusoidal" and config.model.decoder.position_offset == 2
  assert config.model.image_slot_id == VOCAB
  tokens, hf_ids, mask, images = kosmos2_inputs()
  ours = kosmos_logits(model, tokens, images, np.ones((2, 1), bool))
  theirs = kosmos2_hf_logits(hf_model, hf_ids, mask, images, config.model.vision)
  assert ours.shape == theirs.shape == (2, 16, VOCAB)
  np.testing.assert_allclose(ours, theirs, atol=TOL, rtol=0)
  # the image matters: another image changes the logits after the image span
  other = kosmos_logits(model, tokens, 255 - images, np.ones((2, 1), bool))
  assert np.abs(other[:, 6:] - ours[:, 6:]).max() > 1e-3


def test_kosmos2_export_after_import_is_bit_exact(kosmos2_dirs):
  _, hf_dir, wd, back = kosmos2_dirs
  original, again = hf_tensors(hf_dir), hf_tensors(back)
  assert sorted(original) == sorted(again)
  for name in original:
    np.testing.assert_array_equal(original[name], again[name], err_msg=name)
  # and the exported config loads with no custom code, the same as the original's
  loaded = transformers.AutoConfig.from_pretrained(back)
  assert type(loaded).__name__ == "Kosmos2Config"
  assert loaded.text_config.pad_token_id == 1 and loaded.latent_query_num == 4


def test_kosmos2_kosmos_to_hf_logits_and_reimport(kosmos2_dirs, tmp_path):
  _, _, wd, _ = kosmos2_dirs
  config = workdir.load_config(wd)
  model = multimodal.Multimodal(config.model, rngs=nnx.Rngs(3))  # kosmos-initialised
  perturb_kosmos(model)
  src, out, wd2 = str(tmp_path / "src"), str(tmp_path / "hf"), str(tmp_path / "wd2")
  save_kosmos(src, config, model)
  hf_export.export_hf(src, out, log=quiet)
  hf_model = transformers.Kosmos2ForConditionalGeneration.from_pretrained(out).eval()
  tokens, hf_ids, mask, images = kosmos2_inputs(seed=5)
  ours = kosmos_logits(model, tokens, images, np.ones((2, 1), bool))
  theirs = kosmos2_hf_logits(hf_model, hf_ids, mask, images, config.model.vision)
  np.testing.assert_allclose(ours, theirs, atol=TOL, rtol=0)
  hf_import.import_hf(out, wd2, log=quiet)
  _, restored = workdir.restore_params(wd2)
  assert_same_tree(restored, kosmos_params(model))


def greedy(model, tokens: np.ndarray, images, image_mask, steps: int, eos: int, banned: int):
  """Greedy decoding by repeated full forwards (no KV cache): the reference loop.

  The row is laid out at its final length once (one compile): causal attention makes the
  not-yet-generated tail invisible to the position being predicted.
  """
  b, l = tokens.shape
  out = np.concatenate([tokens, np.full((b, steps), 3, np.int32)], axis=1)
  for t in range(l, l + steps):
    logits = kosmos_logits(model, out, images, image_mask)[:, t - 1]
    logits[:, banned] = -np.inf
    out[:, t] = logits.argmax(-1)
    if (out[:, t] == eos).all():
      return out[:, :t + 1]
  return out


def test_kosmos2_greedy_generation_matches_transformers(kosmos2_dirs):
  hf_model, _, wd, _ = kosmos2_dirs
  config, model = load_kosmos(wd)
  tokens, hf_ids, mask, images = kosmos2_inputs(seed=7, b=1, l=10)
  steps = 12
  # pad (1) is suppressed on both sides: HF gives a generated pad token the pad position.
  ours = greedy(model, tokens, images, np.ones((1, 1), bool), steps, eos=2, banned=1)
  with torch.no_grad():
    theirs = hf_model.generate(
        pixel_values=pixel_values(images[:, 0], config.model.vision),
        input_ids=torch.from_numpy(hf_ids).long(),
        attention_mask=torch.ones(hf_ids.shape, dtype=torch.long),
        image_embeds_position_mask=torch.from_numpy(mask).long(),
        max_new_tokens=steps, do_sample=False, num_beams=1, suppress_tokens=[1], use_cache=True)
  theirs = theirs.numpy()
  generated = theirs[:, -(theirs.shape[1] - hf_ids.shape[1]):] if theirs.shape[1] > hf_ids.shape[1] else theirs
  assert ours.shape[1] - tokens.shape[1] == generated.shape[1] > 0
  np.testing.assert_array_equal(ours[:, tokens.shape[1]:], generated)


# ----------------------------------------------------------------------------- LLaVA


def llava_hf_config(strategy: str = "default", act: str = "gelu"):
  return transformers.LlavaConfig(
      vision_config=transformers.CLIPVisionConfig(
          hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
          image_size=SIZE, patch_size=8),
      text_config=transformers.LlamaConfig(
          vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
          num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5),
      image_token_index=LLAVA_IMAGE_ID, image_seq_length=4, projector_hidden_act=act,
      vision_feature_select_strategy=strategy, vision_feature_layer=-2)


def llava_inputs(n: int, seed: int = 0, b: int = 2, m: int = 2, l: int = 24):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(3, LLAVA_IMAGE_ID, (b, l)).astype(np.int32)
  tokens[:, 0] = 1
  for k in range(m):
    tokens[:, 2 + k * (n + 2): 2 + k * (n + 2) + n] = LLAVA_IMAGE_ID
  images = rng.integers(0, 256, (b, m, SIZE, SIZE, 3)).astype(np.uint8)
  return tokens, images


def llava_hf_logits(model, tokens, images, vision_config) -> np.ndarray:
  b, m = images.shape[:2]
  with torch.no_grad():
    out = model(input_ids=torch.from_numpy(tokens).long(),
                pixel_values=pixel_values(images.reshape((b * m,) + images.shape[2:]), vision_config),
                attention_mask=torch.ones(tokens.shape, dtype=torch.long))
  return out.logits.numpy()


@pytest.mark.parametrize("strategy", ["default", "full"])
def test_llava_both_ways(tmp_path, strategy):
  torch.manual_seed(1)
  hf_model = transformers.LlavaForConditionalGeneration(llava_hf_config(strategy)).eval()
  perturb_torch(hf_model, seed=2)
  hf_dir, wd, back = str(tmp_path / "hf"), str(tmp_path / "wd"), str(tmp_path / "back")
  hf_model.save_pretrained(hf_dir)
  hf_import.import_hf(hf_dir, wd, log=quiet)
  config, model = load_kosmos(wd)
  n = multimodal.tokens_per_image(config.model)
  assert n == (4 if strategy == "default" else 5)
  assert config.model.connector.kind == "mlp" and config.model.image_slot_id == LLAVA_IMAGE_ID
  tokens, images = llava_inputs(n)
  ours = kosmos_logits(model, tokens, images, np.ones(images.shape[:2], bool))
  theirs = llava_hf_logits(hf_model, tokens, images, config.model.vision)
  np.testing.assert_allclose(ours, theirs, atol=TOL, rtol=0)
  # kosmos -> HF: the re-export loads in transformers and reproduces every tensor
  hf_export.export_hf(wd, back, log=quiet)
  # transformers 5 saves `vision_tower.embeddings.*`; kosmos writes the spelling that 4.x
  # and 5.x both load, `vision_tower.vision_model.embeddings.*`.
  original = {mapping.canonical_name(k, mapping.LLAVA): v for k, v in hf_tensors(hf_dir).items()}
  again = hf_tensors(back)
  assert sorted(original) == sorted(again)
  for name in original:
    np.testing.assert_array_equal(original[name], again[name], err_msg=name)
  reloaded = transformers.LlavaForConditionalGeneration.from_pretrained(back).eval()
  np.testing.assert_allclose(llava_hf_logits(reloaded, tokens, images, config.model.vision), ours,
                             atol=TOL, rtol=0)


def test_llava_linear_connector_kosmos_to_hf(tmp_path):
  """kosmos `linear` exports as LLaVA with an identity linear_2 and imports back as linear."""
  torch.manual_seed(1)
  hf_dir = str(tmp_path / "hf")
  transformers.LlavaForConditionalGeneration(llava_hf_config()).save_pretrained(hf_dir)
  _, inferred = hf_config.from_hf_json(json.load(open(os.path.join(hf_dir, "config.json"))))
  # LLaVA prompts hold an image as its slots alone: no <image> / </image> tokens around them
  assert (inferred.tokenizer.image_start_id, inferred.tokenizer.image_end_id) == (-1, -1)
  assert inferred.tokenizer.image_slot_id == inferred.model.image_slot_id
  inferred.model.connector.kind = "linear"
  model = multimodal.Multimodal(inferred.model, rngs=nnx.Rngs(4))
  perturb_kosmos(model, seed=4)
  src, out, wd = str(tmp_path / "src"), str(tmp_path / "out"), str(tmp_path / "wd")
  save_kosmos(src, inferred, model)
  hf_export.export_hf(src, out, log=quiet)
  hf_json = json.load(open(os.path.join(out, "config.json")))
  assert hf_json["projector_hidden_act"] == "linear"
  hf_model = transformers.LlavaForConditionalGeneration.from_pretrained(out).eval()
  tokens, images = llava_inputs(4, seed=3)
  ours = kosmos_logits(model, tokens, images, np.ones(images.shape[:2], bool))
  np.testing.assert_allclose(llava_hf_logits(hf_model, tokens, images, inferred.model.vision), ours,
                             atol=TOL, rtol=0)
  hf_import.import_hf(out, wd, log=quiet)
  assert workdir.load_config(wd).model.connector.kind == "linear"
  assert_same_tree(workdir.restore_params(wd)[1], kosmos_params(model))


# ----------------------------------------------------------------------------- Llama


def tiny_vision_config(base: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A full kosmos config whose decoder is `base`'s and whose vision/connector are tiny."""
  from kosmos.model import connector, vision  # pylint: disable=g-import-not-at-top
  v = vision.default_config("Ti/8", image_size=SIZE)
  v.update(width=32, depth=2, num_heads=2, mlp_dim=64, feature_layer=-2, feature_select="patch",
           post_norm=False)
  config = defaults.base()
  config.tokenizer = base.tokenizer
  config.model = multimodal.default_config(vision=v, connector=connector.default_config("mlp"),
                                           decoder=base.model.decoder)
  config.model.image_slot_id = LLAVA_IMAGE_ID
  return config


def test_llama_text_only_both_ways(tmp_path):
  torch.manual_seed(2)
  text = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                  rope_theta=500.0)
  hf_model = transformers.LlamaForCausalLM(text).eval()
  perturb_torch(hf_model, seed=3)
  hf_dir, wd, back = str(tmp_path / "hf"), str(tmp_path / "wd"), str(tmp_path / "back")
  hf_model.save_pretrained(hf_dir)
  with pytest.raises(hf_config.Unsupported, match="LlamaForCausalLM has no vision tower"):
    hf_import.import_hf(hf_dir, wd, log=quiet)
  _, inferred = hf_config.from_hf_json(json.load(open(os.path.join(hf_dir, "config.json"))))
  assert inferred.model.decoder.rope_theta == 500.0
  hf_import.import_hf(hf_dir, wd, config=tiny_vision_config(inferred), log=quiet)
  _, model = load_kosmos(wd)
  tokens = np.random.default_rng(0).integers(0, VOCAB, (2, 20)).astype(np.int32)
  with torch.no_grad():
    theirs = hf_model(input_ids=torch.from_numpy(tokens).long()).logits.numpy()
  np.testing.assert_allclose(kosmos_logits(model, tokens), theirs, atol=TOL, rtol=0)
  hf_export.export_hf(wd, back, text_only=True, log=quiet)
  original, again = hf_tensors(hf_dir), hf_tensors(back)
  assert sorted(original) == sorted(again)
  for name in original:
    np.testing.assert_array_equal(original[name], again[name], err_msg=name)
  assert type(transformers.AutoModelForCausalLM.from_pretrained(back)).__name__ == "LlamaForCausalLM"


# ----------------------------------------------------------------------------- refusals


def _tiny(family, connector_kind, positions=None, variant="clip", vector_dim=0):
  import tiny  # pylint: disable=g-import-not-at-top
  config = defaults.base()
  config.model = tiny.model_config(family, connector_kind, positions=positions,
                                   vision_variant=variant, vector_dim=vector_dim)
  return config


@pytest.mark.parametrize("case, message", [
    (("magneto", "attention_pool", "xpos"),
     "decoder.positions='xpos' has no transformers equivalent (Kosmos-2 uses sinusoidal)"),
    (("magneto", "resampler", "sinusoidal"), "connector.kind='resampler' has no transformers"),
    (("magneto", "attention_pool", "sinusoidal", "siglip"), "vision.variant='siglip' inside Kosmos-2"),
    (("llama", "attention_pool", "rope"), "connector.kind='attention_pool' has no transformers"),
    (("llama", "mlp", "rope", "clip", 3), "model.vector_dim=3 (PaLM-E state vectors"),
    (("llama", "mlp", "xpos"), "decoder.positions='xpos' has no transformers equivalent"),
])
def test_unsupported_features_are_refused_by_name(tmp_path, case, message):
  config = _tiny(*case)
  workdir.save_config(config, str(tmp_path / "wd"))
  with pytest.raises(hf_config.Unsupported) as info:
    hf_export.export_hf(str(tmp_path / "wd"), str(tmp_path / "out"), log=quiet)
  assert message in str(info.value)
  assert not os.path.exists(tmp_path / "out")


def test_cli_refusal_exit_code_and_message(tmp_path):
  workdir.save_config(_tiny("magneto", "attention_pool", "xpos"), str(tmp_path / "wd"))
  proc = subprocess.run(
      [sys.executable, "-m", "kosmos.interop.main", "export", "--workdir", str(tmp_path / "wd"),
       "--format", "hf", "--out", str(tmp_path / "out")],
      capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)), timeout=120)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "decoder.positions='xpos' has no transformers equivalent" in proc.stderr


# ----------------------------------------------------------------------------- PaLM-E start


@pytest.mark.parametrize("variant", ["clip", "siglip"])
def test_palme_import_lm_and_vision(tmp_path, variant):
  torch.manual_seed(5)
  lm = transformers.LlamaForCausalLM(transformers.LlamaConfig(
      vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2)).eval()
  kw = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            image_size=SIZE, patch_size=8)
  if variant == "clip":
    vis = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**kw)).eval()
  else:
    vis = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**kw)).eval()
  perturb_torch(lm, 6)
  perturb_torch(vis, 7)
  lm_dir, vis_dir, wd = str(tmp_path / "lm"), str(tmp_path / "vis"), str(tmp_path / "wd")
  lm.save_pretrained(lm_dir)
  vis.save_pretrained(vis_dir)
  hf_import.import_palme(lm_dir, vis_dir, wd, connector="resampler", num_tokens=8, log=quiet)
  config, model = load_kosmos(wd)
  assert config.model.connector.kind == "resampler" and config.model.vision.variant == variant
  assert multimodal.tokens_per_image(config.model) == 8
  assert (config.tokenizer.image_start_id, config.tokenizer.image_end_id) == (-1, -1)
  images = np.random.default_rng(0).integers(0, 256, (2, SIZE, SIZE, 3)).astype(np.uint8)
  ours = np.asarray(model.vision(images)[0])
  with torch.no_grad():
    out = vis(pixel_values=pixel_values(images, config.model.vision), output_hidden_states=True)
  theirs = (out.hidden_states[-2][:, 1:] if variant == "clip" else out.last_hidden_state).numpy()
  np.testing.assert_allclose(ours, theirs, atol=TOL, rtol=0)
  tokens = np.random.default_rng(1).integers(0, VOCAB, (2, 12)).astype(np.int32)
  with torch.no_grad():
    lm_logits = lm(input_ids=torch.from_numpy(tokens).long()).logits.numpy()
  np.testing.assert_allclose(kosmos_logits(model, tokens), lm_logits, atol=TOL, rtol=0)
  # the slot id lies past Llama's vocabulary, so LLaVA export is refused by name
  with pytest.raises(hf_config.Unsupported, match="connector.kind='resampler'"):
    hf_export.export_hf(wd, str(tmp_path / "x"), log=quiet)
