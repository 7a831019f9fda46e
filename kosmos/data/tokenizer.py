"""Text tokenizers with fixed special-token ids: SentencePiece, and a byte-level fallback.

Both classes share one interface (`Tokenizer`): `encode(text) -> list[int]` (no BOS/EOS),
`decode(ids) -> str` (special ids are skipped), `vocab_size`, and the special ids from
`config.tokenizer` (`pad_id bos_id eos_id unk_id image_start_id image_end_id image_slot_id
vector_slot_id`; -1 marks an absent `vector_slot_id`, `image_start_id` or `image_end_id`:
LLaVA's prompts hold an image as its slots alone, see `image_span`).

Guarantee: `encode` never returns `bos/eos/pad/<image>/</image>/<image_slot>/<vector_slot>`
ids for any text, including text that contains those literal strings. Specials enter a
sequence only when the pipeline builds it (`kosmos.data.pipeline`). How:

* trained models (`train_tokenizer`) hold `<image> </image> <image_slot> <vector_slot>` as
  SentencePiece *control* symbols, which SentencePiece never matches in input text; the
  literal string "<image>" is therefore tokenized as ordinary characters ("<", "image", ">").
* a loaded foreign model may hold a special as a *user-defined* piece (matched in text); any
  such id in the output is replaced by the ids of the piece's characters (byte fallback where
  a character has no piece), i.e. the literal is split into characters.
* the byte tokenizer maps bytes to ids 8..263, disjoint from the specials 0..7.

The KOSMOS-2 location tokens (`config.tokenizer.grounding`, `kosmos.data.grounding`) are kept
out of `encode` the same way: a trained model holds them as user-defined pieces
(`train_tokenizer(..., grounding_grid=P)`), which `encode` splits into characters, and
`decode` skips them; only `kosmos.data.grounding.Grounding` turns tags into their ids.

Loading a foreign model (e.g. the XLM-R SentencePiece model shipped with Kosmos-2, whose
fairseq/HF ids are `<s>=0 <pad>=1 </s>=2 <unk>=3` and piece ids shifted by one) is set by
`config.tokenizer.spm_id_offset` (added to every SentencePiece piece id) and the special ids;
ids outside the SentencePiece vocab (Kosmos-2's `<image>`=64003) are allowed: `vocab_size`
grows to cover them and `encode` never emits them.
"""

from __future__ import annotations

import os
import tempfile
from typing import Iterable, Iterator, Protocol, Sequence

import ml_collections
import sentencepiece as spm
from array_record.python import array_record_module

from kosmos import defaults
from kosmos.data import grounding
from kosmos.data import records

SPECIAL_FIELDS = ("pad_id", "bos_id", "eos_id", "unk_id", "image_start_id", "image_end_id",
                  "image_slot_id", "vector_slot_id")
# Pieces of the specials in models that `train_tokenizer` writes, at the fixed ids 4..7.
CONTROL_PIECES = ("<image>", "</image>", "<image_slot>", "<vector_slot>")
# Where `train_tokenizer(..., grounding_grid=P)` puts the location pieces (after the controls).
GROUNDING_FIRST_ID = 4 + len(CONTROL_PIECES)
BYTE_OFFSET = 8
BYTE_VOCAB_SIZE = BYTE_OFFSET + 256


class Tokenizer(Protocol):
  vocab_size: int
  pad_id: int
  bos_id: int
  eos_id: int
  unk_id: int
  image_start_id: int
  image_end_id: int
  image_slot_id: int
  vector_slot_id: int

  def encode(self, text: str) -> list[int]: ...

  def decode(self, ids: Iterable[int]) -> str: ...


# Specials a tokenizer may lack (-1): a model with no vector inputs has no vector slot;
# LLaVA writes an image as its slots alone, with no `<image>` / `</image>` around them.
OPTIONAL_FIELDS = ("vector_slot_id", "image_start_id", "image_end_id")
# Llama-family vocabularies have no pad piece; their pad may share the unk id.
MAY_SHARE = frozenset({frozenset({"pad_id", "unk_id"})})


