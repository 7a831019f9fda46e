"""kosmos `config.model` <-> transformers `config.json`, and the refusals in between.

Export targets (`architecture_for`):
  magneto decoder + attention_pool connector + CLIP ViT  -> Kosmos2ForConditionalGeneration
  llama decoder + mlp | linear connector + CLIP | SigLIP -> LlavaForConditionalGeneration
  llama decoder alone (`text_only=True`)                  -> LlamaForCausalLM
Anything transformers cannot compute exactly is refused with an `Unsupported` error that
names the kosmos field and value (e.g. decoder.positions='xpos'). The kosmos `linear`
connector is exported as LLaVA's projector with `projector_hidden_act="linear"` and an
identity `linear_2` (exact: x @ I adds only zeros), and imported back when linear_2 is the
identity.

The JSON is written directly (no transformers import at export time); unset fields take
transformers' defaults when loaded.
"""

from __future__ import annotations

import math
from typing import Any

import ml_collections

from kosmos import defaults
from kosmos.data import grounding
from kosmos.interop import hf_tokenizer
from kosmos.interop import mapping
from kosmos.model import connector as connector_lib
from kosmos.model import decoder as decoder_lib
from kosmos.model import multimodal
from kosmos.model import vision as vision_lib


class Unsupported(ValueError):
  """A kosmos feature (or an HF config field) with no exact counterpart on the other side."""


class ConfigMismatch(ValueError):
  """`kosmos-import --config` describes another model than the checkpoint (lists the fields)."""


def _need(ok: bool, message: str) -> None:
  if not ok:
    raise Unsupported(message)


# ----------------------------------------------------------------------------- export


def architecture_for(model: ml_collections.ConfigDict, text_only: bool = False) -> str:
  """The transformers class a kosmos model exports to, or Unsupported naming why not."""
  family, kind = model.decoder.family, model.connector.kind
  _need(not model.get("vector_dim", 0),
        f"model.vector_dim={model.vector_dim} (PaLM-E state vectors, vector_proj) has no "
        "transformers equivalent; export the model without vectors")
  if family == decoder_lib.Family.MAGNETO:
    _need(not text_only, "--text-only needs decoder.family='llama' (LlamaForCausalLM); a magneto "
          "decoder exports as the full Kosmos2ForConditionalGeneration")
    _need(kind == connector_lib.Kind.ATTENTION_POOL,
          f"connector.kind={kind!r} has no transformers equivalent with a magneto decoder "
          "(Kosmos-2's image_to_text_projection is attention_pool)")
    return mapping.KOSMOS2
  if text_only:
    return mapping.LLAMA
  _need(kind in (connector_lib.Kind.MLP, connector_lib.Kind.LINEAR),
        f"connector.kind={kind!r} has no transformers equivalent with a llama decoder "
        "(LLaVA's multi_modal_projector is mlp or linear); use --text-only to export the LM alone")
  return mapping.LLAVA


def _check_llama(d: ml_collections.ConfigDict, problems: list[str] | None = None) -> None:
  """Llama-layout requirements; appended to `problems` if given, else raised."""
  need = (lambda ok, m: None if ok else problems.append(m)) if problems is not None else _need
  need(d.positions == decoder_lib.Positions.ROPE,
        f"decoder.positions={d.positions!r} has no transformers equivalent for a llama decoder "
        "(Llama uses rope)")
  need(not d.scale_embeddings, "decoder.scale_embeddings=True (sqrt(d_model) embedding scale) "
        "has no Llama equivalent")


def _llama_json(config: ml_collections.ConfigDict, dtype: str) -> dict[str, Any]:
  d, tok = config.model.decoder, config.tokenizer
  _check_llama(d)
  return dict(
      model_type="llama", vocab_size=d.vocab_size, hidden_size=d.d_model,
      intermediate_size=d.ffn_dim, num_hidden_layers=d.num_layers,
      num_attention_heads=d.num_heads, num_key_value_heads=d.num_kv_heads or d.num_heads,
      head_dim=d.head_dim or d.d_model // d.num_heads, hidden_act="silu",
      max_position_embeddings=d.max_len, rms_norm_eps=d.norm_eps,
      rope_parameters=dict(rope_type="default", rope_theta=float(d.rope_theta)),
      rope_theta=float(d.rope_theta),  # transformers 4.x reads this key
      attention_bias=False, mlp_bias=False, tie_word_embeddings=bool(d.tie_embeddings),
      bos_token_id=tok.bos_id, eos_token_id=tok.eos_id,
      pad_token_id=tok.pad_id if tok.pad_id >= 0 else None, dtype=dtype, torch_dtype=dtype)


