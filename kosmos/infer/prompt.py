"""Prompts (record-format segment lists) -> token ids + images -> padded model batches.

A prompt is `[{"text": str} | {"image": uint8 [H, W, 3] array or encoded bytes}, ...]`
(the record segments of ARCHITECTURE.md). It becomes `<s> text <image>[N slots]</image>
text` — the data pipeline's layout, without the closing `</s>`; a boundary token whose id is
-1 is left out, as in LLaVA — with images decoded
(`kosmos.data.images`) and resized / centre-cropped to the model's input size.
`collate` right-pads a list of encoded prompts into the batch `kosmos.infer.generate`
takes: tokens [B, P], lengths [B], images [B, M, S, S, 3], image_mask [B, M].
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from kosmos.data import images as images_lib
from kosmos.data import tokenizer as tokenizer_lib

Segment = dict[str, Any]


@dataclasses.dataclass
class Encoded:
  """One prompt: token ids and its images [k, S, S, 3] uint8 in order of appearance."""
  tokens: list[int]
  images: list[np.ndarray]


def load_image(value: Any, image_size: int) -> np.ndarray:
  """Encoded bytes or an RGB / greyscale uint8 array -> uint8 [image_size, image_size, 3]."""
  if isinstance(value, (bytes, bytearray)):
    return images_lib.decode(bytes(value), image_size)
  array = np.asarray(value)
  if array.dtype != np.uint8 or array.ndim not in (2, 3) or (
      array.ndim == 3 and array.shape[-1] not in (1, 3, 4)):
    raise ValueError(f"image segment must be encoded bytes or a uint8 [H, W(, 1|3|4)] array; "
                     f"got {array.dtype} {array.shape}")
  if array.shape == (image_size, image_size, 3):
    return array
  if array.ndim == 3 and array.shape[-1] == 1:
    array = array[..., 0]
  im = Image.fromarray(array)
  return images_lib.resize_crop(im.convert("RGB"), image_size)


def encode(segments: Sequence[Segment], tok: tokenizer_lib.Tokenizer, *, image_size: int,
           tokens_per_image: int, bos: bool = True,
           encode_text: Callable[[str], list[int]] | None = None) -> Encoded:
  """Tokenizes one prompt (no `</s>`); raises ValueError on a segment of unknown kind.
  `encode_text` tokenizes the text segments (default `tok.encode`; a grounding model passes
  `kosmos.data.grounding.Grounding.encode`, which turns location tags into their ids)."""
  encode_text = encode_text or tok.encode
  tokens = [tok.bos_id] if bos else []
  pixels = []
  for i, segment in enumerate(segments):
    if "text" in segment:
      if not isinstance(segment["text"], str):
        raise ValueError(f"segment {i}: text must be str, got {type(segment['text']).__name__}")
      tokens.extend(encode_text(segment["text"]))
    elif "image" in segment:
      pixels.append(load_image(segment["image"], image_size))
      tokens.extend(tokenizer_lib.image_span(tok, tokens_per_image))
    else:
      raise ValueError(f"segment {i} has keys {sorted(segment)}; valid: 'text' or 'image'")
  return Encoded(tokens, pixels)


def round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple if multiple > 1 else n


def collate(prompts: Sequence[Encoded], *, image_size: int, pad_id: int, length: int = 0,
            num_images: int = -1, batch_size: int = 0) -> dict[str, np.ndarray]:
  """Right-pads prompts into a batch.

  length: P (0 = the longest prompt); num_images: M (-1 = the most images in a prompt);
  batch_size: B (0 = len(prompts); extra rows are a lone pad token with length 1 and
  should be dropped from the output by the caller).
  """
  if not prompts:
    raise ValueError("collate needs at least one prompt")
  longest = max(len(p.tokens) for p in prompts)
  most = max(len(p.images) for p in prompts)
  length = length or longest
  num_images = most if num_images < 0 else num_images
  batch_size = batch_size or len(prompts)
  if longest > length:
    raise ValueError(f"a prompt has {longest} tokens, more than the batch length {length}")
  if most > num_images:
    raise ValueError(f"a prompt has {most} images, more than the batch's {num_images}")
  if len(prompts) > batch_size:
    raise ValueError(f"{len(prompts)} prompts do not fit a batch of {batch_size}")
  tokens = np.full((batch_size, length), pad_id, np.int32)
  lengths = np.ones((batch_size,), np.int32)
  images = np.zeros((batch_size, num_images, image_size, image_size, 3), np.uint8)
  image_mask = np.zeros((batch_size, num_images), bool)
  for row, p in enumerate(prompts):
    if not p.tokens:
      raise ValueError(f"prompt {row} is empty")
    tokens[row, :len(p.tokens)] = p.tokens
    lengths[row] = len(p.tokens)
    for k, image in enumerate(p.images):
      images[row, k] = image
      image_mask[row, k] = True
  return {"tokens": tokens, "lengths": lengths, "images": images, "image_mask": image_mask}