def image_span(tok: "Tokenizer", tokens_per_image: int) -> list[int]:
  """The tokens of one image: `<image>`, `tokens_per_image` slots, `</image>`; a boundary
  whose id is -1 (absent, as in LLaVA) is left out."""
  return ([tok.image_start_id] * (tok.image_start_id >= 0) + [tok.image_slot_id] * tokens_per_image
          + [tok.image_end_id] * (tok.image_end_id >= 0))


class _Specials:
  """Holds the special ids from a `config.tokenizer` section and checks they are distinct.

  -1 marks an absent optional special (`OPTIONAL_FIELDS`); pad may equal unk.
  """

  def _set_specials(self, config: ml_collections.ConfigDict) -> None:
    ids = {field: int(config[field]) for field in SPECIAL_FIELDS}
    for field, value in ids.items():
      if value < 0 and not (value == -1 and field in OPTIONAL_FIELDS):
        raise ValueError(f"config.tokenizer.{field}={value} must be >= 0"
                         + (" (or -1 = absent)" if field in OPTIONAL_FIELDS else ""))
      setattr(self, field, value)
    present = {f: v for f, v in ids.items() if v >= 0}
    for a in present:
      for b in present:
        if a < b and present[a] == present[b] and frozenset({a, b}) not in MAY_SHARE:
          raise ValueError(f"config.tokenizer special ids must be distinct, got {a}={present[a]} "
                           f"and {b}={present[b]} (all: {ids})")
    self.special_ids = frozenset(present.values())


class ByteTokenizer(_Specials):
  """UTF-8 bytes as ids `byte + 8`; vocab 264. For tests and tiny demos (no model file)."""

  def __init__(self, config: ml_collections.ConfigDict | None = None):
    self._set_specials(config if config is not None else defaults.tokenizer())
    outside = {i for i in self.special_ids if i >= BYTE_OFFSET}
    if outside:
      raise ValueError(
          f"the byte tokenizer reserves ids 0..{BYTE_OFFSET - 1} for specials; config.tokenizer "
          f"puts specials at {sorted(outside)}, which are byte ids. Use the default ids or set "
          "config.tokenizer.path to a SentencePiece model.")
    self.vocab_size = BYTE_VOCAB_SIZE

  def encode(self, text: str) -> list[int]:
    return [b + BYTE_OFFSET for b in text.encode("utf-8")]

  def decode(self, ids: Iterable[int]) -> str:
    data = bytes(i - BYTE_OFFSET for i in ids if BYTE_OFFSET <= i < BYTE_VOCAB_SIZE)
    return data.decode("utf-8", errors="replace")


