"""Chat templates: conversation turns -> the token sequence a chat model trains and talks on.

A template (`config.tokenizer.chat_template`, a config section) holds a system prompt and
format strings (plain text with placeholders, substituted literally, not str.format):

    prefix      after `<s>`, before the first turn; may hold {system}
    user        one user turn; {message} is the turn's text and images
    first_user  the first user turn when it differs (Llama-2 wraps the system prompt into
                it); "" = `user`; when it holds {system} and the system prompt is empty,
                `user` without a leading {bos} is used (LLaVA's conv_llava_llama_2 and
                Llama-2 chat write no empty <<SYS>> block)
    assistant   one assistant turn; the text before {message} is prompt, except its
                trailing spaces: they, the answer and the end of turn after it carry loss
                (an open turn for generation ends before those spaces: "ASSISTANT:")
    image       the text around each image span, {image} the span (MiniGPT-4: <Img>..</Img>)
    stop        a string that ends a generated answer besides `</s>` ("" = none)
    image_sep   in a user turn that kosmos composes from images then a question
                (kosmos-chat, kosmos-eval --chat; `user_content`), the text between the
                last image and the question, as the system's own chat code joins them:
                LLaVA "<image>" + "\n" + question, MiniGPT-4 "<Img>..</Img>" + " " +
                question, mPLUG-Owl "<image>" + "\nHuman: " + question. Records keep
                their own text (the converters copy it verbatim).

`{bos}` / `{eos}` in a format are the tokenizer's `<s>` / `</s>` ids (never text a user can
type). A conversation is the record format's segment list (kosmos.data.records:
`{"turn": role}` then the turn's `{"text"}` / `{"image"}` segments); an assistant turn with
no content is an open turn, rendered up to its prompt part with trailing spaces removed,
as the original systems prompt for generation ("... ASSISTANT:").

Tokenization follows the original systems, which tokenize the rendered string as a whole:
the text between two specials or images is encoded as one string, and the loss boundary
inside it is found as the ids that encoding the text up to the answer's end adds to the
encoding of the text before it (when that prefix tokenizes the same alone; else the answer
is encoded on its own). So "ASSISTANT: Yes" gives the answer "▁Yes" with a SentencePiece
model, as in LLaVA.

`TEMPLATES` hold the systems' own (tests/test_chat.py compares each with the string the
original code builds): "llava_v1" (LLaVA v1 / v1.5, conv_llava_v1), "vicuna_v0" (MiniGPT-4's
CONV_VISION_Vicuna0), "mplug_owl" (mPLUG-Owl's serve conversation), "llama2" (Llama-2 chat
`[INST]` with LLaVA's conv_llava_llama_2 system prompt), and "kosmos" (plain question /
answer turns after KOSMOS-1's VQA prompt, no system prompt).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Sequence

import ml_collections
import numpy as np

from kosmos.data import records
from kosmos.data import tokenizer as tokenizer_lib

MESSAGE, SYSTEM, IMAGE = "{message}", "{system}", "{image}"
BOS, EOS = "{bos}", "{eos}"
DEFAULT = "kosmos"


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
  name: str = DEFAULT
  system: str = ""
  prefix: str = ""
  user: str = "Question: {message} "
  first_user: str = ""
  assistant: str = "Answer: {message}{eos}"
  image: str = "{image}"
  stop: str = ""
  image_sep: str = ""

  def __post_init__(self):
    for field in ("user", "assistant") + (("first_user",) if self.first_user else ()):
      if getattr(self, field).count(MESSAGE) != 1:
        raise ValueError(f"chat template {self.name!r}: {field}={getattr(self, field)!r} must "
                         f"hold {MESSAGE} once")
    if self.image.count(IMAGE) != 1:
      raise ValueError(f"chat template {self.name!r}: image={self.image!r} must hold {IMAGE} once")


_LLAVA_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the human's "
                 "questions.")
TEMPLATES: dict[str, ChatTemplate] = {t.name: t for t in (
    ChatTemplate(),
    ChatTemplate(name="llava_v1", system=_LLAVA_SYSTEM, prefix="{system} ",
                 user="USER: {message} ", assistant="ASSISTANT: {message}{eos}",
                 image_sep="\n"),
    ChatTemplate(name="vicuna_v0",
                 system="Give the following image: <Img>ImageContent</Img>. You will be able "
                 "to see the image once I provide it to you. Please answer my questions.",
                 prefix="{system}###", user="Human: {message}###",
                 assistant="Assistant: {message}###", image="<Img>{image}</Img>", stop="###",
                 image_sep=" "),
    ChatTemplate(name="mplug_owl",
                 system="The following is a conversation between a curious human and AI. The "
                 "AI gives helpful, detailed, and polite answers to the human's questions.",
                 prefix="{system}\n", user="Human: {message}\n", assistant="AI: {message}\n",
                 stop="\nHuman:", image_sep="\nHuman: "),
    ChatTemplate(name="llama2",
                 system="You are a helpful language and vision assistant. You are able to "
                 "understand the visual content that the user provides, and assist the user "
                 "with a variety of tasks using natural language.",
                 first_user="[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{message} [/INST]",
                 user="{bos}[INST] {message} [/INST]", assistant=" {message} {eos}",
                 image_sep="\n"),
)}


def config(name: str = DEFAULT, **overrides: str) -> ml_collections.ConfigDict:
  """The config section of template `name` (e.g. `config.tokenizer.chat_template`)."""
  return ml_collections.ConfigDict(dataclasses.asdict(get(name, **overrides)))


def get(name: str = DEFAULT, **overrides: str) -> ChatTemplate:
  if name not in TEMPLATES:
    raise ValueError(f"unknown chat template {name!r}; valid: {sorted(TEMPLATES)}")
  return dataclasses.replace(TEMPLATES[name], **overrides)


def from_config(tokenizer: ml_collections.ConfigDict | dict) -> ChatTemplate:
  """The template of a `config.tokenizer` section (the default one when it has none)."""
  section = tokenizer.get("chat_template") if tokenizer is not None else None
  if not section:
    return get(DEFAULT)
  values = dict(section.to_dict() if hasattr(section, "to_dict") else section)
  fields = {f.name for f in dataclasses.fields(ChatTemplate)}
  unknown = sorted(set(values) - fields)
  if unknown:
    raise ValueError(f"config.tokenizer.chat_template has unknown fields {unknown}; "
                     f"valid: {sorted(fields)}")
  return ChatTemplate(**values)


def user_content(template: ChatTemplate,
                 content: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
  """A user turn's content that kosmos composes (kosmos-chat's images and question, a
  kosmos-eval --chat query): a text right after an image starts with `image_sep`."""
  out = []
  for segment in content:
    if "text" in segment and out and "image" in out[-1] and template.image_sep:
      segment = {"text": template.image_sep + segment["text"]}
    out.append(segment)
  return out


# A piece: (kind, value, loss); kind "text" (value str), "image" (value: the segment's
# image), "bos" / "eos" (value None).
Piece = tuple[str, Any, bool]


def _markup(text: str, template: ChatTemplate, loss: bool) -> list[Piece]:
  text = text.replace(SYSTEM, template.system)
  out = []
  for part in re.split(r"(\{bos\}|\{eos\})", text):
    if part in (BOS, EOS):
      out.append((part[1:-1], None, loss))
    elif part:
      out.append(("text", part, loss))
  return out


def turns(segments: Sequence[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
  """[(role, content segments)] of a conversation's segment list."""
  out: list[tuple[str, list[dict[str, Any]]]] = []
  for segment in segments:
    if "turn" in segment:
      if segment["turn"] not in records.ROLES:
        raise ValueError(f"turn role {segment['turn']!r}; valid: {records.ROLES}")
      out.append((segment["turn"], []))
    elif not out:
      raise ValueError("a conversation must start with a {'turn': role} segment")
    else:
      out[-1][1].append(segment)
  return out


