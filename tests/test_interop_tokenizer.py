"""Kosmos-2 tokenizer interop: kosmos ids == transformers ids, both ways.

A tiny XLM-R-layout SentencePiece model (trained here) plays Kosmos-2's
`sentencepiece.bpe.model`; the source directory holds what `Kosmos2Processor.save_pretrained`
writes (1037 added tokens after the pieces) plus the model file, with a vocabulary of
pieces + 1037 as the published checkpoint. Checks: the import uses the processor's
`<image>` / `</image>` ids and encodes like the processor's tokenizer; the export loads with
`AutoTokenizer` and encodes / decodes the kosmos ids for many strings (also for a
kosmos-trained model with byte fallback); a tokenizer transformers cannot reproduce is
not written, and the log says why.
"""

from __future__ import annotations

import json
import os
import random
import shutil

import pytest
import sentencepiece as spm

torch = pytest.importorskip("torch", reason="torch (CPU) builds the source checkpoint")
transformers = pytest.importorskip("transformers", reason="transformers is the other side")

import tiny_spm  # noqa: E402
from kosmos import defaults  # noqa: E402
from kosmos import workdir  # noqa: E402
from kosmos.data import records  # noqa: E402
from kosmos.data import tokenizer as tokenizer_lib  # noqa: E402
from kosmos.interop import hf_config  # noqa: E402
from kosmos.interop import hf_export  # noqa: E402
from kosmos.interop import hf_import  # noqa: E402
from kosmos.interop import hf_tokenizer  # noqa: E402

FIXED = ["the cat sat on a mat, 123!", "  leading and trailing  ", "multiple   spaces\there\nnewline",
         "ünïcödé — 中文 😀", "UPPER Case MiXeD", "ｆｕｌｌｗｉｄｔｈ ①②", "a", "", " ", "x\ny", " lead",
         "trail ", "dogs,ran!over?hills.", "tabs\tand  spaces", "1234567890"]
TAGS = list(hf_tokenizer.KOSMOS2_TAGS) + ["<patch_index_0000>", "<patch_index_1023>"]


def texts(n: int = 150) -> list[str]:
  rng = random.Random(0)
  extra = ["x", "Q", "42", ",", "!!", "é", "  ", "\t", "7.5%", "Ω"]
  return FIXED + [" ".join(rng.choice(tiny_spm.WORDS + extra) for _ in range(rng.randint(1, 15)))
                  for _ in range(n)]


def quiet(_: str) -> None:
  pass


@pytest.fixture(scope="module")
def kosmos2(tmp_path_factory):
  """(processor, source dir, imported workdir, exported dir, vocab size)."""
  root = tmp_path_factory.mktemp("k2tok")
  model_file = tiny_spm.xlmr_like(str(root / "xlmr"))
  pieces = spm.SentencePieceProcessor(model_file=model_file).get_piece_size()
  vocab = pieces + 1 + hf_tokenizer.KOSMOS2_ADDED  # as 65037 = 64000 + 1 + 1036
  os.makedirs(root / "spm_only")
  shutil.copyfile(model_file, root / "spm_only" / "sentencepiece.bpe.model")
  processor = transformers.Kosmos2Processor(
      transformers.CLIPImageProcessor(),
      transformers.XLMRobertaTokenizer.from_pretrained(str(root / "spm_only")))
  assert len(processor.tokenizer) == vocab
  torch.manual_seed(0)
  config = transformers.Kosmos2Config(
      text_config=dict(vocab_size=vocab, embed_dim=32, layers=1, ffn_dim=64, attention_heads=4,
                       max_position_embeddings=64),
      vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, image_size=16, patch_size=8),
      latent_query_num=4)
  src, wd, out = str(root / "hf"), str(root / "wd"), str(root / "out")
  transformers.Kosmos2ForConditionalGeneration(config).save_pretrained(src)
  processor.save_pretrained(src)
  shutil.copyfile(model_file, os.path.join(src, "sentencepiece.bpe.model"))
  hf_import.import_hf(src, wd, log=quiet)
  hf_export.export_hf(wd, out, log=quiet)
  return processor, src, wd, out, vocab


