"""Image embedders for RICES from a tower other than the evaluated model's (`--rices-model`).

OpenFlamingo ranks demonstrations with a separate CLIP image encoder (open_clip ViT-L-14,
"openai" weights) rather than the evaluated model. `load(path)` returns an embedding
function (`kosmos.eval.demos.EmbedFn`: B encoded images -> [B, D] float32) and a name for
the feature cache, from either

- a Hugging Face CLIP directory saved by `save_pretrained` (config.json with model_type
  "clip" or "clip_vision_model"): the projected pooled image features of CLIPModel or
  CLIPVisionModelWithProjection (CLIP's image embedding), or the pooled output of
  CLIPVisionModel; images
  preprocessed by the directory's CLIPImageProcessor (or CLIP's defaults at the model's
  image size: resize the short side bicubic, center crop, CLIP mean/std). Runs in torch on
  the CPU, nothing downloaded. openai/clip-vit-large-patch14 saved this way gives
  OpenFlamingo's RICES features (open_clip and transformers hold the same weights);
- a kosmos workdir (config.json + checkpoints/): the vision tower of its latest checkpoint,
  mean of its output tokens, as for the evaluated model's own RICES. (The whole model's
  params are restored, on the default devices, not only the tower's.)

Embeddings need not be normalized: `demos.embed_examples` L2-normalizes them.
"""

from __future__ import annotations

import json
import os
from typing import Callable

import numpy as np

EmbedFn = Callable[[list[bytes]], np.ndarray]
HF_CLIP_TYPES = ("clip", "clip_vision_model")


def kind_of(path: str) -> str:
  """"hf_clip" or "workdir" for a directory, else ValueError naming what was found."""
  config_path = os.path.join(path, "config.json")
  if not os.path.isfile(config_path):
    raise ValueError(f"--rices-model {path!r}: no config.json; expected a Hugging Face CLIP "
                     "directory or a kosmos workdir")
  with open(config_path, encoding="utf-8") as f:
    config = json.load(f)
  model_type = config.get("model_type")
  if model_type is not None:
    if model_type not in HF_CLIP_TYPES:
      raise ValueError(f"--rices-model {path!r}: Hugging Face model_type {model_type!r} is "
                       f"not supported; valid: {HF_CLIP_TYPES}")
    return "hf_clip"
  if os.path.isdir(os.path.join(path, "checkpoints")) and "model" in config:
    return "workdir"
  raise ValueError(f"--rices-model {path!r}: config.json is neither a Hugging Face CLIP "
                   "config (model_type) nor a kosmos workdir config with checkpoints/")


def hf_clip_embed_fn(path: str) -> EmbedFn:
  """RICES features from a saved Hugging Face CLIP model (module docstring)."""
  import io  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  from PIL import Image  # pylint: disable=import-outside-toplevel
  with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
    config = json.load(f)
  architectures = config.get("architectures") or []
  if config["model_type"] == "clip":
    model = transformers.CLIPModel.from_pretrained(path, local_files_only=True)
    image_size = model.config.vision_config.image_size
  elif "CLIPVisionModelWithProjection" in architectures:
    model = transformers.CLIPVisionModelWithProjection.from_pretrained(path,
                                                                       local_files_only=True)
    image_size = model.config.image_size
  else:
    model = transformers.CLIPVisionModel.from_pretrained(path, local_files_only=True)
    image_size = model.config.image_size
  project = getattr(model, "visual_projection", None)

  def forward(pixels):  # written out: get_image_features' return type varies by version
    pooled = model.vision_model(pixel_values=pixels).pooler_output
    return project(pooled) if project is not None else pooled
  model.eval()
  if os.path.isfile(os.path.join(path, "preprocessor_config.json")):
    processor = transformers.CLIPImageProcessor.from_pretrained(path, local_files_only=True)
  else:
    processor = transformers.CLIPImageProcessor(size={"shortest_edge": image_size},
                                                crop_size={"height": image_size,
                                                           "width": image_size})

  def embed(encoded: list[bytes]) -> np.ndarray:
    images = [Image.open(io.BytesIO(b)).convert("RGB") for b in encoded]
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
      out = forward(pixels)
    return out.float().numpy()
  return embed


def workdir_embed_fn(path: str) -> EmbedFn:
  """RICES features from the vision tower of a kosmos workdir's latest checkpoint."""
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from kosmos import workdir as workdir_lib  # pylint: disable=import-outside-toplevel
  from kosmos.eval import runner  # pylint: disable=import-outside-toplevel
  from kosmos.infer import prompt as prompt_lib  # pylint: disable=import-outside-toplevel
  config = workdir_lib.load_config(path)
  _, params = workdir_lib.restore_params(path)
  model = runner.build_model(config, params)  # host numpy params
  image_size = config.model.vision.image_size

  @nnx.jit
  def features(model, images):
    out, _ = model.vision(images)
    return out.mean(axis=1)

  def embed(encoded: list[bytes]) -> np.ndarray:
    images = np.stack([prompt_lib.load_image(b, image_size) for b in encoded])
    return np.asarray(features(model, images), np.float32)
  return embed


def load(path: str) -> tuple[EmbedFn, str]:
  """(embed_fn, cache name) for a Hugging Face CLIP directory or a kosmos workdir."""
  kind = kind_of(path)
  name = f"{kind}_{os.path.basename(os.path.normpath(path))}"
  return (hf_clip_embed_fn(path) if kind == "hf_clip" else workdir_embed_fn(path)), name
