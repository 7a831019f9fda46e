"""PaLM-E-style 7B: a pretrained Llama-2-7B decoder reading CLIP ViT-L/14 features via an MLP.

Start from pretrained weights (PaLM-E, Driess et al. 2023, starts from a pretrained LM and
ViT; this is its 7B-scale analogue, with LLaVA-1.5's parameter layout):

    kosmos-import --format hf --lm DIR/Llama-2-7b-hf --vision DIR/clip-vit-large-patch14 \
        --connector mlp --config configs/palme.py --out /tmp/palme_init
    kosmos-train --config configs/palme.py --workdir gs://BUCKET/palme \
        --config.train.init_from=/tmp/palme_init \
        --config.tokenizer.path=/tmp/palme_init/tokenizer.model
    # or, the same: --config configs/palme.py:/tmp/palme_init

Check that it fits before reserving chips (any host, no TPU; figures in docs/performance.md):

    kosmos-compile --config configs/palme.py --topology v5p-256 --out /tmp/palme_v5p256.json

Decoder: llama family, 32 layers, d 4096, 32 heads (no GQA), SwiGLU 11008, RoPE (theta 1e4),
RMSNorm eps 1e-5, vocab 32000, untied embeddings: 6.74B parameters. Vision: CLIP ViT-L/14
at 224 px (0.30B), penultimate layer, 256 patch tokens (no class token), frozen. Connector:
2-layer GELU MLP 1024 -> 4096 -> 4096 (21M), fresh. 7.06B parameters in all; the LM and the
connector train (PaLM-E trains end to end; set --config.optim.frozen='()' for that).
Image spans hold 256 slot tokens and nothing else (no `<image>` / `</image>`, as in LLaVA);
the slot id is 32000, one past the Llama vocabulary, so every Llama token stays a text
token (slots are never embedded). For the same reason
`kosmos-export --format hf` refuses this config (transformers' LLaVA needs an in-vocabulary
image token; llava-hf pads the vocabulary to 32064): export with `--format params`, or start
from an imported llava-hf checkpoint (vocabulary 32064, slot 32000), which exports both ways.

Compute in bfloat16 with float32 master weights and AdamW moments; the decoder's 32 layers
and the ViT's are scanned (`scan_layers`), attention is splash on TPU (`auto`), the decoder
keeps its projections and attention outputs for the backward pass (remat `dots_attn`; the
ViT is frozen and first, so it needs no backward pass and no remat), and the loss makes its
logits 512 positions at a time. Mesh: all chips on fsdp (ZeRO-3 style; 7B x 12 bytes of
state spread over the slice). Batch: 512 rows of 2048 tokens (1M tokens per step), up to 6
images per row.

Expected (`kosmos-compile --config configs/palme.py --topology v5p-256` on a 2-core CPU
host, libtpu 0.0.42.1, 2026-12-06; docs/performance.md "Pod efficiency, fourth pass"): mesh
fsdp=128, per chip 29.78 GiB of 95 GiB (temporaries 29.10 GiB), XLA 3.296e14 + splash
kernels 2.474e13 FLOPs per chip (1.03x the model's, every loop counted per iteration),
predicted step 1.087 s, MFU 68.7 %; compiled in 47 s on the idle host.
"""

import ml_collections

from kosmos import defaults
from kosmos.model import connector, decoder, multimodal, vision

VOCAB = 32000  # Llama-2


def get_config(arg=None):
  """`arg`: a kosmos-import output directory to start from (sets init_from and tokenizer)."""
  config = defaults.base()
  vision_config = vision.default_config("L/14", variant="clip", image_size=224)
  # LLaVA's (and kosmos-import's) choice for CLIP: penultimate layer, patch tokens only.
  vision_config.update(feature_layer=-2, feature_select="patch", post_norm=False,
                       l2_normalize=False, dtype="bfloat16", remat="none", scan_layers=True)
  connector_config = connector.default_config("mlp")
  connector_config.update(num_heads=32, dtype="bfloat16")
  decoder_config = decoder.default_config()
  decoder_config.update(family="llama", vocab_size=VOCAB, d_model=4096, num_layers=32,
                        num_heads=32, num_kv_heads=32, head_dim=128, ffn_dim=11008,
                        positions="rope", position_offset=0, rope_theta=10000.0, max_len=4096,
                        norm_eps=1e-5, tie_embeddings=False, scale_embeddings=False,
                        dtype="bfloat16", param_dtype="float32", remat="dots_attn",
                        attention="auto", scan_layers=True)
  config.model = multimodal.default_config(vision=vision_config, connector=connector_config,
                                           decoder=decoder_config)
  config.model.image_slot_id = VOCAB  # one past the vocabulary: never embedded
  config.model.vector_slot_id = -1
  # Llama's SentencePiece ids (as kosmos-import writes them). LLaVA's and PaLM-E's layout:
  # an image is its slots alone, no <image> / </image> (ids 4 / 5 are byte pieces in Llama).
  config.tokenizer.update(unk_id=0, pad_id=0, bos_id=1, eos_id=2, image_slot_id=VOCAB,
                          vector_slot_id=-1, image_start_id=-1, image_end_id=-1)

  config.data.update(seq_len=2048, global_batch_size=512, max_images_per_row=6)
  config.optim.loss_chunk = 512  # logits 512 positions at a time (kosmos.train.loss)
  config.data.sources = ml_collections.ConfigDict({
      "pair": dict(path="gs://BUCKET/records/pair", kind="pair", weight=0.5),
      "interleaved": dict(path="gs://BUCKET/records/interleaved", kind="interleaved", weight=0.3),
      "text": dict(path="gs://BUCKET/records/text", kind="text", weight=0.2),
  })
  # Continued training of a pretrained LM: small peak lr, Llama's betas, no decay on top.
  config.optim.update(peak_lr=2e-5, warmup_steps=500, decay="cosine", b1=0.9, b2=0.95,
                      eps=1e-8, weight_decay=0.0, grad_clip=1.0,
                      frozen=(r"^vision\.",))
  config.train.update(steps=20_000, checkpoint_every=1000, keep=3, keep_every=5000)
  if arg:
    config.train.init_from = arg
    config.tokenizer.path = f"{arg}/tokenizer.model"
  config.mesh.update(data=1, fsdp=-1, tensor=1)
  return config