class SentencePieceTokenizer(_Specials):
  """A SentencePiece model with special ids (and an id offset) from `config.tokenizer`."""

  def __init__(self, config: ml_collections.ConfigDict):
    self._set_specials(config)
    if not os.path.exists(config.path):
      raise FileNotFoundError(f"config.tokenizer.path={config.path!r} does not exist")
    self._sp = spm.SentencePieceProcessor(model_file=config.path)
    self.offset = int(config.get("spm_id_offset", 0))
    self._strips_spaces = self._sp.encode(" a") == self._sp.encode("a")
    size = self._sp.get_piece_size()
    self.vocab_size = max(size + self.offset, max(self.special_ids) + 1)
    sp_unk = self._sp.unk_id()
    # spm id -> kosmos id for the spm ids that are not shifted by the offset.
    self._from_sp = {sp_unk: self.unk_id}
    for field, sp_id in (("bos_id", self._sp.bos_id()), ("eos_id", self._sp.eos_id()),
                         ("pad_id", self._sp.pad_id())):
      if sp_id >= 0:
        self._from_sp[sp_id] = getattr(self, field)
    self._to_sp = {v: k for k, v in self._from_sp.items()}
    if self.offset == 0:
      for field, sp_id in (("unk_id", sp_unk), ("bos_id", self._sp.bos_id()),
                           ("eos_id", self._sp.eos_id()), ("pad_id", self._sp.pad_id())):
        if sp_id >= 0 and sp_id != getattr(self, field):
          raise ValueError(
              f"{config.path!r} has {field[:-3]} at id {sp_id} but config.tokenizer.{field}="
              f"{getattr(self, field)}; set the config ids to the model's (or spm_id_offset)")
    # Specials and location tokens inside the vocab that SentencePiece would match in text
    # (user-defined pieces).
    self._reserved = self.special_ids | grounding.location_ids(config)
    self._matched_specials = {}
    for i in self._reserved:
      sp_id = self._to_sp.get(i, i - self.offset)
      if 0 <= sp_id < size and not (self._sp.is_control(sp_id) or self._sp.is_unknown(sp_id)
                                    or self._sp.is_unused(sp_id)):
        self._matched_specials[i] = self._sp.id_to_piece(sp_id)

  def _map(self, sp_id: int) -> int:
    return self._from_sp.get(sp_id, sp_id + self.offset)

  def piece_ids(self) -> list[int]:
    """The kosmos id of every SentencePiece piece, in piece order (for exporters)."""
    return [self._map(i) for i in range(self._sp.get_piece_size())]

  def _char_ids(self, piece: str) -> list[int]:
    out = []
    for ch in piece:
      sp_id = self._sp.piece_to_id(ch)
      if sp_id != self._sp.unk_id() and self._map(sp_id) not in self._reserved:
        out.append(self._map(sp_id))
        continue
      for b in ch.encode("utf-8"):
        byte_id = self._sp.piece_to_id(f"<0x{b:02X}>")
        out.append(self._map(byte_id) if byte_id != self._sp.unk_id() else self.unk_id)
    return out

  def encode(self, text: str) -> list[int]:
    ids = [self._map(i) for i in self._sp.encode(text, out_type=int)]
    if self._matched_specials and any(i in self._matched_specials for i in ids):
      fixed = []
      for i in ids:
        fixed.extend(self._char_ids(self._matched_specials[i]) if i in self._matched_specials
                     else [i])
      ids = fixed
    return ids

  def space_before(self, token_id: int) -> bool:
    """Whether text decoded from ids starting with `token_id` lost a leading space: the piece
    starts with SentencePiece's word marker and the model removes extra whitespace (XLM-R,
    Kosmos-2: " a" encodes as "a" does, and decodes as "a"; transformers writes " a" after
    an added token). Models that keep whitespace (kosmos-trained) decode runs exactly."""
    sp_id = self._to_sp.get(token_id, token_id - self.offset)
    return (self._strips_spaces and 0 <= sp_id < self._sp.get_piece_size()
            and self._sp.id_to_piece(sp_id).startswith("\u2581"))

  def decode(self, ids: Iterable[int]) -> str:
    size = self._sp.get_piece_size()
    sp_ids = []
    for i in ids:
      if i in self._reserved:
        continue
      sp_id = self._to_sp.get(i, i - self.offset)
      if 0 <= sp_id < size:
        sp_ids.append(sp_id)
    return self._sp.decode(sp_ids)


def load(config: ml_collections.ConfigDict) -> Tokenizer:
  """The tokenizer `config.tokenizer` names: SentencePiece at `.path`, bytes when it is ""."""
  if not config.path:
    return ByteTokenizer(config)
  return SentencePieceTokenizer(config)


def record_texts(record_dirs: Sequence[str], max_records: int = 0) -> Iterator[str]:
  """The text segments of the records in `record_dirs` (undecodable records are skipped)."""
  seen = 0
  for directory in record_dirs:
    for path in records.shard_paths(directory):
      reader = array_record_module.ArrayRecordReader(path)
      try:
        for i in range(reader.num_records()):
          if max_records and seen >= max_records:
            return
          try:
            record = records.decode(reader.read([i])[0])
          except records.RecordError:
            continue
          seen += 1
          for segment in record["segments"]:
            if "text" in segment and isinstance(segment["text"], str) and segment["text"]:
              yield segment["text"]
      finally:
        reader.close()


