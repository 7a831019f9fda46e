"""Tiny model configs and batches in the ARCHITECTURE.md batch format, for tests."""

from __future__ import annotations

import numpy as np

from kosmos import defaults
from kosmos.model import connector, decoder, multimodal, vision


def model_config(family: str = "magneto", connector_kind: str = "resampler",
                 positions: str | None = None, vision_variant: str = "clip", vector_dim: int = 0):
  v = vision.default_config("Ti/8", variant=vision_variant, image_size=16)
  v.update(width=32, depth=2, num_heads=2, mlp_dim=64)
  c = connector.default_config(connector_kind, num_tokens=4)
  c.update(num_heads=2, depth=1)
  d = decoder.default_config()
  magneto = family == "magneto"
  d.update(family=family, vocab_size=96, d_model=32, num_layers=2, num_heads=4,
           num_kv_heads=4 if magneto else 2, ffn_dim=64,
           positions=positions or ("xpos" if magneto else "rope"), max_len=64,
           tie_embeddings=magneto, scale_embeddings=magneto)
  return multimodal.default_config(vision=v, connector=c, decoder=d, vector_dim=vector_dim)


def batch(config, *, b: int = 2, l: int = 32, m: int = 2, seed: int = 0, docs: int = 1,
          images_per_row: int = 2, vectors: int = 0) -> dict[str, np.ndarray]:
  """Random tokens with `images_per_row` image spans per row, `docs` packed documents."""
  n = multimodal.tokens_per_image(config)
  rng = np.random.default_rng(seed)
  tokens = rng.integers(8, config.decoder.vocab_size, (b, l)).astype(np.int32)
  size = config.vision.image_size
  for row in range(b):
    for k in range(images_per_row):
      start = 2 + k * (n + 4)
      tokens[row, start:start + n] = defaults.IMAGE_SLOT_ID
    for j in range(vectors):
      tokens[row, l - 2 - j] = defaults.VECTOR_SLOT_ID
  bounds = np.linspace(0, l, docs + 1).astype(int)
  segment_ids = np.zeros((b, l), np.int32)
  positions = np.zeros((b, l), np.int32)
  for i in range(docs):
    segment_ids[:, bounds[i]:bounds[i + 1]] = i + 1
    positions[:, bounds[i]:bounds[i + 1]] = np.arange(bounds[i + 1] - bounds[i])
  out = dict(
      tokens=tokens, positions=positions, segment_ids=segment_ids,
      images=rng.integers(0, 256, (b, m, size, size, 3)).astype(np.uint8),
      image_mask=np.arange(m)[None].repeat(b, 0) < images_per_row,
  )
  if vectors:
    out["vectors"] = rng.normal(size=(b, vectors, config.vector_dim)).astype(np.float32)
    out["vector_mask"] = np.ones((b, vectors), bool)
  return out


def byte_workdir(directory: str, *, chat_template, max_len: int, step: int = 1,
                 seed: int = 0) -> str:
  """A workdir of a tiny llama-family model (random weights, seed) on the byte tokenizer
  with `chat_template` (a config section of kosmos.data.chat)."""
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from kosmos import workdir as workdir_lib  # pylint: disable=import-outside-toplevel
  from kosmos.data import tokenizer as tokenizer_lib  # pylint: disable=import-outside-toplevel
  config = defaults.base()
  config.model = model_config("llama", "mlp")
  config.model.decoder.update(vocab_size=tokenizer_lib.BYTE_VOCAB_SIZE, max_len=max_len)
  config.tokenizer.chat_template = chat_template
  model = multimodal.Multimodal(config.model, rngs=nnx.Rngs(seed))
  workdir_lib.save_config(config, directory)
  workdir_lib.save_params(directory, step, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  return directory
