"""MiniGPT-4 (Zhu et al. 2023): frozen ViT + frozen Q-Former, one trained linear layer, frozen LM.

The model is configs/recipes/blip2.py's (frozen CLIP ViT-L/14, a 32-query resampler in the
Q-Former's role, frozen Vicuna-7B); only `connector.out_proj` (768 -> 4096, 3.1M
parameters: MiniGPT-4's linear projection layer) trains, everything else is frozen.

    # 1. BLIP-2's generative stage trains the "Q-Former" (configs/recipes/blip2.py docstring).
    kosmos-train --config configs/recipes/blip2.py:/tmp/blip2_init --workdir gs://BUCKET/blip2
    # 2. MiniGPT-4 stage 1 from that run: its ViT, resampler layers and LM load; the
    #    projection starts fresh (train.init_patterns leaves out connector.out_proj).
    kosmos-train --config configs/recipes/minigpt4.py:stage1,gs://BUCKET/blip2 \
        --config.tokenizer.path=/tmp/blip2_init/tokenizer.model --workdir gs://BUCKET/minigpt4_stage1
    # 3. Stage 2 on the ~3,500 curated detailed descriptions, everything loaded from stage 1.
    kosmos-train --config configs/recipes/minigpt4.py:stage2,gs://BUCKET/minigpt4_stage1 \
        --config.tokenizer.path=/tmp/blip2_init/tokenizer.model --workdir gs://BUCKET/minigpt4_stage2

`arg`: "stage1" | "stage2", optionally ",INIT_DIR" (train.init_from and
INIT_DIR/tokenizer.model; training workdirs hold no tokenizer, so pass tokenizer.path).

The paper's hyper-parameters (its train_configs; AdamW (0.9, 0.999), weight decay 0.05,
linear warm-up then cosine):
    stage 1: ~5M pairs (LAION, CC, SBU), 20k steps, batch 256, lr 1e-4 -> 8e-5, 5k warm-up
    stage 2: 3.5k curated pairs, 400 steps, batch 12, lr 3e-5 -> 1e-5, 200 warm-up
Rows hold one pair each (128 / 256 tokens; captions up to 32 / 160 tokens). Batch 12
divides meshes of 1, 2, 3, 4, 6 or 12 data-parallel devices only.

Approximations (our connector is one module, so "Q-Former frozen, projection trains" is
`optim.trainable=(r"^connector\\.out_proj\\.",)`: kernel [768, 4096] and bias [4096]):
- The "Q-Former" is blip2.py's resampler trained through a frozen LM, not BLIP-2's
  pretrained Q-Former (LAVIS weights have no importer; see blip2.py for how the resampler
  differs). MiniGPT-4 uses EVA-CLIP ViT-g/14 (not importable) and the Q-Former's 32 output
  queries as they are; here CLIP ViT-L/14.
- Stage 2 reads `conversation` records: MiniGPT-4's cc_sbu_align descriptions written as
  one-round LLaVA-style conversations ({"image", "conversations": [{"from": "human",
  "value": "<image> Describe this image in detail."}, {"from": "gpt", "value": caption}]},
  MiniGPT-4 draws the instruction from its prompt list) and converted with
  `prepare.py conversations`. They are rendered with MiniGPT-4's Vicuna v0 conversation
  (`chat_template="vicuna_v0"`: "<system>###Human: <Img><image></Img> ...###Assistant:
  ...###"), the loss on the answer and its "###" only, as MiniGPT-4. MiniGPT-4's stage-2
  training prompt has no system text; its demo's conversation (used here, and by
  kosmos-chat) has one. Stage 1 reads `pair` records (image + caption, loss on the caption).
- The LM is the one blip2.py imported (MiniGPT-4's 7B release used Vicuna-7B v0; same shape).
"""

import os

from kosmos import configs

_stitch = configs.load_module(os.path.join(os.path.dirname(os.path.abspath(__file__)), "_stitch.py"))

PROJECTION = r"^connector\.out_proj\."


def get_config(arg=None):
  stage, init_dir = _stitch.parse_arg(arg)
  config = _stitch.load("blip2.py").get_config(init_dir or None)
  _stitch.train_only(config, PROJECTION)
  config.optim.update(decay="cosine", b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.05, grad_clip=1.0)
  if stage == "stage1":
    # A fresh projection for the new LM; the rest comes from the BLIP-2 run.
    config.train.init_patterns = (r"^(vision|decoder)\.", r"^connector\.(?!out_proj\.)")
    config.optim.update(peak_lr=1e-4, end_lr_fraction=0.8, warmup_steps=5000)
    config.data.update(seq_len=128, global_batch_size=256, max_images_per_row=1)
    config.data.sources = _stitch.sources(
        pair=("pair", "gs://BUCKET/records/minigpt4_stage1_pairs", 1.0))  # LAION, CC, SBU
    config.train.update(steps=20_000, checkpoint_every=1000, keep=3, keep_every=5000)
  else:
    config.train.init_patterns = (".*",)
    config.optim.update(peak_lr=3e-5, end_lr_fraction=1 / 3, warmup_steps=200)
    config.data.update(seq_len=256, global_batch_size=12, max_images_per_row=1)
    config.data.sources = _stitch.sources(
        detailed=("conversation", "gs://BUCKET/records/minigpt4_cc_sbu_align", 1.0))
    config.train.update(steps=400, checkpoint_every=100, keep=2, keep_every=0)
  _stitch.chat_template(config, "vicuna_v0")
  return config
