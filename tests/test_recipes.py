"""configs/recipes/: each stitched-route system loads, passes the model checks, trains exactly
the parts ARCHITECTURE.md's recipe table says, and has its public LM size.

Only abstract work: `step.setup` on a 1-device mesh (eval_shape, nothing allocated). The
trained/frozen split is checked on the real files with 2 decoder layers and 3 ViT blocks
(the regexes do not depend on depth); parameter counts use the full-size decoder.
"""

import functools
import json

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx

from kosmos import configs, sharding
from kosmos.data import chat
from kosmos.interop import hf_config, mapping
from kosmos.model import decoder, lora, multimodal
from kosmos.train import freeze, step

LAYERS, VISION_DEPTH = 2, 3
LLAMA_7B = 6_738_415_616  # Llama-2-7b-hf / LLaMA-7B / Vicuna-7B: "6.74B"
D, RANK = 4096, 8

# spec -> (trained top-level parts, peak lr, steps, global batch rows, tokens per image)
TABLE = {
    "llava.py:stage1": ({"connector"}, 1e-3, 2181, 256, 576),
    "llava.py:stage2": ({"connector", "decoder"}, 2e-5, 5198, 128, 576),
    "minigpt4.py:stage1": ({"connector"}, 1e-4, 20_000, 256, 32),
    "minigpt4.py:stage2": ({"connector"}, 3e-5, 400, 12, 32),
    "blip2.py": ({"connector"}, 1e-4, 80_000, 1920, 32),
    "mplug_owl.py:stage1": ({"vision", "connector"}, 1e-4, 50_000, 1024, 64),
    "mplug_owl.py:stage2": ({"decoder"}, 2e-5, 2000, 256, 64),
    "seechat.py:stage1": ({"connector"}, 2e-3, 179_688, 128, 256),
    "seechat.py:stage2": ({"connector", "decoder"}, 2e-5, 14_813, 32, 256),
}


def _load(spec: str) -> ml_collections.ConfigDict:
  return configs.load(f"configs/recipes/{spec}")


def _paths(tree) -> dict[str, tuple[int, ...]]:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {freeze.path_string(p): tuple(x.shape) for p, x in leaves}


@functools.lru_cache(maxsize=None)
def _split(spec: str) -> tuple[dict, dict]:
  """(trained, frozen) param paths -> shapes of the recipe, shrunk in depth only."""
  config = _load(spec)
  config.model.decoder.num_layers = LAYERS
  config.model.vision.depth = VISION_DEPTH
  # Per-layer paths (the regexes are evaluated per layer on scanned stacks too:
  # tests/test_scan.py), so the split reads as layers here.
  config.model.decoder.scan_layers = config.model.vision.scan_layers = False
  mesh = sharding.make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
  run = step.setup(config, mesh)
  return _paths(run.abstract_state.params), _paths(run.abstract_state.frozen)


