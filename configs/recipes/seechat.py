"""SEEChat v1.0 (360 AI Research, 2023): CLIP ViT-L/14 + a linear bridge + a pretrained chat LM.

CLIP ViT-L/14 at 224 px (penultimate layer, 256 patch tokens, frozen) -> linear
1024 -> 4096 -> a llama-family 7B chat LM (Llama-2-7B shape, 6.74B). LLaVA layout (linear
projector), but `kosmos-export --format hf` refuses it as is: the image slot id (32000)
lies outside the LM's vocabulary (see llava.py); `--format params` works.

    kosmos-import --format hf --lm DIR/CHAT_LM_7B --vision DIR/clip-vit-large-patch14 \
        --connector linear --config configs/recipes/seechat.py:stage1 --out /tmp/seechat_init
    # Stage 1, image-text alignment: only the bridge (connector) trains.
    kosmos-train --config configs/recipes/seechat.py:stage1,/tmp/seechat_init \
        --workdir gs://BUCKET/seechat_stage1
    # Stage 2, human alignment on instruction data: the bridge and the LM train.
    kosmos-train --config configs/recipes/seechat.py:stage2,gs://BUCKET/seechat_stage1 \
        --config.tokenizer.path=/tmp/seechat_init/tokenizer.model --workdir gs://BUCKET/seechat_stage2

`arg`: "stage1" | "stage2", optionally ",INIT_DIR" (train.init_from and
INIT_DIR/tokenizer.model; training workdirs hold no tokenizer, so pass tokenizer.path).

What SEEChat published (its README): stage 1 trains the bridge on the Zero corpus (23M
Chinese image-text pairs); stage 2 fine-tunes the bridge and the LM on LLaVA's 158K
instructions translated to Chinese. No hyper-parameters are public: we use LLaVA-1's
(Liu et al. 2023) for the same two stages, sized to SEEChat's data -- stage 1 lr 2e-3,
batch 128, one epoch of 23M pairs (179,688 steps); stage 2 lr 2e-5, batch 32, 3 epochs
of 158K (14,813 steps); cosine, 3 % warm-up, no weight decay, AdamW (0.9, 0.999).

Approximations: SEEChat's LM is ChatGLM-6B (a GLM, not a kosmos family and not importable);
any LlamaForCausalLM chat model of Llama-2-7B shape stands in (e.g. Llama-2-7b-chat or a
Chinese llama-family chat model; set decoder fields for another shape). The README says
the bridge follows BLIP-2 and LLaVA; the table's linear projection is LLaVA-1's.
Data: stage 1 reads `pair` records (loss on the caption); stage 2 reads `conversation`
records of the translated LLaVA instructions (`prepare.py conversations`), rendered with
the Llama-2 chat template of the stand-in LM (`chat_template="llama2"`: "[INST] <<SYS>>
...<</SYS>> ... [/INST] ... </s><s>[INST] ..."), the loss on the answers and their `</s>`
only. ChatGLM's own format ("[Round 1]\n\n问：...\n\n答：") fits ChatGLM, not this LM.
"""

import os

from kosmos import configs
from kosmos.model import connector

_stitch = configs.load_module(os.path.join(os.path.dirname(os.path.abspath(__file__)), "_stitch.py"))

STEPS = {"stage1": 179_688, "stage2": 14_813}  # 23M / 128; 3 x 158K / 32


def get_config(arg=None):
  stage, init_dir = _stitch.parse_arg(arg)
  config = _stitch.llama7b(init_dir)
  config.model.connector = connector.default_config("linear")
  config.model.connector.dtype = "bfloat16"
  _stitch.llava_schedule(config, STEPS[stage], checkpoint_every=1000, keep=3)
  if stage == "stage1":
    _stitch.train_only(config, r"^connector\.")
    config.optim.peak_lr = 2e-3
    config.data.update(seq_len=512, global_batch_size=128, max_images_per_row=1)
    config.data.sources = _stitch.sources(zero=("pair", "gs://BUCKET/records/zero_23m", 1.0))
  else:
    _stitch.train_only(config, ".*", frozen=(r"^vision\.",))
    config.optim.peak_lr = 2e-5
    config.data.update(seq_len=2048, global_batch_size=32, max_images_per_row=1)
    config.data.sources = _stitch.sources(
        instruct=("conversation", "gs://BUCKET/records/llava_instruct_158k_zh", 1.0))
  _stitch.chat_template(config, "llama2")
  return config
