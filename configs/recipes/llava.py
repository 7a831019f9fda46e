"""LLaVA-1.5 7B (Liu et al. 2023, "Improved Baselines with Visual Instruction Tuning").

CLIP ViT-L/14 at 336 px (penultimate layer, 576 patch tokens, frozen) -> 2-layer GELU MLP
1024 -> 4096 -> 4096 -> Vicuna-7B v1.5 (Llama-2-7B shape: 32 layers, d 4096, 6.74B).
The model is configs/palme.py at 336 px, in transformers' LlavaForConditionalGeneration
layout, but `kosmos-export --format hf` refuses it as is: the image slot id (32000, one past
Vicuna's vocabulary) must be an in-vocabulary image_token_index for transformers (llava-hf
pads the vocabulary to 32064; kosmos cannot resize it yet). `--format params` works.

    kosmos-import --format hf --lm DIR/vicuna-7b-v1.5 --vision DIR/clip-vit-large-patch14-336 \
        --connector mlp --config configs/recipes/llava.py:stage1 --out /tmp/llava_init
    python data/prepare.py webdataset --input 'llava_pretrain_558k/*.tar' \
        --output gs://BUCKET/records/llava_pretrain_558k              # stage 1: pairs
    python data/prepare.py conversations --input llava_v1_5_mix665k.json \
        --image-dir llava_v1_5_images/ --output gs://BUCKET/records/llava_v1_5_mix665k
    # Stage 1, feature alignment: only the connector trains.
    kosmos-train --config configs/recipes/llava.py:stage1,/tmp/llava_init \
        --workdir gs://BUCKET/llava_stage1
    # Stage 2, visual instruction tuning: connector + LM train, the ViT stays frozen.
    kosmos-train --config configs/recipes/llava.py:stage2,gs://BUCKET/llava_stage1 \
        --config.tokenizer.path=/tmp/llava_init/tokenizer.model --workdir gs://BUCKET/llava_stage2
    kosmos-export --workdir gs://BUCKET/llava_stage2 --format params --out /tmp/llava_params
    kosmos-chat --workdir /tmp/llava_params --image cat.jpg

`arg`: "stage1" | "stage2", optionally ",INIT_DIR" (sets train.init_from and
tokenizer.path=INIT_DIR/tokenizer.model; a training workdir holds no tokenizer, hence the
explicit --config.tokenizer.path in stage 2).

Data: stage 1 reads `pair` records of LCS-558K (image + BLIP caption; the loss covers the
caption); stage 2 reads `conversation` records of llava_v1_5_mix665k (its image
conversations and its text-only ShareGPT ones in one file, `prepare.py conversations`),
rendered with LLaVA's v1 template (`chat_template="llava_v1"`: "<system> USER: <image>\n...
ASSISTANT: ...</s>"), the loss on the assistant's answers and their `</s>` only, as LLaVA.

The paper's hyper-parameters (both stages one epoch, cosine, 3 % warm-up, no weight decay,
AdamW (0.9, 0.999), HF Trainer's grad-norm clip 1.0):
    stage 1: LCS-558K BLIP-captioned pairs, batch 256, lr 1e-3 -> 2,181 steps
    stage 2: llava_v1_5_mix665k, batch 128, lr 2e-5 -> 5,198 steps
Approximations: a batch row holds one image (`max_images_per_row=1`), so 256 / 128 rows are
256 / 128 samples, but stage-2 rows may also pack a text-only conversation next to it
(LLaVA pads instead), and a conversation longer than a row continues in the next row.
Stage 1 trains `<s> <image> caption </s>` (LLaVA's "plain" template is `<image> caption\n`).
Text is tokenized between images and specials as whole strings, as LLaVA does, but LLaVA
starts each image conversation with "<image>\n" whatever the data says; kosmos keeps the
placeholder where the record has it (the 665K data put it first or last).
"""

import os

from kosmos import configs

_stitch = configs.load_module(os.path.join(os.path.dirname(os.path.abspath(__file__)), "_stitch.py"))

STEPS = {"stage1": 2181, "stage2": 5198}  # one epoch: 558,128 / 256 and 665,298 / 128


def get_config(arg=None):
  stage, init_dir = _stitch.parse_arg(arg)
  config = _stitch.llama7b(init_dir)
  config.model.vision.image_size = 336  # clip-vit-large-patch14-336: 24 x 24 = 576 tokens
  _stitch.llava_schedule(config, STEPS[stage], checkpoint_every=500, keep=2)
  if stage == "stage1":
    _stitch.train_only(config, r"^connector\.")
    config.optim.peak_lr = 1e-3
    config.data.update(seq_len=1024, global_batch_size=256, max_images_per_row=1)
    config.data.sources = _stitch.sources(
        pretrain=("pair", "gs://BUCKET/records/llava_pretrain_558k", 1.0))
  else:
    _stitch.train_only(config, ".*", frozen=(r"^vision\.",))
    config.optim.peak_lr = 2e-5
    config.data.update(seq_len=2048, global_batch_size=128, max_images_per_row=1)
    config.data.sources = _stitch.sources(
        instruct=("conversation", "gs://BUCKET/records/llava_v1_5_mix665k", 1.0))
  _stitch.chat_template(config, "llava_v1")
  return config