def _clip_vision_json(v: ml_collections.ConfigDict) -> dict[str, Any]:
  return dict(hidden_size=v.width, intermediate_size=v.mlp_dim, num_hidden_layers=v.depth,
              num_attention_heads=v.num_heads, num_channels=3, image_size=v.image_size,
              patch_size=v.patch_size, layer_norm_eps=v.norm_eps)


def _vision_json(v: ml_collections.ConfigDict) -> dict[str, Any]:
  if v.variant == vision_lib.Variant.SIGLIP:
    return dict(_clip_vision_json(v), model_type="siglip_vision_model",
                hidden_act="gelu_pytorch_tanh", vision_use_head=False)
  return dict(_clip_vision_json(v), model_type="clip_vision_model", hidden_act="quick_gelu")


def to_hf_json(config: ml_collections.ConfigDict, architecture: str, dtype: str) -> dict[str, Any]:
  """config.json for `architecture` (from `architecture_for`); Unsupported on any mismatch."""
  model, tok = config.model, config.tokenizer
  d, v, c = model.decoder, model.vision, model.connector
  problems: list[str] = []

  def need(ok: bool, message: str) -> None:
    if not ok:
      problems.append(message)

  def done() -> None:
    if problems:
      raise Unsupported("; ".join(problems))
  if architecture == mapping.LLAMA:
    return dict(_llama_json(config, dtype), architectures=[mapping.LLAMA])
  if architecture == mapping.KOSMOS2:
    need(d.positions == decoder_lib.Positions.SINUSOIDAL,
          f"decoder.positions={d.positions!r} has no transformers equivalent "
          "(Kosmos-2 uses sinusoidal)")
    need(d.position_offset >= 1,
          f"decoder.position_offset={d.position_offset}: Kosmos-2 positions start at "
          "pad_token_id + 1, so the offset must be >= 1 (configs/kosmos2.py uses 2)")
    need((d.num_kv_heads or d.num_heads) == d.num_heads,
          f"decoder.num_kv_heads={d.num_kv_heads} (grouped-query attention) has no Kosmos-2 "
          "equivalent")
    need(not d.head_dim or d.head_dim * d.num_heads == d.d_model,
          f"decoder.head_dim={d.head_dim} != d_model/num_heads: Kosmos-2 has no free head_dim")
    need(v.variant == vision_lib.Variant.CLIP,
          f"vision.variant={v.variant!r} inside Kosmos-2 has no transformers equivalent "
          "(Kosmos2VisionModel is a CLIP ViT)")
    need(v.feature_layer in (-1, v.depth), f"vision.feature_layer={v.feature_layer}: Kosmos-2 "
          "takes the last layer (-1)")
    need(v.feature_select == vision_lib.FeatureSelect.ALL,
          f"vision.feature_select={v.feature_select!r}: Kosmos-2 keeps all tokens ('all')")
    need(v.post_norm, "vision.post_norm=False: Kosmos-2 post-layernorms every token")
    need(v.l2_normalize, "vision.l2_normalize=False: Kosmos-2 L2-normalises the features")
    need(c.num_heads == d.num_heads,
          f"connector.num_heads={c.num_heads} != decoder.num_heads={d.num_heads}: Kosmos-2's "
          "image_to_text_projection uses the text model's attention_heads")
    done()
    pad = d.position_offset - 1
    text = dict(
        model_type="kosmos_2_text_model", vocab_size=d.vocab_size, embed_dim=d.d_model,
        layers=d.num_layers, ffn_dim=d.ffn_dim, attention_heads=d.num_heads,
        activation_function="gelu", max_position_embeddings=d.max_len,
        layer_norm_eps=d.norm_eps, scale_embedding=bool(d.scale_embeddings),
        tie_word_embeddings=bool(d.tie_embeddings), add_cross_attention=False,
        dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, layerdrop=0.0,
        bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, pad_token_id=pad, use_cache=True)
    vision = dict(_clip_vision_json(v), model_type="kosmos_2_vision_model", hidden_act="quick_gelu",
                  attention_dropout=0.0)
    return dict(architectures=[mapping.KOSMOS2], model_type="kosmos-2", text_config=text,
                vision_config=vision, latent_query_num=c.num_tokens,
                tie_word_embeddings=bool(d.tie_embeddings), dtype=dtype, torch_dtype=dtype)
  if architecture == mapping.LLAVA:
    need(v.feature_layer != 0 and -v.depth - 1 <= v.feature_layer <= v.depth,
          f"vision.feature_layer={v.feature_layer} has no LLaVA equivalent")
    need(not v.post_norm, "vision.post_norm=True: LLaVA feeds the projector un-normed hidden "
          "states (hidden_states[vision_feature_layer])")
    need(not v.l2_normalize, "vision.l2_normalize=True has no LLaVA equivalent")
    if v.variant == vision_lib.Variant.SIGLIP:
      strategy = "full"  # no class token: 'default' would drop a patch
    else:
      strategy = "default" if v.feature_select == vision_lib.FeatureSelect.PATCH else "full"
    need(0 <= model.image_slot_id < d.vocab_size,
          f"model.image_slot_id={model.image_slot_id} lies outside the vocabulary "
          f"(vocab_size={d.vocab_size}); LLaVA marks image positions with an in-vocabulary "
          "image_token_index: resize the vocabulary or set model.image_slot_id")
    _check_llama(d, problems)
    done()
    text = _llama_json(config, dtype)
    text.pop("dtype"), text.pop("torch_dtype")
    return dict(architectures=[mapping.LLAVA], model_type="llava", text_config=text,
                vision_config=_vision_json(v), image_token_index=model.image_slot_id,
                image_seq_length=multimodal.tokens_per_image(model),
                projector_hidden_act="gelu" if c.kind == connector_lib.Kind.MLP else "linear",
                vision_feature_select_strategy=strategy,
                vision_feature_layer=v.feature_layer,
                multimodal_projector_bias=True, tie_word_embeddings=bool(d.tie_embeddings),
                dtype=dtype, torch_dtype=dtype)
  raise ValueError(f"unknown export architecture {architecture!r}")