@functools.lru_cache(maxsize=None)
def _decoder_params(decoder_json: str) -> dict[str, tuple[int, ...]]:
  d = ml_collections.ConfigDict(json.loads(decoder_json))
  model = nnx.eval_shape(lambda: decoder.Decoder(d, rngs=nnx.Rngs(0)))
  return _paths(nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def _part(paths, part: str) -> set[str]:
  return {p for p in paths if p.split(".")[0] == part}


@pytest.mark.parametrize("spec", sorted(TABLE))
def test_recipe_loads_checks_and_matches_the_paper(spec):
  _, lr, steps, batch, tokens = TABLE[spec]
  config = _load(spec)
  multimodal.check_config(config.model)
  assert (config.optim.peak_lr, config.train.steps, config.data.global_batch_size) == (lr, steps, batch)
  assert multimodal.tokens_per_image(config.model) == tokens
  # An image span, <s> <image> </image> </s> fit a row (the pipeline's check); slots are
  # one past the Llama vocabulary.
  assert tokens + 4 <= config.data.seq_len
  assert config.model.image_slot_id == config.tokenizer.image_slot_id == 32000
  assert all(s.path.startswith("gs://BUCKET/records/") for s in config.data.sources.values())
  assert config.train.init_from == "" and config.tokenizer.path == ""


@pytest.mark.parametrize("spec", sorted(TABLE))
def test_recipe_trains_exactly_its_tables_parts(spec):
  trained, frozen = _split(spec)
  parts = TABLE[spec][0]
  assert {p.split(".")[0] for p in trained} == parts
  assert not set(trained) & set(frozen)
  # Each part that trains, trains whole -- except MiniGPT-4's projection and mPLUG-Owl's LoRA.
  name = spec.split(".py")[0]
  if name not in ("minigpt4", "mplug_owl") or spec == "mplug_owl.py:stage1":
    for part in parts:
      assert not _part(frozen, part), (part, sorted(_part(frozen, part))[:3])
    assert {p.split(".")[0] for p in frozen} == {"vision", "connector", "decoder"} - parts


def test_minigpt4_trains_only_the_linear_projection():
  for spec in ("minigpt4.py:stage1", "minigpt4.py:stage2"):
    trained, frozen = _split(spec)
    assert trained == {"connector.out_proj.kernel": (768, D), "connector.out_proj.bias": (D,)}
    # The "Q-Former" (resampler: latents, input dense, 12 layers, norm) is there, frozen.
    assert {"connector.latents", "connector.dense.kernel", "connector.norm.scale",
            "connector.layers.11.attn.q_proj.kernel"} <= set(frozen)
    assert frozen["connector.latents"] == (32, 768)
  # Stage 1 starts from a BLIP-2 run with the same model, but with a fresh projection.
  stage1, blip2 = _load("minigpt4.py:stage1"), _load("blip2.py")
  assert stage1.model.to_dict() == blip2.model.to_dict()
  loads = freeze.Trainable(tuple(stage1.train.init_patterns))
  assert not loads.matches("connector.out_proj.kernel")
  assert all(loads.matches(p) for p in ("connector.latents", "connector.layers.0.mlp.fc1.kernel",
                                        "vision.blocks.0.attn.q_proj.kernel",
                                        "decoder.blocks.0.attn.q_proj.kernel"))
  assert tuple(_load("minigpt4.py:stage2").train.init_patterns) == (".*",)


def test_mplug_owl_stage2_trains_only_lora_on_q_and_v():
  trained, frozen = _split("mplug_owl.py:stage2")
  expected = {}
  for i in range(LAYERS):
    for proj in ("q_proj", "v_proj"):
      expected[f"decoder.blocks.{i}.attn.{proj}.lora_a"] = (D, RANK)
      expected[f"decoder.blocks.{i}.attn.{proj}.lora_b"] = (RANK, D)
  assert trained == expected
  assert "decoder.blocks.0.attn.q_proj.kernel" in frozen
  assert "decoder.blocks.0.attn.k_proj.lora_a" not in frozen  # k, o are not adapted
  lora_config = _load("mplug_owl.py:stage2").model.decoder.lora
  assert (lora_config.rank, lora_config.alpha, tuple(lora_config.targets)) == (8, 32.0, ("q_proj", "v_proj"))
  # Stage 1 trains the ViT and the abstractor (64 queries at width 1024) over a frozen LM.
  trained1, _ = _split("mplug_owl.py:stage1")
  assert trained1["connector.latents"] == (64, 1024)
  assert trained1["connector.out_proj.kernel"] == (1024, D)


@pytest.mark.parametrize("spec", sorted(TABLE))
def test_decoder_has_the_public_7b_size(spec):
  d = _load(spec).model.decoder
  params = _decoder_params(d.to_json())
  base = sum(int(np.prod(s)) for p, s in params.items() if not p.endswith(lora.ADAPTERS))
  assert abs(base - 6.74e9) <= 0.03 * 6.74e9
  assert base == LLAMA_7B
  adapters = sum(int(np.prod(s)) for p, s in params.items() if p.endswith(lora.ADAPTERS))
  assert adapters == (32 * 2 * 2 * D * RANK if d.lora.rank else 0)


# Public transformers config.json fields of the LMs and ViTs the docstrings import.
_LLAMA2 = dict(model_type="llama", hidden_size=D, intermediate_size=11008, num_attention_heads=32,
               num_hidden_layers=32, num_key_value_heads=32, vocab_size=32000,
               max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False)
_LLAMA1 = dict(_LLAMA2, max_position_embeddings=2048, rms_norm_eps=1e-6)
_CLIP_L14 = dict(model_type="clip_vision_model", hidden_size=1024, intermediate_size=4096,
                 num_attention_heads=16, num_hidden_layers=24, patch_size=14, image_size=224)
IMPORTS = {  # spec -> (--lm, --vision): vicuna-7b-v1.5 / llama-7b / vicuna-7b-v1.1 / a Llama-2 chat
    "llava.py:stage1": (_LLAMA2, dict(_CLIP_L14, image_size=336)),
    "blip2.py": (_LLAMA1, _CLIP_L14),
    "mplug_owl.py:stage1": (_LLAMA1, _CLIP_L14),
    "seechat.py:stage1": (_LLAMA2, _CLIP_L14),
}


@pytest.mark.parametrize("spec", sorted(IMPORTS))
def test_kosmos_import_accepts_the_recipe(spec):
  """The checks `kosmos-import --lm --vision --config` runs before reading any tensor."""
  config = _load(spec)
  lm, vision = IMPORTS[spec]
  arch, inferred = hf_config.from_hf_json(lm)
  assert arch == mapping.LLAMA
  assert hf_config.differences(config.model, inferred.model, ("decoder",)) == []
  v = hf_config.vision_from_json(vision, None)
  fields = ml_collections.ConfigDict({k: v[k] for k in v if k not in (
      "feature_layer", "feature_select", "post_norm", "l2_normalize")})
  assert hf_config.differences(config.model, ml_collections.ConfigDict(dict(vision=fields)),
                               ("vision",)) == []


@pytest.mark.parametrize("spec", ["llava.py:stage2", "seechat.py:stage2", "blip2.py",
                                  "minigpt4.py:stage1", "mplug_owl.py:stage2"])
def test_export_to_transformers_is_refused_as_the_docstrings_say(spec):
  config = _load(spec)
  if config.model.connector.kind == "resampler":  # no transformers class has one
    with pytest.raises(hf_config.Unsupported, match="resampler"):
      hf_config.architecture_for(config.model)
  else:  # LLaVA layout, but the slot id is one past the vocabulary
    assert hf_config.architecture_for(config.model) == mapping.LLAVA
    with pytest.raises(hf_config.Unsupported, match="outside the vocabulary"):
      hf_config.to_hf_json(config, mapping.LLAVA, "bfloat16")


def test_arg_sets_stage_and_init_dir():
  config = _load("llava.py:stage2,gs://BUCKET/llava_stage1")
  assert config.train.init_from == "gs://BUCKET/llava_stage1"
  assert config.tokenizer.path == "gs://BUCKET/llava_stage1/tokenizer.model"
  assert tuple(config.optim.frozen) == (r"^vision\.",)
  blip2 = _load("blip2.py:/tmp/blip2_init")
  assert (blip2.train.init_from, blip2.tokenizer.path) == ("/tmp/blip2_init", "/tmp/blip2_init/tokenizer.model")
  assert _load("llava.py").optim.peak_lr == 1e-3  # no arg: stage 1
  for bad in ("llava.py:stage3", "llava.py:stage3,/x", "blip2.py:stage2"):
    with pytest.raises(ValueError, match="STAGE"):
      _load(bad)


CHAT_TEMPLATES = {"llava.py": "llava_v1", "minigpt4.py": "vicuna_v0",
                  "mplug_owl.py": "mplug_owl", "seechat.py": "llama2"}


@pytest.mark.parametrize("recipe", sorted(CHAT_TEMPLATES))
def test_last_stage_reads_conversations_in_the_systems_template(recipe):
  first, last = _load(f"{recipe}:stage1"), _load(f"{recipe}:stage2")
  assert {s.kind for s in first.data.sources.values()} == {"pair"}
  assert {s.kind for s in last.data.sources.values()} == {"conversation"}
  for config in (first, last):
    assert chat.from_config(config.tokenizer) == chat.get(CHAT_TEMPLATES[recipe])
