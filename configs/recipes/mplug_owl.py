"""mPLUG-Owl 7B (Ye et al. 2023): ViT + visual abstractor trained on a frozen LM, then LoRA.

CLIP ViT-L/14 at 224 px (last layer, all 257 tokens, post-LN) -> visual abstractor as a
resampler (64 queries, 6 layers, width 1024, 16 heads, FFN 4096) -> linear 1024 -> 4096
(`connector.out_proj`, mPLUG-Owl's visual_fc) -> LLaMA-7B (6.74B).

    kosmos-import --format hf --lm DIR/llama-7b --vision DIR/clip-vit-large-patch14 \
        --connector resampler --num-tokens 64 --config configs/recipes/mplug_owl.py:stage1 \
        --out /tmp/mplug_owl_init
    # Stage 1: the ViT and the abstractor train, the LM is frozen.
    kosmos-train --config configs/recipes/mplug_owl.py:stage1,/tmp/mplug_owl_init \
        --workdir gs://BUCKET/mplug_owl_stage1
    # Stage 2: LoRA (rank 8, alpha 32) on the LM's q_proj and v_proj; only the adapters train.
    kosmos-train --config configs/recipes/mplug_owl.py:stage2,gs://BUCKET/mplug_owl_stage1 \
        --config.tokenizer.path=/tmp/mplug_owl_init/tokenizer.model \
        --workdir gs://BUCKET/mplug_owl_stage2

`arg`: "stage1" | "stage2", optionally ",INIT_DIR" (train.init_from and
INIT_DIR/tokenizer.model; training workdirs hold no tokenizer, so pass tokenizer.path).
Stage 2's adapters are absent from the stage-1 run and start fresh (B = 0: the model starts
unchanged); `kosmos-export` folds them into the kernels.

What mPLUG-Owl did, and what this does:
- Stage 1: 50k steps of 2.1M tokens (~104B tokens; LAION-400M, COYO-700M, CC, COCO), AdamW
  (0.9, 0.98), lr 1e-4, 2k warm-up steps, cosine decay, weight decay 0.1 (as we read the
  paper), 224 px. Here: 1,024 rows of 2,048 tokens (2.1M), up to 16 images a row.
- Stage 2: 2k steps, batch 256, lr 2e-5, on text-only (Alpaca, Vicuna, Baize) and
  multimodal (LLaVA) instructions together; the token shares 0.5 / 0.5, 50 warm-up steps
  and no weight decay are ours (unpublished).
  LoRA targets follow the released training code
  (`target_modules=r'.*language_model.*\\.(q_proj|v_proj)'`, r=8, lora_alpha=32, dropout
  0.05 -- kosmos has no adapter dropout). The paper's abstract says the abstractor is tuned
  jointly with LoRA in stage 2; the released code trains the adapters only, as here. For the
  abstract's variant: --config.optim.trainable="('\\.lora_[ab]$', '^connector\\.')".
- The abstractor is approximated by the resampler: mPLUG-Owl's queries cross-attend to
  [image features; queries] as ours do, but its FFN is SwiGLU (2,816 wide) and its layers
  are post-LN; no weights of mPLUG-Owl import (train from CLIP + LLaMA as the paper did).
- Data: stage 1 reads `pair` records (loss on the caption); stage 2 reads `conversation`
  records of both instruction sets (`prepare.py conversations`; the text-only ones in
  ShareGPT form), rendered with mPLUG-Owl's conversation (`chat_template="mplug_owl"`:
  "<system>\nHuman: <image>...\nAI: ...\n"), the loss on the AI's answers and their end
  of turn only, as mPLUG-Owl masks the instruction prompts.
- No export to transformers (a resampler connector has no transformers class).
"""

import os

from kosmos import configs

_stitch = configs.load_module(os.path.join(os.path.dirname(os.path.abspath(__file__)), "_stitch.py"))

LORA_TARGETS = ("q_proj", "v_proj")


def get_config(arg=None):
  stage, init_dir = _stitch.parse_arg(arg)
  config = _stitch.llama7b(init_dir, llama1=True)
  config.model.vision.update(feature_layer=-1, feature_select="all", post_norm=True)
  config.model.connector = _stitch.resampler(num_tokens=64, width=1024, depth=6, num_heads=16)
  config.optim.update(decay="cosine", b1=0.9, b2=0.98, eps=1e-8, grad_clip=1.0)
  if stage == "stage1":
    _stitch.train_only(config, r"^(vision|connector)\.")
    config.model.vision.remat = "full"  # the ViT trains: its activations are rematerialised
    config.optim.update(peak_lr=1e-4, warmup_steps=2000, weight_decay=0.1)
    config.data.update(seq_len=2048, global_batch_size=1024, max_images_per_row=16)
    config.data.sources = _stitch.sources(
        pair=("pair", "gs://BUCKET/records/mplug_owl_pairs", 1.0))  # LAION, COYO, CC, COCO
    config.train.update(steps=50_000, checkpoint_every=1000, keep=3, keep_every=10_000)
  else:
    config.model.decoder.lora.update(rank=8, alpha=32.0, targets=LORA_TARGETS)
    _stitch.train_only(config, r"\.lora_[ab]$")
    config.optim.update(peak_lr=2e-5, warmup_steps=50, weight_decay=0.0)
    config.data.update(seq_len=2048, global_batch_size=256, max_images_per_row=1)
    config.data.sources = _stitch.sources(
        text=("conversation", "gs://BUCKET/records/mplug_owl_text_instruct", 0.5),  # Alpaca, Vicuna, Baize
        multimodal=("conversation", "gs://BUCKET/records/llava_instruct_158k", 0.5))
    config.train.update(steps=2000, checkpoint_every=500, keep=2, keep_every=0)
  _stitch.chat_template(config, "mplug_owl")
  return config