def generation_json(config: ml_collections.ConfigDict, architecture: str) -> dict[str, Any]:
  tok = config.tokenizer
  pad = (config.model.decoder.position_offset - 1 if architecture == mapping.KOSMOS2
         else (tok.pad_id if tok.pad_id >= 0 else None))
  return dict(bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, pad_token_id=pad)


def preprocessor_json(v: ml_collections.ConfigDict) -> dict[str, Any]:
  """Image processor that yields the kosmos on-device normalisation (resize, no crop)."""
  siglip = v.variant == vision_lib.Variant.SIGLIP
  return dict(image_processor_type="SiglipImageProcessor" if siglip else "CLIPImageProcessor",
              do_resize=True, size=dict(height=v.image_size, width=v.image_size),
              do_center_crop=False, do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
              image_mean=list(v.pixel_mean), image_std=list(v.pixel_std), do_convert_rgb=True,
              resample=3)


# ----------------------------------------------------------------------------- import


def _decoder_from_llama(text: dict[str, Any]) -> ml_collections.ConfigDict:
  _need(text.get("model_type", "llama") == "llama",
        f"text model_type={text.get('model_type')!r}: only llama-family LMs import (model_type "
        "'llama')")
  _need(text.get("hidden_act", "silu") == "silu",
        f"hidden_act={text.get('hidden_act')!r}: the kosmos llama decoder uses silu (SwiGLU)")
  _need(not text.get("attention_bias", False), "attention_bias=True has no kosmos equivalent")
  _need(not text.get("mlp_bias", False), "mlp_bias=True has no kosmos equivalent")
  rope = dict(text.get("rope_parameters") or text.get("rope_scaling") or {})
  rope_type = rope.get("rope_type", rope.get("type", "default"))
  _need(rope_type == "default", f"rope_type={rope_type!r} (RoPE scaling) has no kosmos equivalent")
  theta = rope.get("rope_theta", text.get("rope_theta", 10000.0))
  heads = text["num_attention_heads"]
  d = decoder_lib.default_config()
  d.update(family="llama", vocab_size=text["vocab_size"], d_model=text["hidden_size"],
           num_layers=text["num_hidden_layers"], num_heads=heads,
           num_kv_heads=text.get("num_key_value_heads") or heads,
           head_dim=text.get("head_dim") or text["hidden_size"] // heads,
           ffn_dim=text["intermediate_size"], positions="rope", position_offset=0,
           rope_theta=float(theta), max_len=text.get("max_position_embeddings", 2048),
           norm_eps=text.get("rms_norm_eps", 1e-6),
           tie_embeddings=bool(text.get("tie_word_embeddings", False)), scale_embeddings=False)
  return d


