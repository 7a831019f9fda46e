"""Tiny native-multimodal model that trains on 2 CPU cores in minutes (`make demo`).

    python -m kosmos.demo --out demo_out          # prepares data, trains, evaluates, exports
    # or by hand:
    python data/prepare.py shapes --output demo_out/data --image-size 32 \
        --max-images-per-page 9 --pairs 20000 --pages 8000 --texts 2000 \
        --grounded 4000 --refexp-train 20 --refexp-val 200
    python data/prepare.py tokenizer \
        --input demo_out/data/records/{pair,interleaved,text,grounded} \
        --output demo_out/data/tokenizer.model --vocab-size 582 --model-type bpe \
        --grounding-grid 8
    kosmos-train --config configs/demo.py:demo_out/data --workdir demo_out/workdir

Kosmos-2 layout, so `kosmos-export --format hf` writes a `Kosmos2ForConditionalGeneration`:
a CLIP ViT on 32-px images (8-px patches: 16 patches + class token, width 96, 2 blocks,
post-LN, L2-normalised features), the `attention_pool` connector with 8 latent queries
(8 image tokens per image), and a 4-layer magneto decoder (d 128, 4 heads) with sinusoidal
positions offset by pad_id + 1 = 1, on a BPE SentencePiece model trained on the world's
text (`DATA/tokenizer.model`; words are mostly one piece): 512 pieces plus KOSMOS-2's six
grounding tags and 8 x 8 location tokens `<patch_index_0000>`..`<patch_index_0063>` (4-px
cells) as user-defined pieces, ids 8-77. The `grounded` source (kosmos.demo.grounding) links
the objects' expressions to their boxes, `<grounding><phrase> the small green
square</phrase><object><patch_index_0000><patch_index_0018></object>`; in 700 steps the
model learns the format and a box size per size word but not where the object is (referring
accuracy 15.0 vs 12.5 with gray images, 200 expressions; docs/performance.md, Demo
grounding).

`arg` is the data root made by `python data/prepare.py shapes --output DATA` (+ the
tokenizer, see kosmos/demo/runner.py); pages there hold up to 9 images so that 4-shot binding
episodes (8 supports + a query) and 8-shot task-induction pages occur in training.
Measured (docs/performance.md, "Demo, eleventh session", 2026-12-06, seed 0, 2 host devices,
8 min 21 s for the whole `make demo`): in the default 700 steps the loss falls from 4.61
(first 25 steps) to 0.57; task induction 4.2 / 50.4 / 49.2 / 42.9 / 40.8 % at 0/1/2/4/8
shots (gray images 4.6 / 34.2 / 30.4 / 30.4 / 30.4); colour questions 57.5 / 59.2 / 56.7 /
53.3 at 0/1/2/4 shots against 15.0-31.7 with gray images; CIDEr 85.2 / 108.0 / 102.3 / 110.9
against 35.8-68.6 (without the grounded source, "Demo, ninth session": CIDEr 235.6, colour
86.7 at 0 shots; cause not isolated); referring 19.5 vs 16.5 with gray images; in-context
fast binding does not emerge (chance at 4 shots). Two reasons, measured
(docs/performance.md, Demo): the word follows the constant `</image>`, so the copy circuit
must match two tokens back, which this decoder does not learn within 600 steps on symbolic
episodes where the one-back match forms by 250 (`kosmos.bench.binding --layout kosmos`); and
with images for keys it does not form even without `</image>`, with 2 tokens per image,
binding-dense data and 3 000 steps, nor when the query image is a pixel-identical copy of
its supports: the image token right before the word differs between an episode's two kinds
by a third of the distance between two words or less (the attention pool averages mostly the
shared background).
"""

import ml_collections

from kosmos import defaults
from kosmos.data import grounding
from kosmos.data import tokenizer
from kosmos.model import connector, decoder, multimodal, vision

MAX_IMAGES = 9  # a 4-shot 2-way binding episode: 8 supports + the query
GROUNDING_GRID = 8  # location tokens: 8 x 8 cells of 4 px on the 32-px images
# 512 BPE pieces + the 6 grounding tags and 64 cells as user-defined pieces (ids 8-77): the
# world's text tokenizes exactly as with a 512-piece model without them (measured).
VOCAB_SIZE = 512 + len(grounding.pieces(GROUNDING_GRID))


def get_config(arg=None):
  config = defaults.base()
  root = arg or "demo_out/data"
  vision_config = vision.default_config("Ti/8", image_size=32)
  vision_config.update(width=96, depth=2, num_heads=3, mlp_dim=192, feature_layer=-1,
                       feature_select="all", post_norm=True, l2_normalize=True)
  # Initialised so that image and token embeddings are O(1) next to the sinusoidal
  # positions from step 0: torchscale's embedding init d**-0.5 (not 0.02) and the
  # connector's projection at 0.5 (not 0.02, which on L2-normalised ViT features leaves the
  # image tokens ~25x smaller than a token). With both, the images are used within 300
  # steps; with neither, not at all at 200 (docs/performance.md, Demo).
  connector_config = connector.default_config("attention_pool", num_tokens=8)
  connector_config.update(num_heads=4, init_std=0.5)
  decoder_config = decoder.default_config()
  decoder_config.update(family="magneto", vocab_size=VOCAB_SIZE, d_model=128, num_layers=4,
                        num_heads=4, ffn_dim=512, positions="sinusoidal", position_offset=1,
                        max_len=512, embed_init_std=128 ** -0.5)
  config.model = multimodal.default_config(vision=vision_config, connector=connector_config,
                                           decoder=decoder_config)
  config.tokenizer.path = f"{root}/tokenizer.model"
  config.tokenizer.grounding.update(grounding.trained_ids(tokenizer.GROUNDING_FIRST_ID,
                                                          GROUNDING_GRID))
  config.data.update(seq_len=192, global_batch_size=16, max_images_per_row=12,
                     max_images_per_doc=MAX_IMAGES, packing_bins=4, mix_estimate_records=64)
  config.data.sources = ml_collections.ConfigDict({
      "text": dict(path=f"{root}/records/text", kind="text", weight=0.1),
      "pair": dict(path=f"{root}/records/pair", kind="pair", weight=0.35),
      "interleaved": dict(path=f"{root}/records/interleaved", kind="interleaved", weight=0.55),
      "grounded": dict(path=f"{root}/records/grounded", kind="pair", weight=0.15),
  })
  config.optim.update(peak_lr=2e-3, warmup_steps=50, decay="cosine", end_lr_fraction=0.05,
                      grad_clip=1.0, weight_decay=0.01)
  config.train.update(steps=700, log_every=25, checkpoint_every=100000, keep=1)
  config.mesh.update(data=-1, fsdp=1, tensor=1)
  return config