def train_tokenizer(record_dirs: Sequence[str], vocab_size: int, out_path: str, *,
                    model_type: str = "unigram", character_coverage: float = 0.9995,
                    max_records: int = 0, max_sentence_length: int = 16384,
                    input_sentence_size: int = 2_000_000,
                    grounding_grid: int = 0) -> SentencePieceTokenizer:
  """Trains a SentencePiece model on the text segments of record directories.

  The model has `<pad>`=0 `<s>`=1 `</s>`=2 `<unk>`=3 and the control symbols `<image>`=4
  `</image>`=5 `<image_slot>`=6 `<vector_slot>`=7 (the ids of `kosmos.defaults`), byte
  fallback on (so no text maps to `<unk>`). With `grounding_grid` P > 0 the six KOSMOS-2 tags
  and P*P `<patch_index_NNNN>` follow as user-defined pieces from id 8 on (the returned
  tokenizer's config has them: `grounding.trained_ids(8, P)`). Writes `out_path` (and
  `out_path` with `.vocab`) and returns the loaded tokenizer after checking those ids.
  """
  if vocab_size < BYTE_VOCAB_SIZE + 8:
    raise ValueError(f"vocab_size={vocab_size} must be >= {BYTE_VOCAB_SIZE + 8} "
                     "(8 specials + 256 byte-fallback pieces + some merges)")
  out_dir = os.path.dirname(os.path.abspath(out_path))
  os.makedirs(out_dir, exist_ok=True)
  texts = record_texts(record_dirs, max_records)
  first = next(texts, None)
  if first is None:
    raise ValueError(f"no text segments in {list(record_dirs)}; cannot train a tokenizer")

  def sentences() -> Iterator[str]:
    yield first
    yield from texts

  with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
    prefix = os.path.join(tmp, "spm")
    spm.SentencePieceTrainer.train(
        sentence_iterator=sentences(), model_prefix=prefix, vocab_size=vocab_size,
        model_type=model_type, character_coverage=character_coverage,
        pad_id=defaults.PAD_ID, bos_id=defaults.BOS_ID, eos_id=defaults.EOS_ID,
        unk_id=defaults.UNK_ID, pad_piece="<pad>", bos_piece="<s>", eos_piece="</s>",
        unk_piece="<unk>", control_symbols=",".join(CONTROL_PIECES), byte_fallback=True,
        user_defined_symbols=grounding.pieces(grounding_grid) if grounding_grid else [],
        max_sentence_length=max_sentence_length, input_sentence_size=input_sentence_size,
        shuffle_input_sentence=True, split_digits=True,
        allow_whitespace_only_pieces=True, remove_extra_whitespaces=False,
        normalization_rule_name="identity", hard_vocab_limit=False, minloglevel=2)
    os.replace(prefix + ".model", out_path)
    os.replace(prefix + ".vocab", os.path.splitext(out_path)[0] + ".vocab")
  sp = spm.SentencePieceProcessor(model_file=out_path)
  expected = {"<pad>": defaults.PAD_ID, "<s>": defaults.BOS_ID, "</s>": defaults.EOS_ID,
              "<unk>": defaults.UNK_ID, "<image>": defaults.IMAGE_START_ID,
              "</image>": defaults.IMAGE_END_ID, "<image_slot>": defaults.IMAGE_SLOT_ID,
              "<vector_slot>": defaults.VECTOR_SLOT_ID}
  config = defaults.tokenizer()
  config.path = out_path
  if grounding_grid:
    config.grounding.update(grounding.trained_ids(GROUNDING_FIRST_ID, grounding_grid))
    expected.update(zip(grounding.pieces(grounding_grid), range(GROUNDING_FIRST_ID, 1 << 30)))
  for piece, want in expected.items():
    got = sp.piece_to_id(piece)
    if got != want:
      raise RuntimeError(f"trained model {out_path!r} has {piece} at id {got}, expected {want}")
  return SentencePieceTokenizer(config)