def render(template: ChatTemplate, segments: Sequence[dict[str, Any]]) -> list[Piece]:
  """The pieces of a conversation (see the module docstring); a trailing assistant turn with
  no content is open: its prompt part, right-stripped of spaces, ends the pieces."""
  pieces = _markup(template.prefix, template, False)
  conversation = turns(segments)
  for index, (role, content) in enumerate(conversation):
    if role == records.USER:
      form = template.user
      if index == 0 and template.first_user:
        form = (template.first_user if template.system or SYSTEM not in template.first_user
                else form[len(BOS):] if form.startswith(BOS) else form)
    else:
      form = template.assistant
    before, after = form.split(MESSAGE)
    answer = role == records.ASSISTANT
    if answer and not content and index == len(conversation) - 1:
      pieces += _markup(before.rstrip(" "), template, False)
      break
    prompt = before.rstrip(" ")
    pieces += _markup(prompt, template, False)
    if before != prompt:  # "ASSISTANT: " + answer: the space is the answer's first character
      pieces.append(("text", before[len(prompt):], answer))
    image_before, image_after = template.image.split(IMAGE)
    for segment in content:
      if "image" in segment:
        pieces += _markup(image_before, template, answer)
        pieces.append(("image", segment["image"], answer))
        pieces += _markup(image_after, template, answer)
      elif "text" in segment:
        pieces.append(("text", segment["text"], answer))
      else:
        raise ValueError(f"conversation segment with keys {sorted(segment)}; valid: text, image")
    pieces += _markup(after, template, answer)
  return pieces


