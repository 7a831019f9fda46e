"""BLIP-2 (Li et al. 2023) generative stage: a frozen ViT, 32 learned queries, a frozen LM.

Frozen CLIP ViT-L/14 at 224 px (second-to-last layer, all 257 tokens) -> resampler in the
Q-Former's role (32 queries, 12 layers, width 768, 12 heads, FFN 3072) -> linear 768 -> 4096
(`connector.out_proj`, BLIP-2's LM projection) -> frozen Vicuna-7B (LLaMA-7B shape, 6.74B).
Only the connector trains (89M parameters).

    kosmos-import --format hf --lm DIR/vicuna-7b-v1.1 --vision DIR/clip-vit-large-patch14 \
        --connector resampler --num-tokens 32 --config configs/recipes/blip2.py --out /tmp/blip2_init
    kosmos-train --config configs/recipes/blip2.py:/tmp/blip2_init --workdir gs://BUCKET/blip2

`arg`: an INIT_DIR (train.init_from, INIT_DIR/tokenizer.model). The run's workdir is what
configs/recipes/minigpt4.py starts from: its frozen "Q-Former" is this run's resampler.

The paper's second (vision-to-language generative) stage: 80k steps, batch 1,920 pairs
(OPT; 1,520 for FlanT5), AdamW (0.9, 0.98), weight decay 0.05, peak lr 1e-4 with 2k linear
warm-up steps and cosine decay to 5e-5, 224 px images, captions up to 32 tokens. Rows here
hold one pair each (128 tokens), so 1,920 rows are 1,920 pairs; 1,920 divides meshes of up
to 128 data-parallel devices (use 2,048 on 256).

Approximations, say them when you report results:
- BLIP-2's first stage (representation learning of the Q-Former with a text branch: ITC,
  ITM and image-grounded generation) has no kosmos counterpart; the resampler learns only
  through the frozen LM, from its fresh init (or start from any workdir with one).
- The resampler is not the Q-Former: its queries attend to [image features; queries] in
  one attention per layer with a GELU FFN (the Q-Former alternates self-attention and, every
  other layer, cross-attention, with BERT's post-LN) and it has no text branch and no BERT
  embeddings: ~85M in the layers vs the Q-Former's 188M.
- BLIP-2's LMs (OPT, FlanT5) are not kosmos families; a frozen llama-family Vicuna-7B stands
  in, as InstructBLIP (Dai et al. 2023) used it. The best BLIP-2 models use EVA-CLIP ViT-g/14,
  which kosmos-import cannot read; CLIP ViT-L/14 is BLIP-2's own smaller ViT choice.
- BLIP-2 is not instruction-tuned: its one stage reads `pair` records (loss on the
  caption), no conversations; minigpt4.py is its chat continuation.
- No export to transformers (a resampler connector has no transformers class);
  `kosmos-export --format params` works.
"""

import os

from kosmos import configs

_stitch = configs.load_module(os.path.join(os.path.dirname(os.path.abspath(__file__)), "_stitch.py"))


def get_config(arg=None):
  _, init_dir = _stitch.parse_arg(arg, stages=("stage1",))
  config = _stitch.llama7b(init_dir, llama1=True)
  _stitch.blip2_vision(config)
  config.model.connector = _stitch.qformer_like()
  _stitch.train_only(config, r"^connector\.")
  config.optim.update(peak_lr=1e-4, end_lr_fraction=0.5, warmup_steps=2000, decay="cosine",
                      b1=0.9, b2=0.98, eps=1e-8, weight_decay=0.05, grad_clip=1.0)
  config.data.update(seq_len=128, global_batch_size=1920, max_images_per_row=1)
  config.data.sources = _stitch.sources(
      pair=("pair", "gs://BUCKET/records/blip2_pairs", 1.0))  # COCO, VG, CC, SBU, LAION-115M
  config.train.update(steps=80_000, checkpoint_every=2000, keep=3, keep_every=20_000)
  return config
