"""Tiny SentencePiece models for tests, trained in a temp dir (no downloads).

`xlmr_like` has XLM-R's layout (the model Kosmos-2 ships as `sentencepiece.bpe.model`):
`<unk>`=0 `<s>`=1 `</s>`=2, no pad piece, unigram, nmt_nfkc normalisation, no byte fallback.
"""

from __future__ import annotations

import random

import sentencepiece as spm

WORDS = ("the cat sat on a mat while dogs ran over hills and rivers under blue skies near "
         "red houses with small gardens where children play games every morning").split()


def sentences(n: int = 400, seed: int = 0) -> list[str]:
  """`n` lines of words from WORDS, a comma, a number and "!"."""
  rng = random.Random(seed)
  return [" ".join(rng.choice(WORDS) for _ in range(12)) + f", {rng.randint(0, 999)}!"
          for _ in range(n)]


def xlmr_like(prefix: str, vocab_size: int = 200) -> str:
  """Trains an XLM-R-layout model at `prefix`.model; returns its path."""
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(sentences()), model_prefix=prefix, vocab_size=vocab_size,
      model_type="unigram", unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
      hard_vocab_limit=False, minloglevel=2)
  return prefix + ".model"