def test_import_uses_the_processor_image_ids_and_its_token_ids(kosmos2):
  processor, src, wd, _, vocab = kosmos2
  tok = workdir.load_config(wd).tokenizer
  want = processor.tokenizer.convert_tokens_to_ids(["<image>", "</image>"])
  assert [tok.image_start_id, tok.image_end_id] == want == [vocab - 1034, vocab - 1033]
  # without tokenizer files, the same ids follow from config.json's vocab_size
  _, inferred = hf_config.from_hf_json(json.load(open(os.path.join(src, "config.json"))))
  assert [inferred.tokenizer.image_start_id, inferred.tokenizer.image_end_id] == want
  published = transformers.Kosmos2Config().to_dict()  # the published sizes: vocab 65037
  _, inferred = hf_config.from_hf_json(published)
  assert (inferred.tokenizer.image_start_id, inferred.tokenizer.image_end_id) == (64003, 64004)
  # a vocabulary too small for the processor's layout has no boundary tokens
  published["text_config"]["vocab_size"] = 96
  _, inferred = hf_config.from_hf_json(published)
  assert (inferred.tokenizer.image_start_id, inferred.tokenizer.image_end_id) == (-1, -1)
  # kosmos encodes like the processor's tokenizer (which adds <s> ... </s>)
  kt = tokenizer_lib.load(tok)
  for s in texts():
    assert processor.tokenizer(s).input_ids == [0] + kt.encode(s) + [2], s


def test_import_prefers_the_source_tokenizer_files(kosmos2, tmp_path):
  """A fine-tune that grew the vocabulary past the processor's tokens: <image> stays where the
  source's tokenizer files put it (counting from the end of the vocabulary would be wrong)."""
  processor, src, _, _, vocab = kosmos2
  tokenizer = transformers.AutoTokenizer.from_pretrained(src)
  tokenizer.add_tokens([f"<extra_{k}>" for k in range(8)])
  grown = transformers.Kosmos2Config.from_pretrained(src)
  grown.text_config.vocab_size = vocab + 8
  bigger, wd = str(tmp_path / "hf"), str(tmp_path / "wd")
  transformers.Kosmos2ForConditionalGeneration(grown).save_pretrained(bigger)
  tokenizer.save_pretrained(bigger)
  shutil.copyfile(os.path.join(src, "sentencepiece.bpe.model"),
                  os.path.join(bigger, "sentencepiece.bpe.model"))
  hf_import.import_hf(bigger, wd, log=quiet)
  tok = workdir.load_config(wd).tokenizer
  assert [tok.image_start_id, tok.image_end_id] == processor.tokenizer.convert_tokens_to_ids(
      ["<image>", "</image>"]) == [vocab - 1034, vocab - 1033]


def test_export_loads_with_autotokenizer_and_matches_kosmos_ids(kosmos2):
  processor, _, wd, out, vocab = kosmos2
  config = workdir.load_config(wd)
  kt = tokenizer_lib.load(config.tokenizer)
  assert json.load(open(os.path.join(out, "tokenizer_config.json")))["tokenizer_class"] == \
      "XLMRobertaTokenizer"
  # XLMRobertaTokenizer (the class named) rebuilds its own normaliser and decoder around the
  # vocabulary: same ids; its decode may differ around unknown characters, so only
  # AutoTokenizer (what a kosmos-2 model directory loads with) is held to kosmos's decode.
  for auto, hf in ((True, transformers.AutoTokenizer.from_pretrained(out)),
                   (False, transformers.XLMRobertaTokenizer.from_pretrained(out))):
    assert len(hf) == vocab
    t = config.tokenizer
    assert hf.convert_tokens_to_ids(["<s>", "<pad>", "</s>", "<unk>", "<image>", "</image>"]) == [
        t.bos_id, t.pad_id, t.eos_id, t.unk_id, t.image_start_id, t.image_end_id]
    assert hf.convert_tokens_to_ids(TAGS) == processor.tokenizer.convert_tokens_to_ids(TAGS)
    for s in texts():
      ids = kt.encode(s)
      assert hf(s, add_special_tokens=False).input_ids == ids, s
      assert hf(s).input_ids == [t.bos_id] + ids + [t.eos_id], s  # kosmos rows: <s> text </s>
      if auto:
        assert hf.decode(ids, skip_special_tokens=True) == kt.decode(ids), s
      if kt.decode(ids) == s:  # no unknown characters: both round-trip
        assert hf.decode(hf(s).input_ids, skip_special_tokens=True) == s
  # the processor built on the export finds all its tokens in place (adds none)
  again = transformers.Kosmos2Processor(transformers.CLIPImageProcessor(),
                                        transformers.AutoTokenizer.from_pretrained(out))
  assert len(again.tokenizer) == vocab


