"""Chat templates against the exact strings the original systems' prompt builders return,
and their tokenization (loss only on answers and their end of turn).

The reference builders below are ported from (public code, read at these commits):
- haotian-liu/LLaVA llava/conversation.py @ 053c284aee8995a0596fdda47b927a6d2a9b33cd:
  `Conversation.get_prompt` for SeparatorStyle.TWO (conv_llava_v1 / conv_vicuna_v1) and
  SeparatorStyle.LLAMA_2 (conv_llava_llama_2).
- Vision-CAIR/MiniGPT-4 minigpt4/conversation/conversation.py @
  ff0322c35bd22a629b75bf1248c1ef6ce33bceb5: SeparatorStyle.SINGLE with CONV_VISION_Vicuna0,
  and `Chat.upload_img` / `Chat.ask` (the image message "<Img><ImageHere></Img>", the
  question joined to it with a space).
- X-PLUG/mPLUG-Owl mPLUG-Owl/serve/conversation.py @ 21ff9b0bd301fa8d7be107a5ed85b34278eca64f:
  SeparatorStyle.SINGLE (system and sep "\\n" set inside get_prompt).
"""

import numpy as np
import pytest

from kosmos import defaults
from kosmos.data import chat
from kosmos.data import tokenizer as tokenizer_lib

LLAVA_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
                "The assistant gives helpful, detailed, and polite answers to the human's "
                "questions.")


def llava_two(system, roles, messages, sep=" ", sep2="</s>"):
  """LLaVA get_prompt, SeparatorStyle.TWO."""
  seps = [sep, sep2]
  ret = system + seps[0]
  for i, (role, message) in enumerate(messages):
    if message:
      ret += role + ": " + message + seps[i % 2]
    else:
      ret += role + ":"
  return ret


def llava_llama_2(system, roles, messages, sep="<s>", sep2="</s>"):
  """LLaVA get_prompt, SeparatorStyle.LLAMA_2."""
  wrap_sys = lambda msg: f"<<SYS>>\n{msg}\n<</SYS>>\n\n" if len(msg) > 0 else msg
  wrap_inst = lambda msg: f"[INST] {msg} [/INST]"
  ret = ""
  for i, (role, message) in enumerate(messages):
    if message:
      if i == 0:
        message = wrap_sys(system) + message
      if i % 2 == 0:
        ret += sep + wrap_inst(message)
      else:
        ret += " " + message + " " + sep2
  return ret.lstrip(sep)


def minigpt4_single(system, roles, messages, sep="###"):
  """MiniGPT-4 get_prompt, SeparatorStyle.SINGLE (roles carry their ': ')."""
  ret = system + sep
  for role, message in messages:
    ret += role + message + sep if message else role
  return ret


def mplug_owl_single(roles, messages):
  """mPLUG-Owl serve get_prompt, SeparatorStyle.SINGLE."""
  system = ("The following is a conversation between a curious human and AI. The AI gives "
            "helpful, detailed, and polite answers to the human's questions.")
  sep = "\n"
  ret = system + sep
  for role, message in messages:
    if message:
      ret += role + ": " + message + sep
    elif role != "":
      ret += role + ":"
  return ret


IMAGE = b"img"


def conversation(*turns):
  """Record segments from (role, [text | IMAGE, ...]) turns."""
  out = []
  for role, content in turns:
    out.append({"turn": role})
    out += [{"image": c} if c is IMAGE else {"text": c} for c in content]
  return out


TWO_ROUNDS = conversation(("user", [IMAGE, "\nWhat is on the bus?"]), ("assistant", ["An ad."]),
                          ("user", ["And the color?"]), ("assistant", ["Red."]))
MESSAGES = ["<image>\nWhat is on the bus?", "An ad.", "And the color?", "Red."]


def _pairs(roles, messages):
  return [(roles[i % 2], m) for i, m in enumerate(messages)]


def test_llava_v1_matches_llava():
  t = chat.get("llava_v1")
  roles = ("USER", "ASSISTANT")
  assert chat.render_text(t, TWO_ROUNDS) == llava_two(LLAVA_SYSTEM, roles, _pairs(roles, MESSAGES))
  assert chat.render_text(t, TWO_ROUNDS[:-1]) == llava_two(
      LLAVA_SYSTEM, roles, _pairs(roles, MESSAGES[:3] + [None]))


def test_llama2_matches_llava_llama_2():
  t = chat.get("llama2")
  roles = ("USER", "ASSISTANT")
  assert chat.render_text(t, TWO_ROUNDS) == llava_llama_2(t.system, roles, _pairs(roles, MESSAGES))
  # Open turn: LLaVA adds nothing for the empty assistant message; the prompt ends "[/INST]".
  assert chat.render_text(t, TWO_ROUNDS[:-1]) == llava_llama_2(
      t.system, roles, _pairs(roles, MESSAGES[:3] + [None]))
  # No system prompt (e.g. kosmos-chat --system ""): no empty <<SYS>> block, as LLaVA.
  bare = chat.get("llama2", system="")
  assert chat.render_text(bare, TWO_ROUNDS) == llava_llama_2("", roles, _pairs(roles, MESSAGES))
  assert chat.render_text(bare, TWO_ROUNDS) == (
      "[INST] <image>\nWhat is on the bus? [/INST] An ad. </s><s>[INST] And the color? [/INST]"
      " Red. </s>")
  assert t.system == ("You are a helpful language and vision assistant. You are able to "
                      "understand the visual content that the user provides, and assist the "
                      "user with a variety of tasks using natural language.")


