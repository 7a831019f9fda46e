"""transformers tokenizer files for a kosmos SentencePiece tokenizer (the Kosmos-2 export).

`write(config, out)` writes `tokenizer.json` (the `tokenizers` serialisation, as plain JSON:
no tokenizers / transformers import), `tokenizer_config.json`, `special_tokens_map.json` and
the SentencePiece model as `sentencepiece.bpe.model`, so that with `hf =
AutoTokenizer.from_pretrained(OUT)` and kosmos's `tok = kosmos.data.tokenizer.load(config.tokenizer)`:

    hf(s, add_special_tokens=False).input_ids == tok.encode(s)
    hf(s).input_ids == [tok.bos_id] + tok.encode(s) + [tok.eos_id]   # XLM-R's template
    hf.decode(ids, skip_special_tokens=True) == tok.decode(ids)

How: tokenizer.json holds a Unigram model whose vocabulary is listed in *kosmos id order*
(every piece at `SentencePieceTokenizer.piece_ids()`, i.e. after `spm_id_offset` and the
special-id remapping; ids no piece takes hold the special's name or a placeholder
`<kosmos_unused_ID>`), the piece scores, byte fallback, and SentencePiece's normaliser
(precompiled charsmap, extra-whitespace removal, dummy prefix), as transformers' own
`SpmConverter.build_tokenizer_from_spm_proto` builds it. transformers loads a `kosmos-2`
model directory's tokenizer with `TokenizersBackend`, which takes tokenizer.json whole.

Kosmos-2 processor layout (`KOSMOS2_TAGS`): when the tokenizer has XLM-R's ids (`<s>`=0
`<pad>`=1 `</s>`=2 `<unk>`=3, pieces shifted by one) and `<image>` / `</image>` sit where
`Kosmos2Processor` puts them (`<mask>` at B, `</doc>` B+1, `<image>` B+2, `</image>` B+3,
the other grounding tags, then 1024 `<patch_index_NNNN>`; B = one past the last piece), the
whole list is written as added tokens (what the processor would add) and tokenizer_class is
`XLMRobertaTokenizer`, the class the published Kosmos-2 ships; any other layout (e.g. a
kosmos-trained model, `<image>`=4 as a control piece) is written as-is with the generic
`PreTrainedTokenizerFast`.

Conventions that differ (documented, by design): transformers matches added tokens in raw
text, so a literal "<image>" or "<s>" in a string becomes that special id, where kosmos
splits it into characters (kosmos never emits a special id from text); kosmos's `decode`
drops the grounding tags and patch-index ids (not in its vocabulary), transformers keeps
them unless they are skipped as special. A placeholder string `<kosmos_unused_ID>` in text
would be matched by transformers.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from typing import Any, Callable

import ml_collections
from sentencepiece import sentencepiece_model_pb2

from kosmos.data import tokenizer as tokenizer_lib

SPM_NAME = "sentencepiece.bpe.model"
# Kosmos2Processor's added tokens, in order after XLM-R's <mask>.
KOSMOS2_TAGS = ("</doc>", "<image>", "</image>", "</chunk>", "</line>", "<phrase>", "</phrase>",
                "<object>", "</object>", "</delimiter_of_multi_objects/>", "<grounding>")
KOSMOS2_PATCH_TOKENS = 1024
# <mask> + tags + patch tokens: a Kosmos-2 vocabulary is (last piece id + 1) + this.
KOSMOS2_ADDED = 1 + len(KOSMOS2_TAGS) + KOSMOS2_PATCH_TOKENS
# <image> / </image> counted from the end of a Kosmos-2 vocabulary (64003 / 64004 of 65037).
KOSMOS2_IMAGE_START_FROM_END = KOSMOS2_ADDED - 2
KOSMOS2_IMAGE_END_FROM_END = KOSMOS2_ADDED - 3

_NAMES = {"bos_id": "<s>", "eos_id": "</s>", "pad_id": "<pad>", "unk_id": "<unk>",
          "image_start_id": "<image>", "image_end_id": "</image>", "image_slot_id": "<image_slot>",
          "vector_slot_id": "<vector_slot>"}
_TOKEN_KEYS = {"bos_id": "bos_token", "eos_id": "eos_token", "pad_id": "pad_token",
               "unk_id": "unk_token"}
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _BYTE = 1, 2, 3, 4, 6  # ModelProto piece types


class NotRepresentable(ValueError):
  """A kosmos tokenizer that transformers' tokenizer files cannot reproduce id for id."""


def _added(token_id: int, content: str, special: bool, lstrip: bool = False) -> dict[str, Any]:
  return dict(id=token_id, content=content, single_word=False, lstrip=lstrip, rstrip=False,
              normalized=False, special=special)


