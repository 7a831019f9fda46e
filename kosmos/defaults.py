"""Default config sections shared by every `configs/*.py` file.

A config has nested sections; each part of the code receives its own section:

    config.model.vision / .connector / .decoder   model parts (kosmos.model)
    config.model.image_slot_id, .vector_slot_id   placeholder ids the model fills
    config.tokenizer                              SentencePiece path and special-token ids
    config.data                                   sources, sequence length, batch, images per row
    config.optim                                  AdamW, schedule, clipping, freezing, LoRA
    config.train                                  steps, logging, checkpoints, faults
    config.eval                                   tasks evaluated every train.eval_every steps
    config.mesh, config.sharding_rules            the only place physical mesh axes are named
"""

from __future__ import annotations

import ml_collections

from kosmos.data import chat
from kosmos.data import images as images_lib

# Fixed ids of the special tokens in tokenizers kosmos trains (kosmos.data.tokenizer).
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
IMAGE_START_ID, IMAGE_END_ID, IMAGE_SLOT_ID, VECTOR_SLOT_ID = 4, 5, 6, 7

# Logical axis -> mesh axes. Params: vocab, embed, mlp, heads, kv_heads, head_dim, latents,
# layers (the leading axis of scanned stacks, never sharded).
# Activations: batch, length, act_embed, act_mlp, act_heads.
SHARDING_RULES = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("latents", None),
    ("layers", None),
    ("length", None),
    ("act_embed", None),
    ("act_mlp", "tensor"),
    ("act_heads", "tensor"),
    ("act_vocab", "tensor"),
)


def tokenizer() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      path="",  # SentencePiece model; "" = the byte-level fallback (tests, tiny demos)
      pad_id=PAD_ID, bos_id=BOS_ID, eos_id=EOS_ID, unk_id=UNK_ID,
      image_start_id=IMAGE_START_ID, image_end_id=IMAGE_END_ID,
      image_slot_id=IMAGE_SLOT_ID, vector_slot_id=VECTOR_SLOT_ID,
      spm_id_offset=0,  # added to SentencePiece piece ids (1 for fairseq/XLM-R, Kosmos-2)
      grounding=grounding(),
      # how conversations are rendered (kosmos.data.chat): system prompt, role formats
      chat_template=chat.config(chat.DEFAULT),
  ))


def grounding() -> ml_collections.ConfigDict:
  """KOSMOS-2 location tokens (kosmos.data.grounding): a grid x grid image grid, the ids of the
  tags <phrase> </phrase> <object> </object> </delimiter_of_multi_objects/> <grounding>, and
  of <patch_index_0000> (the grid*grid cells follow). grid=0: no grounding."""
  return ml_collections.ConfigDict(dict(
      grid=0, phrase_id=-1, phrase_end_id=-1, object_id=-1, object_end_id=-1, delimiter_id=-1,
      grounding_id=-1, first_patch_id=-1))


def data() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      # name -> {path: record dir, kind: text|pair|interleaved|conversation, weight: token share}
      sources={},
      seq_len=2048,
      global_batch_size=8,
      max_images_per_row=8,  # M in the batch format
      max_images_per_doc=5,  # KOSMOS-1's cap for interleaved documents
      num_shards=0,  # data shards (0 = one per process); kosmos.data.shards
      workers=0,  # Grain mp_prefetch workers per process (0 = in-process)
      shuffle_seed=0,
      max_bad_fraction=0.01,  # stop when more records than this fraction are bad
      bad_check_min_records=1000,  # ... once a source has delivered this many records
      packing_bins=8,  # rows filled together by the first-fit packer (kosmos.data.packing)
      min_piece_tokens=16,  # shortest piece a split document may leave in a row
      # larger images are skipped as decompression bombs; the converters drop them too
      max_image_pixels=images_lib.DEFAULT_MAX_PIXELS,
      max_vectors_per_row=0,  # V; vectors are on when this and vector_dim are > 0
      vector_dim=0,  # D of PaLM-E style state vectors (one vector-slot token each)
      mix_estimate_records=256,  # records per source read to estimate tokens per document
      prefetch_buffer=4,  # batches buffered per mp_prefetch worker
      read_threads=2,  # threads decoding records per source (Pillow releases the GIL)
      read_buffer=32,  # decoded documents buffered per source
  ))


def optim() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      peak_lr=2e-4, end_lr_fraction=0.0, warmup_steps=375, decay="linear",
      b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.01, grad_clip=1.0, z_loss=0.0,
      accum_steps=1,
      loss_chunk=0,  # positions whose logits exist at once (kosmos.train.loss); 0 = all
      trainable=(".*",),  # param-path regexes that train; the rest is frozen
      frozen=(),  # param-path regexes frozen even if matched above
  ))


def train() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      steps=1000, log_every=10, checkpoint_every=500, keep=3, keep_every=0,
      eval_every=0, nan_policy="stop",  # stop | skip
      max_consecutive_skips=20,  # with nan_policy="skip": more in a row stop the run
      signal_check_every=10,  # steps between multi-host agreements on SIGTERM/SIGINT
      init_from="",  # params-only checkpoint or imported workdir
      init_patterns=(".*",),
      # XLA compiler options for the train step, "name=value,name=value" (jax.jit's
      # compiler_options); `xla_tpu_*` ones only when compiling for TPU.
      xla_options="",
  ))


def mesh() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, dcn_data=1))


def base() -> ml_collections.ConfigDict:
  """Every section but `model`, at its defaults."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.tokenizer = tokenizer()
  config.data = data()
  config.optim = optim()
  config.train = train()
  config.eval = ml_collections.ConfigDict(dict(tasks=()))  # kosmos.train.eval_hook
  config.mesh = mesh()
  config.sharding_rules = SHARDING_RULES
  return config
