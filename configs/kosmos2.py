"""KOSMOS-2 layout (Peng et al. 2023), weight-compatible with transformers' Kosmos-2.

    kosmos-import --format hf --src DIR/kosmos-2-patch14-224 --out /tmp/k2
    python -m kosmos.model.summary --config configs/kosmos2.py

Same sizes as KOSMOS-1 in the exact Kosmos-2 layout: sinusoidal positions offset by
pad_id + 1 = 2, attention_pool connector with 64 latent queries over L2-normalised,
post-LN'd CLIP ViT-L/14 features, vocab 65037 (XLM-R sentencepiece + grounding tokens: config.tokenizer.grounding holds the
processor's location-token ids, 32 x 32 grid).
"""

import ml_collections

from kosmos import defaults
from kosmos.data import grounding
from kosmos.model import connector, decoder, multimodal, vision


def get_config(arg=None):
  del arg
  config = defaults.base()
  vision_config = vision.default_config("L/14", image_size=224)
  vision_config.update(feature_layer=-1, feature_select="all", post_norm=True, l2_normalize=True)
  connector_config = connector.default_config("attention_pool", num_tokens=64)
  connector_config.update(num_heads=32)
  decoder_config = decoder.default_config()
  decoder_config.update(family="magneto", vocab_size=65037, d_model=2048, num_layers=24,
                        num_heads=32, ffn_dim=8192, positions="sinusoidal", position_offset=2,
                        max_len=2048)
  config.model = multimodal.default_config(vision=vision_config, connector=connector_config,
                                           decoder=decoder_config)
  # transformers' Kosmos-2 processor ids (XLM-R sentencepiece; what `kosmos-import` infers for
  # the published checkpoint, and what `kosmos-export` writes back to tokenizer.json for
  # AutoTokenizer, kosmos/interop/hf_tokenizer.py). XLM-R has no free id for
  # the image slots (the processor marks them with a position mask), so kosmos uses one
  # past the vocabulary; the model never looks slot ids up.
  # Piece ids are shifted by one (fairseq / XLM-R: <s> <pad> </s> <unk> come first).
  config.tokenizer.update(bos_id=0, pad_id=1, eos_id=2, unk_id=3, spm_id_offset=1,
                          image_start_id=64003, image_end_id=64004, image_slot_id=65037,
                          vector_slot_id=-1)
  # The location tokens at transformers' ids: <phrase>=64007 .. <grounding>=64012,
  # <patch_index_0000>=64013 .. <patch_index_1023>=65036 (kosmos.data.grounding).
  config.tokenizer.grounding.update(grounding.kosmos2_ids(decoder_config.vocab_size))
  config.model.image_slot_id = config.tokenizer.image_slot_id
  config.data.sources = ml_collections.ConfigDict()
  config.mesh.update(data=1, fsdp=-1, tensor=1)
  return config
