"""Parameter name maps between kosmos params and transformers checkpoints, per family.

An `Entry` pairs one kosmos leaf (a key path in `nnx.to_pure_dict(nnx.state(model,
nnx.Param))`) with one tensor name of a transformers checkpoint and a layout change:

    copy    same array (norms, biases, embeddings, positions, latent queries)
    linear  nnx.Linear kernel [in, out]  <->  torch Linear weight [out, in]  (transpose)
    conv    nnx.Conv kernel [p, p, 3, w] (HWIO)  <->  torch Conv2d weight [w, 3, p, p] (OIHW)

Every change is a transpose, so a round trip is bit-exact. Names are the ones
`save_pretrained` writes (and transformers 4.x and 5.x load): Kosmos-2
`text_model.model.* / vision_model.model.* / image_to_text_projection.*`; LLaVA
`language_model.model.* / language_model.lm_head / vision_tower.vision_model.* /
multi_modal_projector.*`; Llama `model.* / lm_head`. `canonical_name` maps the other
spellings found in the wild (transformers-5 in-memory names `model.language_model.*`,
`vision_tower.embeddings.*` without `vision_model.`) onto these.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from typing import Any

import ml_collections
import numpy as np

Path = tuple[Any, ...]


class Kind(str, enum.Enum):
  COPY = "copy"
  LINEAR = "linear"
  CONV = "conv"


@dataclasses.dataclass(frozen=True)
class Entry:
  kosmos: Path
  hf: str
  kind: Kind = Kind.COPY


def to_hf(kind: Kind, x: np.ndarray) -> np.ndarray:
  if kind == Kind.LINEAR:
    return x.T
  if kind == Kind.CONV:
    return x.transpose(3, 2, 0, 1)
  return x


def hf_shape(kind: Kind, shape: tuple[int, ...]) -> tuple[int, ...]:
  """The transformers shape of a kosmos leaf of `shape`."""
  if kind == Kind.LINEAR:
    return tuple(reversed(shape))
  if kind == Kind.CONV:
    return (shape[3], shape[2], shape[0], shape[1])
  return tuple(shape)


def from_hf(kind: Kind, x: np.ndarray) -> np.ndarray:
  if kind == Kind.LINEAR:
    return x.T
  if kind == Kind.CONV:
    return x.transpose(2, 3, 1, 0)
  return x


def _linear(kpath: Path, hf: str, bias: bool) -> list[Entry]:
  out = [Entry(kpath + ("kernel",), hf + ".weight", Kind.LINEAR)]
  if bias:
    out.append(Entry(kpath + ("bias",), hf + ".bias"))
  return out


def _layer_norm(kpath: Path, hf: str) -> list[Entry]:
  return [Entry(kpath + ("scale",), hf + ".weight"), Entry(kpath + ("bias",), hf + ".bias")]


def _rms_norm(kpath: Path, hf: str) -> list[Entry]:
  return [Entry(kpath + ("scale",), hf + ".weight")]


# ----------------------------------------------------------------------------- vision


def vision_entries(config: ml_collections.ConfigDict, prefix: str) -> list[Entry]:
  """CLIP / SigLIP ViT under `prefix` (e.g. 'vision_model.model.' for Kosmos-2)."""
  clip = config.variant == "clip"
  v: Path = ("vision",)
  out = [Entry(v + ("patch_embed", "kernel"), prefix + "embeddings.patch_embedding.weight", Kind.CONV),
         Entry(v + ("pos_embed",), prefix + "embeddings.position_embedding.weight")]
  if clip:
    out += [Entry(v + ("class_embed",), prefix + "embeddings.class_embedding")]
    out += _layer_norm(v + ("pre_norm",), prefix + "pre_layrnorm")
  else:
    out += [Entry(v + ("patch_embed", "bias"), prefix + "embeddings.patch_embedding.bias")]
  for i in range(config.depth):
    k, h = v + ("blocks", i), f"{prefix}encoder.layers.{i}."
    out += _layer_norm(k + ("layer_norm1",), h + "layer_norm1")
    for proj, hf_proj in (("q_proj", "q_proj"), ("k_proj", "k_proj"), ("v_proj", "v_proj"),
                          ("o_proj", "out_proj")):
      out += _linear(k + ("attn", proj), h + "self_attn." + hf_proj, bias=True)
    out += _layer_norm(k + ("layer_norm2",), h + "layer_norm2")
    out += _linear(k + ("mlp", "fc1"), h + "mlp.fc1", bias=True)
    out += _linear(k + ("mlp", "fc2"), h + "mlp.fc2", bias=True)
  out += _layer_norm(v + ("post_norm",), prefix + "post_layernorm")
  return out


# ----------------------------------------------------------------------------- decoders


def kosmos2_text_entries(config: ml_collections.ConfigDict, prefix: str = "text_model.") -> list[Entry]:
  """Magneto decoder <-> Kosmos2TextForCausalLM (one-to-one, see kosmos.model.decoder)."""
  d: Path = ("decoder",)
  m = prefix + "model."
  out = [Entry(d + ("embed_tokens", "embedding"), m + "embed_tokens.weight")]
  for i in range(config.num_layers):
    k, h = d + ("blocks", i), f"{m}layers.{i}."
    out += _layer_norm(k + ("attn_norm",), h + "self_attn_layer_norm")
    for proj, hf_proj in (("q_proj", "q_proj"), ("k_proj", "k_proj"), ("v_proj", "v_proj"),
                          ("o_proj", "out_proj")):
      out += _linear(k + ("attn", proj), h + "self_attn." + hf_proj, bias=True)
    out += _layer_norm(k + ("attn", "inner_norm"), h + "self_attn.inner_attn_ln")
    out += _layer_norm(k + ("mlp_norm",), h + "final_layer_norm")
    out += _linear(k + ("mlp", "fc1"), h + "ffn.fc1", bias=True)
    out += _layer_norm(k + ("mlp", "inner_norm"), h + "ffn.ffn_layernorm")
    out += _linear(k + ("mlp", "fc2"), h + "ffn.fc2", bias=True)
  out += _layer_norm(d + ("norm",), m + "layer_norm")
  if not config.tie_embeddings:
    out += _linear(d + ("lm_head",), prefix + "lm_head", bias=False)
  return out


def llama_entries(config: ml_collections.ConfigDict, prefix: str = "", *,
                  head: bool = True) -> list[Entry]:
  """Llama decoder <-> LlamaForCausalLM under `prefix` ('language_model.' inside LLaVA)."""
  d: Path = ("decoder",)
  m = prefix + "model."
  out = [Entry(d + ("embed_tokens", "embedding"), m + "embed_tokens.weight")]
  for i in range(config.num_layers):
    k, h = d + ("blocks", i), f"{m}layers.{i}."
    out += _rms_norm(k + ("attn_norm",), h + "input_layernorm")
    for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
      out += _linear(k + ("attn", proj), h + "self_attn." + proj, bias=False)
    out += _rms_norm(k + ("mlp_norm",), h + "post_attention_layernorm")
    for proj in ("gate_proj", "up_proj", "down_proj"):
      out += _linear(k + ("mlp", proj), h + "mlp." + proj, bias=False)
  out += _rms_norm(d + ("norm",), m + "norm")
  if head and not config.tie_embeddings:
    out += _linear(d + ("lm_head",), prefix + "lm_head", bias=False)
  return out


# ----------------------------------------------------------------------------- connectors


def attention_pool_entries(prefix: str = "image_to_text_projection.") -> list[Entry]:
  c: Path = ("connector",)
  out = _linear(c + ("dense",), prefix + "dense", bias=True)
  out += [Entry(c + ("latent_query",), prefix + "latent_query")]
  for proj, hf_proj in (("q_proj", "q_proj"), ("k_proj", "k_proj"), ("v_proj", "v_proj"),
                        ("o_proj", "out_proj")):
    out += _linear(c + ("x_attn", proj), prefix + "x_attn." + hf_proj, bias=True)
  return out


def mlp_projector_entries(prefix: str = "multi_modal_projector.") -> list[Entry]:
  c: Path = ("connector",)
  return (_linear(c + ("linear_1",), prefix + "linear_1", bias=True)
          + _linear(c + ("linear_2",), prefix + "linear_2", bias=True))


def linear_projector_entries(prefix: str = "multi_modal_projector.") -> list[Entry]:
  """kosmos `linear` -> LLaVA linear_1 (linear_2 is written as the identity, see hf_export)."""
  return _linear(("connector", "linear"), prefix + "linear_1", bias=True)


# ----------------------------------------------------------------------------- whole models

KOSMOS2, LLAVA, LLAMA = "Kosmos2ForConditionalGeneration", "LlavaForConditionalGeneration", "LlamaForCausalLM"
CLIP_VISION, SIGLIP_VISION = "CLIPVisionModel", "SiglipVisionModel"
LLAVA_LINEAR_2 = "multi_modal_projector.linear_2"


def entries(model: ml_collections.ConfigDict, architecture: str) -> list[Entry]:
  """All entries of a kosmos `config.model` exported as / imported from `architecture`."""
  if architecture == KOSMOS2:
    return (kosmos2_text_entries(model.decoder) + vision_entries(model.vision, "vision_model.model.")
            + attention_pool_entries())
  if architecture == LLAVA:
    projector = (mlp_projector_entries() if model.connector.kind == "mlp"
                 else linear_projector_entries())
    return (llama_entries(model.decoder, "language_model.")
            + vision_entries(model.vision, "vision_tower.vision_model.") + projector)
  if architecture == LLAMA:
    return llama_entries(model.decoder)
  if architecture in (CLIP_VISION, SIGLIP_VISION):
    return vision_entries(model.vision, "vision_model.")
  raise ValueError(f"unknown architecture {architecture!r}; valid: "
                   f"{[KOSMOS2, LLAVA, LLAMA, CLIP_VISION, SIGLIP_VISION]}")


_ALIASES = (
    # transformers-5 in-memory names -> the saved (4.x-compatible) names
    (re.compile(r"^model\.language_model\."), "language_model.model."),
    (re.compile(r"^lm_head\."), "language_model.lm_head."),
    (re.compile(r"^model\.multi_modal_projector\."), "multi_modal_projector."),
    (re.compile(r"^model\.vision_tower\.(?!vision_model\.)"), "vision_tower.vision_model."),
    (re.compile(r"^model\.vision_tower\."), "vision_tower."),
    (re.compile(r"^vision_tower\.(?!vision_model\.)"), "vision_tower.vision_model."),
)


def canonical_name(name: str, architecture: str) -> str:
  """The name `entries` uses for a tensor name as found in a checkpoint of `architecture`."""
  if architecture == LLAVA:
    for pattern, repl in _ALIASES:
      if pattern.search(name):
        return pattern.sub(repl, name, count=1)
    return name
  if architecture in (CLIP_VISION, SIGLIP_VISION) and not name.startswith("vision_model."):
    return "vision_model." + name
  return name
