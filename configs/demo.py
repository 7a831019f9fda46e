"""Tiny native-multimodal model that trains on 2 CPU cores in minutes (`make demo`).

    kosmos-train --config configs/demo.py --workdir /tmp/demo

ViT-Ti-like encoder on 32-px images (8-px patches, 16 patches), a 2-layer resampler
with 8 latents, and a 4-layer magneto decoder (d 128) on the byte-level tokenizer.
`arg` may name the data root made by `python data/prepare.py shapes --output DIR`.
"""

import ml_collections

from kosmos import defaults
from kosmos.model import connector, decoder, multimodal, vision


def get_config(arg=None):
  config = defaults.base()
  vision_config = vision.default_config("Ti/8", image_size=32)
  vision_config.update(width=96, depth=2, num_heads=3, mlp_dim=192)
  connector_config = connector.default_config("resampler", num_tokens=8)
  connector_config.update(num_heads=4, depth=1)
  decoder_config = decoder.default_config()
  decoder_config.update(vocab_size=264, d_model=128, num_layers=4, num_heads=4, ffn_dim=512,
                        positions="xpos", max_len=256)
  config.model = multimodal.default_config(vision=vision_config, connector=connector_config,
                                           decoder=decoder_config)
  root = arg or "demo_out/data"
  config.data.update(seq_len=256, global_batch_size=16, max_images_per_row=4)
  config.data.sources = ml_collections.ConfigDict({
      "text": dict(path=f"{root}/records/text", kind="text", weight=0.2),
      "pair": dict(path=f"{root}/records/pair", kind="pair", weight=0.4),
      "interleaved": dict(path=f"{root}/records/interleaved", kind="interleaved", weight=0.4),
  })
  config.optim.update(peak_lr=1e-3, warmup_steps=50, decay="cosine", grad_clip=1.0)
  config.train.update(steps=600, log_every=25, checkpoint_every=200)
  return config