def test_vicuna_v0_matches_minigpt4():
  t = chat.get("vicuna_v0")
  roles = ("Human: ", "Assistant: ")
  segments = conversation(("user", [IMAGE, " Describe it."]), ("assistant", ["A bus."]),
                          ("user", ["Why?"]), ("assistant", ["It is."]))
  # Chat.upload_img then Chat.ask: "<Img><ImageHere></Img>" + " " + question.
  messages = ["<Img><ImageHere></Img> Describe it.", "A bus.", "Why?", "It is."]
  want = minigpt4_single(t.system, roles, _pairs(roles, messages))
  assert chat.render_text(t, segments, image_text="<ImageHere>") == want
  # MiniGPT-4's open turn ends "###Assistant: "; ours drops the trailing space (module doc).
  open_want = minigpt4_single(t.system, roles, _pairs(roles, messages[:3] + [None]))
  assert chat.render_text(t, segments[:-1], image_text="<ImageHere>") == open_want.rstrip(" ")


def test_mplug_owl_matches_mplug_owl():
  t = chat.get("mplug_owl")
  roles = ("Human", "AI")
  assert chat.render_text(t, TWO_ROUNDS) == mplug_owl_single(roles, _pairs(roles, MESSAGES))
  assert chat.render_text(t, TWO_ROUNDS[:-1]) == mplug_owl_single(
      roles, _pairs(roles, MESSAGES[:3] + [None]))


def test_kosmos_template_is_the_vqa_prompt():
  t = chat.get("kosmos")
  assert chat.render_text(t, TWO_ROUNDS) == (
      "Question: <image>\nWhat is on the bus? Answer: An ad.</s>"
      "Question: And the color? Answer: Red.</s>")
  assert chat.render_text(t, conversation(("user", ["Why?"]), ("assistant", []))) == (
      "Question: Why? Answer:")


def test_encode_loss_covers_answers_and_end_of_turn():
  tok = tokenizer_lib.ByteTokenizer()
  n = 3
  for name in chat.TEMPLATES:
    t = chat.get(name)
    enc = chat.encode(t, TWO_ROUNDS, tok, n)
    text = chat.render_text(t, TWO_ROUNDS, image_text="")
    # Byte tokens: the rendered text's bytes, with the specials and the image span.
    assert tok.decode(enc.tokens) == text.replace("<s>", "").replace("</s>", "")
    assert enc.tokens[0] == tok.bos_id and enc.images == [IMAGE]
    span = tokenizer_lib.image_span(tok, n)
    at = int(np.flatnonzero(enc.tokens == tok.image_slot_id)[0]) - 1
    assert enc.tokens[at:at + len(span)].tolist() == span
    got = tok.decode(enc.tokens[enc.loss == 1]) + "|" * int((enc.tokens[enc.loss == 1]
                                                            == tok.eos_id).sum())
    before, after = t.assistant.split("{message}")
    lead = before[len(before.rstrip(" ")):]  # "ASSISTANT: " -> " ": the answer's
    end = after.replace("{eos}", "")
    eos = "|" if "{eos}" in after else ""
    assert got == lead + "An ad." + end + lead + "Red." + end + eos * 2, name


def test_from_config_and_defaults():
  config = defaults.tokenizer()
  assert chat.from_config(config) == chat.get("kosmos")
  config.chat_template = chat.config("llava_v1", system="Be brief.")
  assert chat.from_config(config) == chat.get("llava_v1", system="Be brief.")
  with pytest.raises(ValueError, match="unknown chat template"):
    chat.get("vicuna_v9")
  with pytest.raises(ValueError, match="must hold"):
    chat.get("kosmos", user="no placeholder")


def test_sentencepiece_answers_tokenize_as_in_the_whole_string(tmp_path):
  """With a Llama-layout SentencePiece model (dummy prefix), the ids of a rendered turn are
  those of the whole string, as LLaVA tokenizes it: the answer is "▁Red", not "▁", "▁Red"."""
  import sentencepiece as spm
  import tiny_spm
  prefix = str(tmp_path / "llama_like")
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(tiny_spm.sentences() + ["USER: ASSISTANT: A chat"] * 20),
      model_prefix=prefix, vocab_size=400, model_type="unigram", unk_id=0, bos_id=1, eos_id=2,
      pad_id=-1, byte_fallback=True, hard_vocab_limit=False, minloglevel=2)
  config = defaults.tokenizer()
  config.update(path=prefix + ".model", pad_id=0, unk_id=0, bos_id=1, eos_id=2,
                image_start_id=-1, image_end_id=-1, image_slot_id=700, vector_slot_id=-1)
  tok = tokenizer_lib.load(config)
  t = chat.get("llava_v1", system="the cat sat")
  segments = conversation(("user", ["red houses"]), ("assistant", ["blue skies, 12!"]))
  enc = chat.encode(t, segments, tok, 4)
  whole = tok.encode("the cat sat USER: red houses ASSISTANT: blue skies, 12!")
  assert enc.tokens.tolist() == [tok.bos_id] + whole + [tok.eos_id]
  prompt = tok.encode("the cat sat USER: red houses ASSISTANT:")
  assert whole[:len(prompt)] == prompt
  assert enc.loss.tolist() == [0] * (1 + len(prompt)) + [1] * (len(whole) - len(prompt) + 1)
  # The open turn (generation prompt) is exactly the training prompt's ids.
  open_turn = chat.encode(t, segments[:-1], tok, 4)
  assert open_turn.tokens.tolist() == [tok.bos_id] + prompt


