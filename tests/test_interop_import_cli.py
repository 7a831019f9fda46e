"""`kosmos-import` as users call it: the console entry function on source directories
the tests write (config.json + safetensors + a real tiny SentencePiece model).

Checks: the SentencePiece model shipped by a checkpoint is copied into an `--out` that
did not exist yet, and the imported config's tokenizer uses it; a missing source
directory, an invalid config.json and a truncated safetensors header each end with
exit status 2 and one stderr line naming the file (no traceback, nothing written); a
`--config` that describes another model exits 2 listing the fields that differ.
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


@pytest.fixture(scope="module")
def good_src(tmp_path_factory):
  return kosmos2_dir(str(tmp_path_factory.mktemp("good") / "src"))


def _truncate(path: str, size: int) -> None:
  with open(path, "r+b") as f:
    f.truncate(size)


def _break(src: str, case: str) -> str:
  """Damages the copy `src` as `case` says; returns the path the error must name."""
  weights, config = os.path.join(src, "model.safetensors"), os.path.join(src, "config.json")
  if case == "missing source directory":
    shutil.rmtree(src)
    return src
  if case == "invalid config.json":
    with open(config, "w") as f:
      f.write('{"model_type": "kosmos-2", "text_config": {')
    return config
  if case == "config.json without text_config":
    hf = json.load(open(config))
    del hf["text_config"]
    json.dump(hf, open(config, "w"))
    return config
  if case == "truncated safetensors header":
    _truncate(weights, 40)  # the 8-byte length promises a much longer header
    return weights
  if case == "safetensors shorter than its length field":
    _truncate(weights, 5)
    return weights
  if case == "truncated safetensors data":
    _truncate(weights, os.path.getsize(weights) // 2)
    return weights
  raise ValueError(case)


@pytest.mark.parametrize("case, words", [
    ("missing source directory", "no such directory"),
    ("invalid config.json", "not valid JSON"),
    ("config.json without text_config", "'text_config'"),
    ("truncated safetensors header", "does not fit in the file"),
    ("safetensors shorter than its length field", "shorter than the 8-byte"),
    ("truncated safetensors data", "truncated"),
])
def test_bad_source_is_one_line_and_exit_2(tmp_path, good_src, capsys, case, words):
  src, out = str(tmp_path / "src"), str(tmp_path / "out")
  shutil.copytree(good_src, src)
  named = _break(src, case)
  capsys.readouterr()
  assert main.import_main(["--format", "hf", "--src", src, "--out", out]) == 2
  err = capsys.readouterr().err
  assert err.endswith("\n") and err.count("\n") == 1, err  # one line, no traceback
  assert err.startswith("kosmos-import: cannot import: ") and named in err and words in err, err
  assert not os.path.exists(out)  # nothing written


def test_config_that_disagrees_lists_the_fields_and_exits_2(tmp_path, good_src, capsys):
  config = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "kosmos2.py")
  out = str(tmp_path / "out")
  capsys.readouterr()
  assert main.import_main(["--src", good_src, "--config", config, "--out", out]) == 2
  err = capsys.readouterr().err
  assert err.startswith(f"kosmos-import: cannot import: --config disagrees with {good_src}"), err
  assert "model.decoder.d_model: config has 2048" in err and "Traceback" not in err, err
  assert not os.path.exists(out)


def test_missing_vision_dir_is_one_line_and_exit_2(tmp_path, good_src, capsys):
  missing = str(tmp_path / "no_vision")
  assert main.import_main(["--lm", good_src, "--vision", missing, "--out", str(tmp_path / "o")]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and f"--vision {missing!r}: no such directory" in err, err
