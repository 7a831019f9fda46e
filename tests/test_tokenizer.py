"""Tokenizers: fixed special ids, round trips, specials never produced from text."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import sentencepiece as spm

from kosmos import defaults
from kosmos.data import records
from kosmos.data import tokenizer as tokenizer_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPECIAL_TEXT = "see <image> and </image> or <image_slot><vector_slot> <s> </s> <pad> <unk> ok"
TEXTS = ["Hello world, the cat sat on the mat.", "ünïcödé — 中文 😀 tabs\tand  spaces",
         SPECIAL_TEXT, "123 4567 89"]


@pytest.fixture(scope="module")
def record_dir(tmp_path_factory):
  directory = tmp_path_factory.mktemp("recs")
  rng = np.random.default_rng(0)
  words = "the cat sat on a mat while dogs ran over hills and rivers under skies".split()
  with records.ShardWriter(str(directory / records.shard_name("t", 0, 1))) as w:
    for i in range(300):
      text = " ".join(rng.choice(words, 25)) + " <image> tokens"
      w.write({"id": str(i), "source": "t", "kind": "interleaved",
               "segments": [{"text": text}, {"image": b"\x89PNG"}]})
  return str(directory)


@pytest.fixture(scope="module")
def trained(record_dir, tmp_path_factory):
  path = str(tmp_path_factory.mktemp("spm") / "spm.model")
  return tokenizer_lib.train_tokenizer([record_dir], 400, path), path


def test_trained_model_has_fixed_special_ids(trained):
  tok, path = trained
  sp = spm.SentencePieceProcessor(model_file=path)
  pieces = [sp.id_to_piece(i) for i in range(8)]
  assert pieces == ["<pad>", "<s>", "</s>", "<unk>", "<image>", "</image>", "<image_slot>",
                    "<vector_slot>"]
  assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id, tok.image_start_id, tok.image_end_id,
          tok.image_slot_id, tok.vector_slot_id) == tuple(range(8))


@pytest.mark.parametrize("kind", ["byte", "spm"])
def test_roundtrip_and_specials_never_from_text(kind, trained):
  tok = tokenizer_lib.ByteTokenizer() if kind == "byte" else trained[0]
  for text in TEXTS:
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert not set(ids) & set(range(8)), (text, ids)  # literal "<image>" is ordinary text
    assert all(0 <= i < tok.vocab_size for i in ids)
  # decode drops specials the pipeline inserted
  ids = [tok.bos_id, tok.image_start_id, tok.image_slot_id, tok.image_end_id] + tok.encode("hi")
  assert tok.decode(ids + [tok.eos_id]) == "hi"


def test_byte_tokenizer_ids():
  tok = tokenizer_lib.load(defaults.tokenizer())
  assert isinstance(tok, tokenizer_lib.ByteTokenizer) and tok.vocab_size == 264
  assert tok.encode("A\u00e9") == [65 + 8, 0xC3 + 8, 0xA9 + 8]
  config = defaults.tokenizer()
  config.image_slot_id = 100
  with pytest.raises(ValueError, match=r"specials at \[100\]"):
    tokenizer_lib.ByteTokenizer(config)


def test_foreign_model_with_offset_and_specials_outside_vocab(trained, tmp_path):
  """A fairseq/XLM-R-style mapping (Kosmos-2): <s>=0 <pad>=1 </s>=2 <unk>=3, pieces +1,
  <image>/</image> beyond the SentencePiece vocab."""
  _, path = trained
  sp = spm.SentencePieceProcessor(model_file=path)
  config = defaults.tokenizer()
  config.update(path=path, bos_id=0, pad_id=1, eos_id=2, unk_id=3, spm_id_offset=1,
                image_start_id=64003, image_end_id=64004, image_slot_id=64005,
                vector_slot_id=64006)
  tok = tokenizer_lib.load(config)
  assert tok.vocab_size == 64007
  ids = tok.encode("the cat sat")
  np.testing.assert_array_equal(ids, [i + 1 for i in sp.encode("the cat sat")])
  assert tok.decode(ids) == "the cat sat"
  assert tok.decode([0, 64003, 64005] + ids + [2]) == "the cat sat"
  for text in TEXTS:
    assert not set(tok.encode(text)) & {0, 1, 2, 64003, 64004, 64005, 64006}


def test_user_defined_special_piece_is_split_into_characters(record_dir, tmp_path):
  """A foreign model holding <image> as a user-defined piece (matched in text)."""
  prefix = str(tmp_path / "ud")
  texts = tokenizer_lib.record_texts([record_dir])
  spm.SentencePieceTrainer.train(sentence_iterator=texts, model_prefix=prefix, vocab_size=300,
                                 user_defined_symbols="<image>", byte_fallback=True,
                                 hard_vocab_limit=False, minloglevel=2)
  sp = spm.SentencePieceProcessor(model_file=prefix + ".model")
  image_id = sp.piece_to_id("<image>")
  assert image_id in sp.encode("a <image> b")  # SentencePiece itself matches it
  config = defaults.tokenizer()
  config.update(path=prefix + ".model", unk_id=0, bos_id=1, eos_id=2, pad_id=300,
                image_start_id=image_id, image_end_id=301, image_slot_id=302,
                vector_slot_id=303)
  tok = tokenizer_lib.load(config)
  ids = tok.encode("a <image> b")
  assert image_id not in ids
  assert tok.decode(ids) == "a <image> b"


def test_prepare_subcommand_trains_a_model(record_dir, tmp_path):
  out = tmp_path / "cli.model"
  result = subprocess.run(
      [sys.executable, os.path.join(ROOT, "data", "prepare.py"), "tokenizer", "--input",
       record_dir, "--vocab-size", "350", "--output", str(out)],
      capture_output=True, text=True, timeout=120, cwd=ROOT)
  assert result.returncode == 0, result.stderr
  assert '"vocab_size"' in result.stdout
  config = defaults.tokenizer()
  config.path = str(out)
  tok = tokenizer_lib.load(config)
  assert tok.decode(tok.encode(TEXTS[0])) == TEXTS[0]