def test_literal_specials_in_text_differ_by_design(kosmos2):
  """transformers matches added tokens in text; kosmos never emits a special id from text."""
  _, _, wd, out, _ = kosmos2
  t = workdir.load_config(wd).tokenizer
  kt, hf = tokenizer_lib.load(t), transformers.AutoTokenizer.from_pretrained(out)
  assert t.image_start_id in hf("a <image> b", add_special_tokens=False).input_ids
  ids = kt.encode("a <image> b")
  assert t.image_start_id not in ids and kt.decode(ids) != ""


@pytest.fixture(scope="module")
def trained_model(tmp_path_factory):
  root = tmp_path_factory.mktemp("trained")
  with records.ShardWriter(str(root / records.shard_name("t", 0, 1))) as w:
    for i, s in enumerate(tiny_spm.sentences(300)):
      w.write({"id": str(i), "source": "t", "kind": "text", "segments": [{"text": s + " ünï 中"}]})
  path = str(root / "spm.model")
  tokenizer_lib.train_tokenizer([str(root)], 400, path)
  return path


def test_kosmos_trained_tokenizer_exports_its_own_ids(kosmos2, trained_model, tmp_path):
  """kosmos's layout (<pad>=0 <s>=1 ... <image>=4 control pieces, byte fallback, no offset)."""
  _, _, wd, _, vocab = kosmos2
  config = workdir.load_config(wd)
  config.tokenizer = defaults.tokenizer()
  config.tokenizer.path = trained_model
  wd2, out = str(tmp_path / "wd"), str(tmp_path / "out")
  shutil.copytree(wd, wd2)
  workdir.save_config(config, wd2)
  hf_export.export_hf(wd2, out, log=quiet)
  assert json.load(open(os.path.join(out, "tokenizer_config.json")))["tokenizer_class"] == \
      "PreTrainedTokenizerFast"
  kt, hf = tokenizer_lib.load(config.tokenizer), transformers.AutoTokenizer.from_pretrained(out)
  t = config.tokenizer
  assert hf.convert_tokens_to_ids(["<pad>", "<s>", "</s>", "<unk>", "<image>", "</image>"]) == [
      t.pad_id, t.bos_id, t.eos_id, t.unk_id, t.image_start_id, t.image_end_id] == [0, 1, 2, 3, 4, 5]
  for s in texts():
    ids = kt.encode(s)
    assert hf(s, add_special_tokens=False).input_ids == ids, s
    assert hf(s).input_ids == [t.bos_id] + ids + [t.eos_id], s
    assert hf.decode(ids, skip_special_tokens=True) == kt.decode(ids), s
  assert kt.decode(kt.encode("ünïcödé — 中文 😀")) == "ünïcödé — 中文 😀"  # byte fallback


def test_unreproducible_tokenizer_is_not_written_and_logged(kosmos2, tmp_path):
  """An import from before the fix held <image>=4, the id of a text piece."""
  _, _, wd, _, _ = kosmos2
  config = workdir.load_config(wd)
  config.tokenizer.update(image_start_id=4, image_end_id=5)
  wd2, out = str(tmp_path / "wd"), str(tmp_path / "out")
  shutil.copytree(wd, wd2)
  workdir.save_config(config, wd2)
  lines: list[str] = []
  hf_export.export_hf(wd2, out, log=lines.append)
  assert not os.path.exists(os.path.join(out, "tokenizer.json"))
  assert any("tokenizer: not written: config.tokenizer.image_start_id=4 is the id of the text "
             "piece" in line for line in lines), lines
  assert os.path.exists(os.path.join(out, "model.safetensors"))


def test_kosmos2_config_tokenizer_is_what_the_import_infers():
  """configs/kosmos2.py with the published sentencepiece.bpe.model loads (offset 1) and holds
  the ids an import of the published checkpoint infers."""
  from kosmos import configs  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  config = configs.load(os.path.join(root, "configs", "kosmos2.py"))
  _, inferred = hf_config.from_hf_json(transformers.Kosmos2Config().to_dict())
  assert config.tokenizer.to_dict() == inferred.tokenizer.to_dict()
  assert config.model.image_slot_id == inferred.model.image_slot_id
