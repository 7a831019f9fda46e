"""KOSMOS-1 (Huang et al. 2023): 1.6B parameters, native multimodal, trained from scratch.

    kosmos-train --config configs/kosmos1.py --workdir gs://BUCKET/kosmos1
    python -m kosmos.model.summary --config configs/kosmos1.py   # ~1.6B, see docstring below

Decoder: magneto, 24 layers, d 2048, FFN 8192, 32 heads, xPos, vocab 64k, sequence 2048
(about 1.3B parameters). Vision: CLIP ViT-L/14 at 224 px, frozen except its last block
(about 0.3B). Connector: Perceiver resampler with 64 latents in the vision width.
Optimiser: AdamW (0.9, 0.98), weight decay 0.01, peak lr 2e-4, 375 warm-up steps, linear
decay over 300k steps; batch ~1.05M tokens here (paper: 1.2M), mixed 5:5:2 text : pairs :
interleaved as in the paper.

Pod plan: scanned layers, splash attention on TPU (heads first end to end), remat
`dots_attn`, the loss in 512-position chunks (fused: gradients computed with the loss).
Predicted (kosmos-compile, 2026-12-06, docs/performance.md "Pod efficiency, fourth pass",
every loop and kernel counted): v5p-256 20.36 GiB per chip, step 0.3532 s, MFU 51.3 %;
v5p-64 76.71 GiB, 1.267 s, 57.2 %. XLA:TPU's windowed einsums are off (`train.xla_options`).
"""

import ml_collections

from kosmos import defaults
from kosmos.model import connector, decoder, multimodal, vision


def get_config(arg=None):
  del arg
  config = defaults.base()
  vision_config = vision.default_config("L/14", image_size=224)
  connector_config = connector.default_config("resampler", num_tokens=64)
  connector_config.update(width=1024, num_heads=16, depth=2)
  decoder_config = decoder.default_config()
  # Pod plan (kosmos-compile --search; docs/performance.md "Pod efficiency"): scanned
  # layers, splash attention on TPU ("auto": cuDNN on GPU, XLA on CPU), remat keeping the
  # projections and the attention output, cross-entropy in 512-position chunks. The ViT
  # keeps XLA attention: splash pads its 257 tokens to 384 and measured slower.
  decoder_config.update(family="magneto", vocab_size=64000, d_model=2048, num_layers=24,
                        num_heads=32, ffn_dim=8192, positions="xpos", max_len=2048,
                        dtype="bfloat16", remat="dots_attn", attention="auto",
                        scan_layers=True)
  vision_config.update(dtype="bfloat16", remat="full", scan_layers=True)
  connector_config.update(dtype="bfloat16")
  config.model = multimodal.default_config(vision=vision_config, connector=connector_config,
                                           decoder=decoder_config)
  # The paper's batch is ~1.2M tokens (586 rows of 2048); 512 rows = 1.05M tokens divide
  # evenly over pod meshes. Use --config.data.global_batch_size=576 for 1.18M on 64/192 chips.
  # Images: the 5:5:2 mix puts ~5.7k images in a 1.05M-token step (pairs of ~85 tokens:
  # 64 slots + caption), ~11 per row on average; 16 slots per row leave room for rows the
  # packer fills with pairs (a pair-only row holds ~24; docs/performance.md, data pipeline).
  config.data.update(seq_len=2048, global_batch_size=512, max_images_per_row=16)
  config.data.sources = ml_collections.ConfigDict({
      "text": dict(path="gs://BUCKET/records/text", kind="text", weight=0.5 / 1.2),
      "pair": dict(path="gs://BUCKET/records/pair", kind="pair", weight=0.5 / 1.2),
      "interleaved": dict(path="gs://BUCKET/records/interleaved", kind="interleaved",
                          weight=0.2 / 1.2),
  })
  config.optim.update(peak_lr=2e-4, warmup_steps=375, decay="linear", b1=0.9, b2=0.98,
                      loss_chunk=512,
                      weight_decay=0.01,
                      # Vision frozen except its last block.
                      frozen=(r"^vision\.(?!blocks\.23\.|post_norm)",))
  # XLA:TPU's windowed einsums (all-gather / reduce-scatter matmuls as loops over weight
  # shards) made every FSDP matmul on v5p-64 a loop of 8 memory-bound steps over 64-wide
  # slices: 72 % of the step's estimated cycles, predicted MFU 23 %; off, 52.4 %
  # (docs/performance.md, "Pod efficiency, fourth pass"). Ignored off TPU.
  config.train.update(steps=300_000, checkpoint_every=1000, keep=3, keep_every=10_000,
                      xla_options="xla_tpu_enable_windowed_einsum_for_all_gather=false,"
                                  "xla_tpu_enable_windowed_einsum_for_reduce_scatter=false")
  config.mesh.update(data=1, fsdp=-1, tensor=1)
  return config
