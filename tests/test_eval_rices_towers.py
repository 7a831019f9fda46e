"""RICES by a separate tower (`--rices-model`): a saved Hugging Face CLIP, or a kosmos
workdir's vision tower; features equal to computing them by hand, and the CLI wiring."""

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from kosmos.eval import rices_towers

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

MEAN = np.asarray([0.48145466, 0.4578275, 0.40821073], np.float32)  # CLIP's
STD = np.asarray([0.26862954, 0.26130258, 0.27577711], np.float32)


def _png(rng, size=(12, 20)) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(rng.integers(0, 256, size + (3,), dtype=np.uint8)).save(buf, "PNG")
  return buf.getvalue()


def _tiny_clip(directory):
  torch.manual_seed(0)
  config = transformers.CLIPConfig(
      text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                       num_attention_heads=2, vocab_size=99),
      vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, image_size=32, patch_size=8),
      projection_dim=8)
  model = transformers.CLIPModel(config).eval()
  model.save_pretrained(directory)
  return model


def _by_hand(model, encoded):
  """CLIP preprocessing written out: short side -> 32 bicubic, center crop, CLIP mean/std."""
  rows = []
  for b in encoded:
    im = Image.open(io.BytesIO(b)).convert("RGB")
    w, h = im.size
    scale = 32 / min(w, h)
    im = im.resize((round(w * scale), round(h * scale)), Image.BICUBIC)
    w, h = im.size
    left, top = (w - 32) // 2, (h - 32) // 2
    x = np.asarray(im.crop((left, top, left + 32, top + 32)), np.float32) / 255.0
    rows.append(((x - MEAN) / STD).transpose(2, 0, 1))
  with torch.no_grad():
    out = model.get_image_features(pixel_values=torch.tensor(np.stack(rows)))
  # transformers 4 returns the embeddings, 5 an output whose pooler_output holds them.
  return (out if isinstance(out, torch.Tensor) else out.pooler_output).numpy()


def test_hf_clip_features_equal_clip_by_hand(tmp_path):
  directory = str(tmp_path / "clip")
  model = _tiny_clip(directory)
  assert rices_towers.kind_of(directory) == "hf_clip"
  embed, name = rices_towers.load(directory)
  assert name == "hf_clip_clip"
  rng = np.random.default_rng(0)
  images = [_png(rng) for _ in range(3)]
  got = embed(images)
  assert got.shape == (3, 8) and got.dtype == np.float32
  np.testing.assert_allclose(got, _by_hand(model, images), atol=2e-3)
  # A vision-only export with projection gives the same features.
  vision_dir = str(tmp_path / "vision")
  vision_config = transformers.CLIPVisionConfig(**model.config.vision_config.to_dict())
  vision_config.projection_dim = model.config.projection_dim
  vision = transformers.CLIPVisionModelWithProjection(vision_config)
  vision.vision_model.load_state_dict(model.vision_model.state_dict())
  vision.visual_projection.load_state_dict(model.visual_projection.state_dict())
  vision.save_pretrained(vision_dir)
  embed_v, _ = rices_towers.load(vision_dir)
  np.testing.assert_allclose(embed_v(images), got, atol=1e-5)


def test_kind_of_names_what_it_found(tmp_path):
  with pytest.raises(ValueError, match="no config.json"):
    rices_towers.kind_of(str(tmp_path))
  with open(tmp_path / "config.json", "w") as f:
    json.dump({"model_type": "bert"}, f)
  with pytest.raises(ValueError, match="model_type 'bert' is not supported"):
    rices_towers.kind_of(str(tmp_path))
  with open(tmp_path / "config.json", "w") as f:
    json.dump({"model": {}}, f)
  with pytest.raises(ValueError, match="neither"):
    rices_towers.kind_of(str(tmp_path))


def test_workdir_tower_equals_the_models_own_rices_features(tmp_path):
  from flax import nnx  # pylint: disable=import-outside-toplevel
  import tiny  # pylint: disable=import-outside-toplevel
  from kosmos import defaults  # pylint: disable=import-outside-toplevel
  from kosmos import workdir as workdir_lib  # pylint: disable=import-outside-toplevel
  from kosmos.data import tokenizer as tokenizer_lib  # pylint: disable=import-outside-toplevel
  from kosmos.eval import runner  # pylint: disable=import-outside-toplevel
  from kosmos.infer import engine as engine_lib  # pylint: disable=import-outside-toplevel
  from kosmos.model import multimodal  # pylint: disable=import-outside-toplevel
  directory = str(tmp_path / "wd")
  config = defaults.base()
  config.model = tiny.model_config("magneto", "resampler", "xpos")
  config.model.decoder.update(vocab_size=tokenizer_lib.BYTE_VOCAB_SIZE)
  model = multimodal.Multimodal(config.model, rngs=nnx.Rngs(3))
  workdir_lib.save_config(config, directory)
  workdir_lib.save_params(directory, 5, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  assert rices_towers.kind_of(directory) == "workdir"
  embed, name = rices_towers.load(directory)
  assert name == "workdir_wd"
  rng = np.random.default_rng(1)
  images = [_png(rng) for _ in range(3)]
  own = runner.vision_embed_fn(engine_lib.Engine(model, config))
  np.testing.assert_allclose(embed(images), own(images), rtol=1e-5, atol=1e-6)


def test_cli_openflamingo_protocol_with_a_clip_rices_model(tmp_path):
  from flax import nnx  # pylint: disable=import-outside-toplevel
  import tiny  # pylint: disable=import-outside-toplevel
  from test_eval_protocols import _vqav2_files  # pylint: disable=import-outside-toplevel
  from kosmos import defaults  # pylint: disable=import-outside-toplevel
  from kosmos import workdir as workdir_lib  # pylint: disable=import-outside-toplevel
  from kosmos.data import tokenizer as tokenizer_lib  # pylint: disable=import-outside-toplevel
  from kosmos.eval import main as eval_main  # pylint: disable=import-outside-toplevel
  from kosmos.model import multimodal  # pylint: disable=import-outside-toplevel
  workdir = str(tmp_path / "wd")
  config = defaults.base()
  config.model = tiny.model_config("magneto", "resampler", "xpos")
  config.model.decoder.update(vocab_size=tokenizer_lib.BYTE_VOCAB_SIZE, max_len=512)
  model = multimodal.Multimodal(config.model, rngs=nnx.Rngs(0))
  workdir_lib.save_config(config, workdir)
  workdir_lib.save_params(workdir, 2, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  clip_dir = str(tmp_path / "clip")
  _tiny_clip(clip_dir)
  data = str(tmp_path / "vqa")
  _vqav2_files(data)
  out = str(tmp_path / "res.json")
  assert eval_main.main(["--workdir", workdir, "--task", "vqav2", "--data", data,
                         "--shots", "0,1", "--protocol", "openflamingo", "--rices-model",
                         clip_dir, "--vqa-tokens", "2", "--out", out, "--no-progress"]) == 0
  with open(out) as f:
    result = json.load(f)
  assert result["protocol"] == "openflamingo" and result["rices_embedder"] == "hf_clip_clip"
  assert result["metric_options"] == {"variant": "openflamingo"}
  assert (result["settings"]["vqa_beams"], result["settings"]["vqa_tokens"]) == (3, 2)
  assert result["settings"]["stop_strings"] == ["<|endofchunk|>"]
  assert result["template"]["prompt"] == "Question:{question} Short answer:"
  assert [r["demos"] for r in result["rows"]] == ["text_only_rices", "rices"]
  assert os.path.exists(os.path.join(workdir, "eval", "rices_cache", "vqav2.hf_clip_clip.npy"))