def _pieces(config: ml_collections.ConfigDict, vocab_size: int) -> tuple[Any, ...]:
  """(kosmos tokenizer, spm proto, {id: (piece, score)} for ids 0..max, added tokens,
  {special field: piece name}, Kosmos-2 processor layout?)."""
  tok = tokenizer_lib.SentencePieceTokenizer(config)
  proto = sentencepiece_model_pb2.ModelProto()
  with open(config.path, "rb") as f:
    proto.ParseFromString(f.read())
  if proto.trainer_spec.model_type != 1:
    raise NotRepresentable(f"{config.path!r} is a SentencePiece model of type "
                           f"{proto.trainer_spec.model_type} (BPE/word/char); only unigram "
                           "models (type 1) are written as tokenizer.json")
  specials = {f: getattr(tok, f) for f in tokenizer_lib.SPECIAL_FIELDS
              if 0 <= getattr(tok, f) < vocab_size}
  field_of = {}
  for field, i in specials.items():
    field_of.setdefault(i, field)  # pad may share unk's id
  entries: dict[int, tuple[str, float]] = {}
  added: dict[int, dict[str, Any]] = {}
  for piece, i in zip(proto.pieces, tok.piece_ids()):
    if i in entries:
      raise NotRepresentable(f"pieces {entries[i][0]!r} and {piece.piece!r} of {config.path!r} "
                             f"both map to id {i} (spm_id_offset={tok.offset})")
    if i >= vocab_size:
      raise NotRepresentable(f"piece {piece.piece!r} maps to id {i}, outside the model's "
                             f"vocab_size={vocab_size}")
    if i in field_of and piece.type in (_NORMAL, _USER_DEFINED, _BYTE):
      raise NotRepresentable(
          f"config.tokenizer.{field_of[i]}={i} is the id of the text piece {piece.piece!r}; "
          "transformers cannot emit the piece and keep the special (a Kosmos-2 import should "
          "hold the processor's ids, e.g. image_start_id=64003)")
    entries[i] = (piece.piece, piece.score)
    if piece.type in (_UNKNOWN, _CONTROL) or i in field_of:
      added[i] = _added(i, piece.piece, special=True)
  names = {}
  for field, i in specials.items():
    if i not in entries:
      entries[i] = (_NAMES[field], 0.0)
      added[i] = _added(i, _NAMES[field], special=True)
    names[field] = entries[i][0]
  base = 1 + max(tok.piece_ids() + [specials[f] for f in _TOKEN_KEYS if f in specials])
  kosmos2 = (specials.get("image_start_id") == base + 2 and specials.get("image_end_id") == base + 3
             and (tok.bos_id, tok.pad_id, tok.eos_id, tok.unk_id) == (0, 1, 2, 3))
  if kosmos2:  # what Kosmos2Processor adds (non-special, lstrip), <image> / </image> special
    entries.setdefault(base, ("<mask>", 0.0))
    added.setdefault(base, _added(base, entries[base][0], special=True))
    tags = list(KOSMOS2_TAGS) + [f"<patch_index_{k:04d}>" for k in range(KOSMOS2_PATCH_TOKENS)]
    for k, tag in enumerate(tags):
      i = base + 1 + k
      if i >= vocab_size:
        break
      if i in entries and entries[i][0] != tag:
        raise NotRepresentable(f"id {i} holds {entries[i][0]!r}, where Kosmos-2 has {tag!r}")
      entries[i] = (tag, 0.0)
      added[i] = _added(i, tag, special=i in field_of, lstrip=True)
  contents = [e[0] for e in entries.values()]
  if len(set(contents)) != len(contents):
    raise NotRepresentable(f"two ids share a piece name in {config.path!r} plus the specials "
                           f"{names}")
  floor = min((p.score for p in proto.pieces if p.type == _NORMAL), default=0.0)
  for i in range(max(entries) + 1):  # gaps: placeholders at the lowest normal-piece score
    # (SentencePiece's unknown-piece penalty stays the same; only their own literal text matches)
    entries.setdefault(i, (f"<kosmos_unused_{i}>", floor))
  return tok, proto, entries, [added[i] for i in sorted(added)], names, kosmos2