def vision_from_json(vj: dict[str, Any], preprocessor: dict[str, Any] | None) -> ml_collections.ConfigDict:
  """A kosmos ViT config from a CLIP / SigLIP / Kosmos-2 vision config (features unset)."""
  kind = vj.get("model_type", "clip_vision_model")
  siglip = kind.startswith("siglip")
  if siglip:
    _need(vj.get("hidden_act", "gelu_pytorch_tanh") in ("gelu_pytorch_tanh", "gelu_tanh"),
          f"SigLIP hidden_act={vj.get('hidden_act')!r}: kosmos SigLIP uses gelu_pytorch_tanh")
  else:
    _need(vj.get("hidden_act", "quick_gelu") == "quick_gelu",
          f"vision hidden_act={vj.get('hidden_act')!r}: the kosmos CLIP ViT uses quick_gelu")
  v = vision_lib.default_config("L/14", variant="siglip" if siglip else "clip",
                                image_size=vj.get("image_size", 224))
  v.update(width=vj["hidden_size"], depth=vj["num_hidden_layers"],
           num_heads=vj["num_attention_heads"], mlp_dim=vj["intermediate_size"],
           patch_size=vj.get("patch_size", 14),
           norm_eps=vj.get("layer_norm_eps", 1e-6 if siglip else 1e-5))
  if preprocessor and "image_mean" in preprocessor:
    v.update(pixel_mean=tuple(float(x) for x in preprocessor["image_mean"]),
             pixel_std=tuple(float(x) for x in preprocessor["image_std"]))
  return v


def _tokenizer(hf_text: dict[str, Any], **extra: int) -> ml_collections.ConfigDict:
  tok = defaults.tokenizer()
  for field, key in (("bos_id", "bos_token_id"), ("eos_id", "eos_token_id"),
                     ("pad_id", "pad_token_id")):
    if isinstance(hf_text.get(key), int):
      tok[field] = hf_text[key]
  tok.update(**extra)
  return tok


def kosmos2_grounding(vocab_size: int) -> ml_collections.ConfigDict:
  """The location-token section of a Kosmos-2 vocabulary (`grounding.kosmos2_ids`: the six
  tags and 1024 cells end it); off (grid 0) when the vocabulary cannot hold them."""
  section = defaults.grounding()
  if vocab_size >= hf_tokenizer.KOSMOS2_ADDED + 4:
    section.update(grounding.kosmos2_ids(vocab_size))
  return section


def kosmos2_image_ids(vocab_size: int) -> dict[str, int]:
  """`<image>` / `</image>` where Kosmos2Processor puts them in a Kosmos-2 vocabulary: after
  the XLM-R pieces and `<mask>`, `</doc>`, then `<image>` `</image>` (64003 / 64004 of 65037);
  1024 patch-index tokens and 8 more tags follow. A vocabulary too small to hold that layout
  (tiny test models) gets -1 / -1: no boundary tokens."""
  if vocab_size < hf_tokenizer.KOSMOS2_ADDED + 4:
    return dict(image_start_id=-1, image_end_id=-1)
  return dict(image_start_id=vocab_size - hf_tokenizer.KOSMOS2_IMAGE_START_FROM_END,
              image_end_id=vocab_size - hf_tokenizer.KOSMOS2_IMAGE_END_FROM_END)


