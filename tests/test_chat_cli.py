"""kosmos-chat: one answer as JSON on the demo model and on an imported random-weight
LLaVA, equal to kosmos-eval's generation for the same prompt (both slow: ~17 s and
~15 s); on a tiny byte-tokenizer model, the interactive loop (streaming, /image, /reset)
and its tokens equal to `Engine.generate`'s; the errors a user can make."""

import io
import json
import os
import shutil

import pytest
from flax import nnx

import image_files
import tiny
from kosmos import configs
from kosmos import workdir as workdir_lib
from kosmos.data import chat as chat_lib
from kosmos.data import records
from kosmos.data import tokenizer as tokenizer_lib
from kosmos.eval import main as eval_main
from kosmos.eval import runner
from kosmos.infer import chat
from kosmos.infer import engine as engine_lib
from kosmos.model import multimodal

import tiny_spm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def demo_workdir(tmp_path_factory):
  """configs/demo.py's model (random weights) with a SentencePiece tokenizer of the
  kosmos layout trained on a few sentences."""
  root = tmp_path_factory.mktemp("demo")
  text_dir = str(root / "records")
  os.makedirs(text_dir)
  with records.ShardWriter(os.path.join(text_dir, records.shard_name("text", 0, 1))) as w:
    for i, line in enumerate(tiny_spm.sentences(300)):
      w.write({"id": str(i), "source": "text", "kind": "text", "segments": [{"text": line}]})
  tokenizer_lib.train_tokenizer([text_dir], 300, str(root / "tokenizer.model"))
  config = configs.load_module(os.path.join(ROOT, "configs", "demo.py")).get_config(str(root))
  directory = str(root / "wd")
  model = multimodal.Multimodal(config.model, rngs=nnx.Rngs(0))
  workdir_lib.save_config(config, directory)
  workdir_lib.save_params(directory, 5, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  return directory


@pytest.fixture(scope="module")
def image(tmp_path_factory):
  path = tmp_path_factory.mktemp("img") / "COCO_val2014_000000000000.jpg"
  path.write_bytes(image_files.encode(image_files.noise(3), "JPEG"))
  return str(path)


def _chat_json(capsys, argv):
  assert chat.main(argv) == 0
  return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def tiny_workdir(tmp_path_factory):
  return tiny.byte_workdir(str(tmp_path_factory.mktemp("tiny")), max_len=160, seed=1,
                           chat_template=chat_lib.config("llava_v1", system="Be brief."))


def _eval_engine(workdir, template, image, question, max_new_tokens):
  """(the prompt's segments, `Engine.generate`'s Generation): what kosmos-eval runs."""
  config = workdir_lib.load_config(workdir)
  _, params = workdir_lib.restore_params(workdir)
  engine = engine_lib.Engine(runner.build_model(config, params), config)
  with open(image, "rb") as f:
    content = chat_lib.user_content(chat_lib.get(template), [{"image": f.read()},
                                                             {"text": question}])
  segments = chat_lib.prompt_segments(chat_lib.get(template), [
      {"turn": "user"}, *content, {"turn": "assistant"}])
  return engine, segments, engine.generate([segments], max_new_tokens=max_new_tokens)[0]


@pytest.mark.slow
def test_prompt_on_demo_model_equals_kosmos_eval(demo_workdir, image, tmp_path, capsys):
  question = "Is there a cat on the mat?"
  out = str(tmp_path / "answer.json")
  got = _chat_json(capsys, ["--workdir", demo_workdir, "--image", image, "--prompt", question,
                            "--max-new-tokens", "8", "--out", out])
  with open(out) as f:
    assert json.load(f) == got
  assert got["template"] == "kosmos" and got["images"] == [image]
  assert 1 <= len(got["tokens"]) <= 8
  # The same prompt through the eval engine (`Engine.generate`, what kosmos-eval runs).
  engine, segments, generated = _eval_engine(demo_workdir, "kosmos", image, question, 8)
  assert segments[0] == {"text": "Question: "} and segments[-1] == {"text": question + " Answer:"}
  assert got["tokens"] == generated.tokens
  assert got["prompt_tokens"] == len(engine.encode(segments).tokens)
  # And through kosmos-eval itself: POPE asked as a chat turn, the question as the message.
  data = tmp_path / "pope"
  os.makedirs(data / "val2014")
  shutil.copyfile(image, data / "val2014" / os.path.basename(image))
  (data / "coco_pope_random.json").write_text(json.dumps(
      {"question_id": 0, "image": os.path.basename(image), "text": question, "label": "no"}))
  result = str(tmp_path / "pope.json")
  assert eval_main.main(["--workdir", demo_workdir, "--task", "pope", "--data", str(data),
                         "--shots", "0", "--chat", "--task-option", "prompt={question}",
                         "--vqa-tokens", "8", "--out", result, "--no-progress"]) == 0
  with open(str(tmp_path / "pope.predictions.json")) as f:
    assert json.load(f)["0"][0][0]["raw"] == got["answer"] == generated.text


def test_interactive_streams_images_and_reset(tiny_workdir, image):
  args = chat.build_parser().parse_args(["--workdir", tiny_workdir, "--max-new-tokens", "4"])
  session = chat.load_session(args)
  lines = iter(["/image " + image, "What is it?", "/image /no/such.png", "And now?", "/reset",
                "/bogus", "Hi", "/quit", "never read"])
  out = io.StringIO()
  turns = []
  ask = session.ask

  def recording_ask(text):
    pieces = list(ask(text))
    turns.append((text, [list(s.keys())[0] for s in session.segments], pieces,
                  session.segments[-1]["text"]))
    yield from pieces
  session.ask = recording_ask
  chat.interact(session, [], lambda: next(lines), out)
  text = out.getvalue()
  assert "(image added: 1 waiting" in text and "error: image '/no/such.png' does not exist" in text
  assert "(new conversation)" in text and "unknown command '/bogus'" in text
  first, second, third = turns
  assert first[1] == ["turn", "image", "text", "turn", "text"]  # the image joined turn 1
  assert second[1][:5] == first[1] and second[1][5:] == ["turn", "text", "turn", "text"]
  assert third[1] == ["turn", "text", "turn", "text"]  # /reset forgot turns 1-2
  for _, _, pieces, answer in turns:
    # Streaming: a piece per generated token (<= --max-new-tokens), joined = the answer.
    assert 1 <= sum(1 for t, _ in pieces if t >= 0) <= 4
    assert "".join(p for _, p in pieces).strip() == answer  # the history keeps it stripped
  assert first[3] in text and third[3] in text
  # The first answer's tokens are those `Engine.generate` gives for the same prompt.
  with open(image, "rb") as f:
    segments = chat_lib.prompt_segments(session.template, [
        {"turn": "user"}, {"image": f.read()}, {"text": "\nWhat is it?"}, {"turn": "assistant"}])
  # LLaVA's cli joins an image and the question with "\n" ("<image>\nWhat is it?")
  assert segments[0]["text"] == "Be brief. USER: "
  assert segments[-1]["text"] == "\nWhat is it? ASSISTANT:"
  generated = session.engine.generate([segments], max_new_tokens=4)[0]
  assert [t for t, _ in first[2] if t >= 0] == generated.tokens


def test_errors_are_one_line_exit_2(tiny_workdir, image, tmp_path, capsys):
  def error(argv):
    assert chat.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    return captured.err
  assert "image '/no/such.jpg' does not exist" in error(
      ["--workdir", tiny_workdir, "--image", "/no/such.jpg", "--prompt", "hi"])
  assert "context (model.decoder.max_len=160)" in error(
      ["--workdir", tiny_workdir, "--prompt", "word " * 40, "--max-new-tokens", "8"])
  assert "is not a kosmos workdir" in error(["--workdir", str(tmp_path / "none"), "--prompt",
                                              "hi"])
  no_tok = str(tmp_path / "no_tok")
  config = workdir_lib.load_config(tiny_workdir)
  config.model.decoder.vocab_size = 320  # a SentencePiece-sized vocabulary, no model file
  workdir_lib.save_config(config, no_tok)
  assert "the workdir has no tokenizer" in error(["--workdir", no_tok, "--prompt", "hi"])
  config.tokenizer.path = str(tmp_path / "gone.model")
  workdir_lib.save_config(config, no_tok)
  assert "gone.model' does not exist" in error(["--workdir", no_tok, "--prompt", "hi"])


@pytest.mark.slow
def test_prompt_on_imported_llava_equals_the_eval_engine(image, tmp_path, capsys):
  """A random-weight transformers LlavaForConditionalGeneration with a SentencePiece
  tokenizer, imported with kosmos-import, answered with LLaVA's v1 template."""
  pytest.importorskip("torch")
  pytest.importorskip("transformers")
  from kosmos.interop import main as interop_main
  from test_interop_import_cli import llava_dir
  src = llava_dir(str(tmp_path / "src"))
  shutil.copyfile(tiny_spm.xlmr_like(str(tmp_path / "spm")), os.path.join(src, "tokenizer.model"))
  wd = str(tmp_path / "llava")
  assert interop_main.import_main(["--format", "hf", "--src", src, "--out", wd]) == 0
  capsys.readouterr()
  question = "the cat sat on a mat?"
  got = _chat_json(capsys, ["--workdir", wd, "--template", "llava_v1", "--image", image,
                            "--prompt", question, "--max-new-tokens", "6"])
  assert got["template"] == "llava_v1" and 1 <= len(got["tokens"]) <= 6
  _, _, generated = _eval_engine(wd, "llava_v1", image, question, 6)
  assert got["tokens"] == generated.tokens and got["answer"] == generated.text