def tokenizer_json(config: ml_collections.ConfigDict, vocab_size: int) -> tuple[dict, dict, bool]:
  """(tokenizer.json, {field: piece name} of the specials, Kosmos-2 layout?)."""
  tok, proto, entries, added, names, kosmos2 = _pieces(config, vocab_size)
  spec = proto.normalizer_spec
  normalizers: list[dict[str, Any]] = []
  if spec.precompiled_charsmap:
    normalizers.append({"type": "Precompiled", "precompiled_charsmap":
                        base64.b64encode(spec.precompiled_charsmap).decode()})
  if spec.remove_extra_whitespaces:
    normalizers += [{"type": "Replace", "pattern": {"Regex": r"\A +| +\z"}, "content": ""},
                    {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "}]
  if spec.escape_whitespaces:
    normalizers.append({"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"})
  pre = None
  if spec.add_dummy_prefix:
    # SentencePiece always adds the prefix; Metaspace skips it when the text already starts
    # with one, hence the doubled leading "▁". "always", not "first": "first" looks at
    # original offsets and drops the prefix after stripped leading spaces.
    normalizers.append({"type": "Replace", "pattern": {"Regex": "\\A\u2581"},
                        "content": "\u2581\u2581"})
    pre = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "split": False}
  decoders: list[dict[str, Any]] = [{"type": "Replace", "pattern": {"String": "\u2581"},
                                     "content": " "}]
  if proto.trainer_spec.byte_fallback:
    decoders.append({"type": "ByteFallback"})
  if spec.add_dummy_prefix:  # SentencePiece's decoder drops the dummy prefix, and every
    # leading "▁" when it removes extra whitespace
    strip = 1 << 20 if spec.remove_extra_whitespaces else 1
    decoders += [{"type": "Fuse"}, {"type": "Strip", "content": " ", "start": strip, "stop": 0}]
  elif proto.trainer_spec.byte_fallback:
    decoders.append({"type": "Fuse"})
  bos, eos = names["bos_id"], names["eos_id"]

  def special(name: str, i: int) -> dict[str, Any]:
    return {"id": name, "ids": [i], "tokens": [name]}

  def seq(x: str) -> dict[str, Any]:
    return {"Sequence": {"id": x, "type_id": 0}}

  def sp(x: str) -> dict[str, Any]:
    return {"SpecialToken": {"id": x, "type_id": 0}}

  post = {"type": "TemplateProcessing", "single": [sp(bos), seq("A"), sp(eos)],
          "pair": [sp(bos), seq("A"), sp(eos), sp(eos), seq("B"), sp(eos)],
          "special_tokens": {bos: special(bos, tok.bos_id), eos: special(eos, tok.eos_id)}}
  model = {"type": "Unigram", "unk_id": tok.unk_id, "byte_fallback": proto.trainer_spec.byte_fallback,
           "vocab": [list(entries[i]) for i in range(len(entries))]}
  return ({"version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
           "normalizer": {"type": "Sequence", "normalizers": normalizers},
           "pre_tokenizer": pre, "post_processor": post,
           "decoder": {"type": "Sequence", "decoders": decoders}, "model": model},
          names, kosmos2)


def write(config: ml_collections.ConfigDict, out: str, log: Callable[[str], None] = print) -> bool:
  """Writes the tokenizer files of `config.tokenizer` into `out`; False (and a log line saying
  why) when there are none: the byte-level fallback, or ids transformers cannot reproduce."""
  tok = config.tokenizer
  if not tok.path:
    log("tokenizer: config.tokenizer.path is empty (byte-level fallback tokenizer), which has no "
        "transformers equivalent; no tokenizer files written")
    return False
  try:
    content, names, kosmos2 = tokenizer_json(tok, config.model.decoder.vocab_size)
  except NotRepresentable as e:
    log(f"tokenizer: not written: {e}")
    return False
  specials = {key: names[field] for field, key in _TOKEN_KEYS.items() if field in names}
  added = {str(t["id"]): {k: v for k, v in t.items() if k != "id"} for t in content["added_tokens"]}
  cls = "XLMRobertaTokenizer" if kosmos2 else "PreTrainedTokenizerFast"
  tokenizer_config = dict(specials, tokenizer_class=cls, added_tokens_decoder=added,
                          model_max_length=config.model.decoder.max_len,
                          clean_up_tokenization_spaces=False)
  if kosmos2:
    tokenizer_config.update(cls_token=names["bos_id"], sep_token=names["eos_id"], mask_token="<mask>")
  shutil.copyfile(tok.path, os.path.join(out, SPM_NAME))
  for name, value in (("tokenizer.json", content), ("tokenizer_config.json", tokenizer_config),
                      ("special_tokens_map.json", specials)):
    with open(os.path.join(out, name), "w", encoding="utf-8") as f:
      json.dump(value, f, indent=2, ensure_ascii=False)
      f.write("\n")
  log(f"tokenizer: {tok.path} -> tokenizer.json ({len(content['model']['vocab'])} pieces, "
      f"{'Kosmos-2 processor layout' if kosmos2 else 'kosmos ids'}, {cls}) + {SPM_NAME}")
  return True