def render_text(template: ChatTemplate, segments: Sequence[dict[str, Any]],
                image_text: str = "<image>") -> str:
  """The rendered conversation as one string (`<s>` / `</s>` for the specials, each image
  as `image_text`), without the leading `<s>`: what the original systems' prompt builders
  return."""
  names = {"bos": "<s>", "eos": "</s>"}
  return "".join(value if kind == "text" else image_text if kind == "image" else names[kind]
                 for kind, value, _ in render(template, segments))


def prompt_segments(template: ChatTemplate,
                    segments: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
  """A conversation rendered as prompt segments (`{"text"}` / `{"image"}`, adjacent texts
  merged) for `kosmos.infer.engine`, which adds `<s>`; `encode` gives the same ids when each
  text segment tokenizes alone as `encode` tokenizes it. Raises ValueError when the
  rendering holds `<s>` / `</s>` (several turns of templates that end turns with them)."""
  out: list[dict[str, Any]] = []
  for kind, value, _ in render(template, segments):
    if kind == "text":
      if out and "text" in out[-1]:
        out[-1] = {"text": out[-1]["text"] + value}
      else:
        out.append({"text": value})
    elif kind == "image":
      out.append({"image": value})
    else:
      raise ValueError(f"chat template {template.name!r} puts a <{kind}> token inside this "
                       "conversation; it has no prompt-segment form (use `encode`)")
  return out


@dataclasses.dataclass
class Encoded:
  """tokens int32 [l] (from `<s>`), loss uint8 [l] (1 where the token is a target that
  carries loss: the assistants' answers and ends of turn), images in order."""
  tokens: np.ndarray
  loss: np.ndarray
  images: list[Any]


def encode(template: ChatTemplate, segments: Sequence[dict[str, Any]],
           tok: tokenizer_lib.Tokenizer, tokens_per_image: int,
           image_fn: Callable[[Any], Any] = lambda image: image) -> Encoded:
  """Tokenizes a rendered conversation (module docstring); `image_fn` maps each image
  segment's value (e.g. decodes it; it may raise to reject the conversation)."""
  tokens, loss, images = [tok.bos_id], [0], []
  run, run_ids = "", []  # the text since the last special or image, and its ids

  for kind, value, flag in render(template, segments):
    if kind == "text":
      joined = tok.encode(run + value)
      new = (joined[len(run_ids):] if joined[:len(run_ids)] == run_ids else tok.encode(value))
      run, run_ids = run + value, run_ids + new
      tokens += new
      loss += [int(flag)] * len(new)
      continue
    run, run_ids = "", []
    if kind == "image":
      images.append(image_fn(value))
      span = tokenizer_lib.image_span(tok, tokens_per_image)
      tokens += span
      loss += [0] * len(span)
    else:
      tokens.append(tok.bos_id if kind == "bos" else tok.eos_id)
      loss.append(int(flag))
  return Encoded(np.asarray(tokens, np.int32), np.asarray(loss, np.uint8), images)