def from_hf_json(hf: dict[str, Any], preprocessor: dict[str, Any] | None = None
                 ) -> tuple[str, ml_collections.ConfigDict]:
  """(architecture, full kosmos config) inferred from a transformers config.json."""
  kind = hf.get("model_type")
  config = defaults.base()
  if kind == "kosmos-2":
    t, vj = hf["text_config"], hf["vision_config"]
    _need(t.get("activation_function", "gelu") == "gelu",
          f"Kosmos-2 activation_function={t.get('activation_function')!r}: magneto uses gelu")
    _need(not t.get("add_cross_attention", False), "Kosmos-2 add_cross_attention=True has no "
          "kosmos equivalent")
    pad = t.get("pad_token_id", 1)
    d = decoder_lib.default_config()
    d.update(family="magneto", vocab_size=t["vocab_size"], d_model=t["embed_dim"],
             num_layers=t["layers"], num_heads=t["attention_heads"], num_kv_heads=0, head_dim=0,
             ffn_dim=t["ffn_dim"], positions="sinusoidal", position_offset=pad + 1,
             max_len=t.get("max_position_embeddings", 2048), norm_eps=t.get("layer_norm_eps", 1e-5),
             tie_embeddings=bool(t.get("tie_word_embeddings", hf.get("tie_word_embeddings", True))),
             scale_embeddings=bool(t.get("scale_embedding", True)))
    v = vision_from_json(vj, preprocessor)
    v.update(feature_layer=-1, feature_select="all", post_norm=True, l2_normalize=True)
    c = connector_lib.default_config("attention_pool", num_tokens=hf.get("latent_query_num", 64))
    c.update(num_heads=t["attention_heads"])
    config.model = multimodal.default_config(vision=v, connector=c, decoder=d)
    # XLM-R has no free id for image slots: use one past the vocabulary (never embedded).
    config.model.image_slot_id = t["vocab_size"]
    config.model.vector_slot_id = -1
    config.tokenizer = _tokenizer(dict(t, pad_token_id=pad), unk_id=3,
                                  image_slot_id=t["vocab_size"], vector_slot_id=-1, spm_id_offset=1,
                                  **kosmos2_image_ids(t["vocab_size"]))
    config.tokenizer.grounding = kosmos2_grounding(t["vocab_size"])
    return mapping.KOSMOS2, config
  if kind == "llava":
    layer = hf.get("vision_feature_layer", -2)
    _need(isinstance(layer, int), f"vision_feature_layer={layer!r}: several feature layers "
          "(concatenated) have no kosmos equivalent")
    strategy = hf.get("vision_feature_select_strategy", "default")
    act = hf.get("projector_hidden_act", "gelu")
    _need(act in ("gelu", "linear"), f"projector_hidden_act={act!r}: kosmos projectors are "
          "mlp (exact gelu) or linear")
    _need(hf.get("multimodal_projector_bias", True), "multimodal_projector_bias=False has no "
          "kosmos equivalent")
    d = _decoder_from_llama(hf["text_config"])
    v = vision_from_json(hf["vision_config"], preprocessor)
    siglip = v.variant == vision_lib.Variant.SIGLIP
    _need(not (siglip and strategy == "default"), "vision_feature_select_strategy='default' "
          "with a SigLIP tower drops a patch token; kosmos drops only a class token")
    v.update(feature_layer=layer, feature_select="patch" if strategy == "default" else "all",
             post_norm=False, l2_normalize=False)
    c = connector_lib.default_config("mlp" if act == "gelu" else "linear")
    config.model = multimodal.default_config(vision=v, connector=c, decoder=d)
    slot = hf.get("image_token_index", hf.get("image_token_id", 32000))
    config.model.image_slot_id = slot
    config.model.vector_slot_id = -1
    # LLaVA's prompts hold an image as its slots alone: no <image> / </image> around them
    # (ids 4 / 5, the defaults, are byte pieces <0x01> / <0x02> in a Llama vocabulary).
    config.tokenizer = _tokenizer(hf["text_config"], unk_id=0, image_slot_id=slot,
                                  vector_slot_id=-1, image_start_id=-1, image_end_id=-1)
    return mapping.LLAVA, config
  if kind == "llama":
    config.model = ml_collections.ConfigDict(dict(decoder=_decoder_from_llama(hf)))
    config.tokenizer = _tokenizer(hf, unk_id=0)
    return mapping.LLAMA, config
  raise Unsupported(f"model_type={kind!r} is not importable; valid: 'kosmos-2' "
                    "(Kosmos2ForConditionalGeneration), 'llava' (LlavaForConditionalGeneration), "
                    "'llama' (LlamaForCausalLM)")


# How a model runs, not what it computes: a config may choose these freely.
_IGNORED = {"dtype", "param_dtype", "remat", "max_len", "scan_layers", "attention",
            "attention_block"}


def differences(given: ml_collections.ConfigDict, inferred: ml_collections.ConfigDict,
                sections: tuple[str, ...]) -> list[str]:
  """Fields of `given` model sections that disagree with the checkpoint's config."""
  out = []
  for section in sections:
    g, i = given[section], inferred[section]
    for key, value in i.items():
      if key in _IGNORED:
        continue
      mine = g.get(key)
      a = tuple(mine) if isinstance(mine, (list, tuple)) else mine
      b = tuple(value) if isinstance(value, (list, tuple)) else value
      if isinstance(a, float) or isinstance(b, float):
        same = a is not None and b is not None and math.isclose(float(a), float(b), rel_tol=1e-6)
      else:
        same = a == b
      if not same:
        out.append(f"model.{section}.{key}: config has {mine!r}, checkpoint has {value!r}")
  return out
