"""`python data/prepare.py tokenizer --input RECORD_DIR [...] --vocab-size N --output spm.model`.

Trains a SentencePiece model on the text segments of record directories with the fixed
special ids of `kosmos.defaults` (<pad>=0 <s>=1 </s>=2 <unk>=3 <image>=4 </image>=5
<image_slot>=6 <vector_slot>=7, byte fallback on); see `kosmos.data.tokenizer.train_tokenizer`.
Point `config.tokenizer.path` at the output. `--grounding-grid P` adds KOSMOS-2's location
tokens (six tags, P*P cells) as user-defined pieces from id 8; the printed
`tokenizer.grounding` section goes into the config (`kosmos.data.grounding.trained_ids(8, P)`).
"""

from __future__ import annotations

import argparse
import json
import os
import time

from kosmos.data import grounding
from kosmos.data import tokenizer as tokenizer_lib

DESCRIPTION = "train a SentencePiece tokenizer (fixed special ids) on record directories"


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--input", nargs="+", required=True,
                      help="record directories (ArrayRecord shards made by prepare.py)")
  parser.add_argument("--output", required=True, help="model file to write, e.g. spm.model")
  parser.add_argument("--vocab-size", type=int, default=32000)
  parser.add_argument("--model-type", default="unigram", choices=("unigram", "bpe"))
  parser.add_argument("--character-coverage", type=float, default=0.9995)
  parser.add_argument("--max-records", type=int, default=0,
                      help="read at most this many records (0 = all)")
  parser.add_argument("--input-sentence-size", type=int, default=2_000_000,
                      help="SentencePiece samples at most this many text segments")
  parser.add_argument("--grounding-grid", type=int, default=0,
                      help="add KOSMOS-2 location tokens for a P x P grid (32 as KOSMOS-2; 0 = none)")


def main(args: argparse.Namespace) -> int:
  for directory in args.input:
    if not os.path.isdir(directory):
      raise SystemExit(f"error: --input {directory!r} is not a directory")
  start = time.time()
  tok = tokenizer_lib.train_tokenizer(
      args.input, args.vocab_size, args.output, model_type=args.model_type,
      character_coverage=args.character_coverage, max_records=args.max_records,
      input_sentence_size=args.input_sentence_size, grounding_grid=args.grounding_grid)
  report = {"output": args.output, "vocab_size": tok.vocab_size,
            "seconds": round(time.time() - start, 1)}
  if args.grounding_grid:
    report["tokenizer.grounding"] = grounding.trained_ids(tokenizer_lib.GROUNDING_FIRST_ID,
                                                          args.grounding_grid)
  print(json.dumps(report))
  return 0
