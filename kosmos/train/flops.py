"""Analytic training FLOPs per step and model FLOPs utilisation (MFU).

A multiply-add counts 2 FLOPs; training = forward + backward = 3 forward units for
trainable layers. For T = batch * seq_len decoder tokens:

  decoder fwd   = 2 T (layers * N_layer + d * vocab)        dense matmuls + output head
                + 2 T seq_len * heads * head_dim * layers   QK^T and AV (4 T L n k), causal half
  vision fwd    per layer: 2 I P N_layer + 4 I P^2 width    I images (B * M), P tokens each
                + patch embedding 2 I P p^2 3 width
  connector fwd its projections and attention on its own token counts

Trainable layers count 3 units, frozen ViT layers 1 (forward only: no weight gradients,
and nothing trainable lies before them, so no activation gradients either). Padding
tokens and padding images count, since they are computed. A frozen decoder (LoRA, or an
LM frozen under a trained connector) still counts 3 units: its activation gradients are
needed, its weight gradients (1 unit) are not, so MFU then reads up to 1.5x high on the
decoder's share. MFU = model FLOPs / (step time
* peak FLOP/s per device * devices), as PaLM and MaxText define it.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import ml_collections
import numpy as np

from kosmos.model import multimodal
from kosmos.model import vision as vision_lib
from kosmos.train import freeze

# Dense bf16 peak FLOP/s per device (chip for TPU).
PEAK_FLOPS = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,  # v5e
    "TPU v5e": 197e12,
    "TPU v5": 459e12,  # v5p
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,  # v6e (Trillium)
    "TPU v6e": 918e12,
    "NVIDIA H100": 989e12,
    "NVIDIA H200": 989e12,
    "NVIDIA A100": 312e12,
}


def peak_flops(device_kind: str) -> float | None:
  """Peak bf16 FLOP/s of a device kind, or None when unknown (e.g. CPU)."""
  for name in sorted(PEAK_FLOPS, key=len, reverse=True):
    if device_kind.startswith(name):
      return PEAK_FLOPS[name]
  return None


def trainable_vision_layers(params: Any, depth: int, layer_masks: dict | None = None) -> int:
  """ViT blocks that need a backward pass: from the first block with a trained param on.

  `params` is the trainable pytree (e.g. `TrainState.params`, abstract or real), unrolled
  (`vision.blocks.<i>.`) or scanned (`vision.blocks.` [L, ...], with `layer_masks` of the
  partly trained stacked params, `kosmos.train.step.Setup.layer_masks`)."""
  blocks = set()
  for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]:
    name = freeze.path_string(path)
    found = re.match(r"vision\.blocks\.(\d+)\.", name)
    if found:
      blocks.add(int(found.group(1)))
    elif name.startswith("vision.blocks."):  # a stacked param: its trained layers
      key = tuple(getattr(p, "key", getattr(p, "idx", p)) for p in path)
      mask = (layer_masks or {}).get(key)
      blocks.update(range(depth) if mask is None else [int(i) for i in np.flatnonzero(mask)])
  return depth - min(blocks) if blocks else 0


def _layer_params(d: int, ffn: int, heads: int, kv_heads: int, head_dim: int, gated: bool) -> int:
  attn = d * heads * head_dim * 2 + d * kv_heads * head_dim * 2
  mlp = d * ffn * (3 if gated else 2)
  return attn + mlp


def step_flops(config: ml_collections.ConfigDict, trainable_vision_layers: int | None = None) -> dict[str, float]:
  """Training FLOPs of one step of `config` (global batch), by part."""
  model, data = config.model, config.data
  dec = model.decoder
  b, seq = data.global_batch_size, data.seq_len
  tokens = b * seq
  head_dim = dec.head_dim or dec.d_model // dec.num_heads
  kv = dec.num_kv_heads or dec.num_heads
  n_layer = _layer_params(dec.d_model, dec.ffn_dim, dec.num_heads, kv, head_dim, dec.family == "llama")
  dec_fwd = (2 * tokens * (n_layer * dec.num_layers + dec.d_model * dec.vocab_size)
             + 2 * tokens * seq * dec.num_heads * head_dim * dec.num_layers)  # causal: half of 4
  vis = model.vision
  images = b * data.max_images_per_row
  patches = vision_lib.num_features(vis) if vis.feature_select == "all" else (
      (vis.image_size // vis.patch_size) ** 2)
  p_tokens = (vis.image_size // vis.patch_size) ** 2 + (1 if vis.variant == "clip" else 0)
  v_layer = _layer_params(vis.width, vis.mlp_dim, vis.num_heads, vis.num_heads,
                          vis.width // vis.num_heads, False)
  v_layer_fwd = 2 * images * p_tokens * v_layer + 4 * images * p_tokens ** 2 * vis.width
  trainable = vis.depth if trainable_vision_layers is None else trainable_vision_layers
  vision = v_layer_fwd * (3 * trainable + (vis.depth - trainable))
  vision += 2 * images * p_tokens * vis.patch_size ** 2 * 3 * vis.width  # patch embedding, fwd
  n = multimodal.tokens_per_image(model)
  conn = model.connector
  width = conn.get("width", 0) or dec.d_model
  if conn.kind == "resampler":
    c_fwd = 2 * images * (patches * vis.width * width + conn.depth * (
        (patches + n) * 2 * width * width + n * (2 * width * width + 2 * conn.ffn_mult * width * width)
        + 4 * n * (patches + n) * width))
  elif conn.kind == "attention_pool":
    c_fwd = 2 * images * (patches * vis.width * dec.d_model + (patches + n) * 2 * dec.d_model ** 2
                          + 2 * n * dec.d_model ** 2 + 2 * n * (patches + n) * dec.d_model)
  elif conn.kind == "mlp":
    c_fwd = 2 * images * n * (vis.width * dec.d_model + dec.d_model ** 2)
  else:
    c_fwd = 2 * images * n * vis.width * dec.d_model
  out = {"decoder": 3.0 * dec_fwd, "vision": float(vision), "connector": 3.0 * c_fwd}
  out["total"] = sum(out.values())
  return out


def mfu(flops_per_step: float, seconds_per_step: float, num_devices: int,
        device_kind: str) -> float | None:
  peak = peak_flops(device_kind)
  if peak is None or seconds_per_step <= 0:
    return None
  return flops_per_step / (seconds_per_step * peak * num_devices)