class _ByteEngine:
  """What `kosmos.infer.chat.Session` uses of an Engine; `stream` replays fixed text."""
  image_size, tokens_per_image, max_len = 16, 2, 4096

  def __init__(self, reply: str):
    self.tok = tokenizer_lib.ByteTokenizer()
    self.reply = reply

  def stream(self, prompt, **kwargs):
    yield from self.tok.encode(self.reply) + [self.tok.eos_id]


def test_chat_history_renders_as_training_does():
  """A byte-level model answers " Red." (the space after "ASSISTANT:" is its first target);
  the next prompt holds "ASSISTANT: Red.</s>", the training rendering, not "ASSISTANT:  Red."."""
  from kosmos.infer import chat as chat_cli
  template = chat.get("llava_v1")
  session = chat_cli.Session(_ByteEngine(" Red."), template)
  assert "".join(piece for _, piece in session.ask("Color?")) == " Red."
  assert session.last["answer"] == " Red."
  history = conversation(("user", ["Color?"]), ("assistant", ["Red."]), ("user", ["Why?"]),
                         ("assistant", []))
  assert session.encode("Why?").tokens.tolist() == chat.encode(
      template, history, session.engine.tok, 2).tokens.tolist()


def test_composed_user_turns_join_image_and_question_as_the_systems_do():
  """kosmos-chat / kosmos-eval --chat compose a user turn from images and a question; the
  text between them is the system's own: LLaVA's cli and model_vqa write
  DEFAULT_IMAGE_TOKEN + '\\n' + question, MiniGPT-4's Chat.ask ' '.join([image message,
  text]), mPLUG-Owl "Human: <image>\\nHuman: question"."""
  question = "What is it?"
  cases = {
      "llava_v1": llava_two(LLAVA_SYSTEM, ("USER", "ASSISTANT"),
                            [("USER", "<image>\n" + question), ("ASSISTANT", None)]),
      "llama2": llava_llama_2(chat.get("llama2").system, ("USER", "ASSISTANT"),
                              [("USER", "<image>\n" + question), ("ASSISTANT", None)]),
      "vicuna_v0": minigpt4_single(chat.get("vicuna_v0").system, ("Human: ", "Assistant: "),
                                   [("Human: ", "<Img><image></Img> " + question),
                                    ("Assistant: ", None)]).rstrip(" "),
      "mplug_owl": mplug_owl_single(("Human", "AI"), [("Human", "<image>\nHuman: " + question),
                                                      ("AI", None)]),
      "kosmos": "Question: <image>" + question + " Answer:",
  }
  for name, want in cases.items():
    t = chat.get(name)
    content = chat.user_content(t, [{"image": IMAGE}, {"text": question}])
    segments = [{"turn": "user"}, *content, {"turn": "assistant"}]
    assert chat.render_text(t, segments) == want, name
  # text-only turns and text before an image are left as they are
  t = chat.get("llava_v1")
  assert chat.user_content(t, [{"text": question}]) == [{"text": question}]
  assert chat.user_content(t, [{"text": "a"}, {"image": IMAGE}]) == [{"text": "a"},
                                                                   {"image": IMAGE}]


def test_workdirs_saved_before_image_sep_still_resume(tmp_path):
  """`image_sep` only joins turns kosmos composes (chat, eval --chat), never training
  records: a workdir saved without it resumes with a template that has it."""
  import json
  from kosmos import workdir as workdir_lib
  from kosmos.train import trainer
  config = defaults.base()
  config.model = {"decoder": {"vocab_size": 264}}
  config.tokenizer.chat_template = chat.config("llava_v1")
  old = config.to_dict()
  del old["tokenizer"]["chat_template"]["image_sep"]
  with open(tmp_path / "config.json", "w") as f:
    json.dump(old, f)
  workdir_lib.save_params(str(tmp_path), 1, {"w": np.zeros(2, np.float32)})
  assert config.tokenizer.chat_template.image_sep == "\n"
  trainer._check_resume_config(config, str(tmp_path))
  config.tokenizer.chat_template.system = "another"
  with pytest.raises(ValueError, match="chat_template.system"):
    trainer._check_resume_config(config, str(tmp_path))
