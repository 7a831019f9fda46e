"""Few-shot prompts: demonstrations + query -> an interleaved segment list.

A `Template` is three config-able strings (str.format over `Example.fields`):

    prompt      text after an example's images ("Question: {question} Answer:")
    target      the continuation: a demonstration's answer, or each ranked candidate
                (" {answer}"; the leading space belongs to the target, so a
                classification candidate is scored exactly as a demonstration shows it)
    separator   appended after every demonstration ("\\n")

`build_prompt` renders, for each demonstration in order, its images then
`prompt + target + separator`, then the query's images and `prompt`. Segments use the
record format of ARCHITECTURE.md ({"text": str} | {"image": bytes}); adjacent text
segments are merged and empty ones dropped, so a 0-shot prompt with text-only
demonstrations (their images dropped, as OpenFlamingo does) is one text segment, the
query image, and the query prompt.

KOSMOS-1-style defaults (`TEMPLATES`): captioning "An image of" -> " {caption}"; VQA
"Question: {question} Answer:" -> " {answer}"; classification "This is an image of" ->
" {answer}"; HatefulMemes as Flamingo (meme text in the prompt, yes/no target); Rendered
SST-2 as a sentiment question; text multiple choice "{question}\\nAnswer:"; fast
binding (Frozen) "This is a" -> " {answer}" with "." after each support item. KOSMOS-2's
grounding tasks: referring expression comprehension "<grounding><phrase> {phrase}</phrase>"
-> "{object}" (the location tokens); phrase grounding the same after the sentence's words
before the phrase; referring expression generation "<grounding><phrase> It</phrase>{object}
is" -> " {expression}".
`openflamingo_*`: OpenFlamingo's eval prompts (see kosmos.eval.protocols); their targets
have no leading space, as OpenFlamingo writes them ("Short answer:{answer}").
"""

from __future__ import annotations

import dataclasses
import string
from typing import Any, Mapping, Sequence

from kosmos.eval.tasks.example import Example

Segment = dict[str, Any]  # {"text": str} | {"image": bytes}


@dataclasses.dataclass(frozen=True)
class Template:
  prompt: str
  target: str = " {answer}"
  separator: str = "\n"


TEMPLATES: dict[str, Template] = {
    "caption": Template(prompt="An image of", target=" {caption}"),
    "vqa": Template(prompt="Question: {question} Answer:"),
    "classification": Template(prompt="This is an image of"),
    "hateful_memes": Template(
        prompt='is an image with written: "{text}" on it. Is it hateful? Answer:'),
    "rendered_sst2": Template(prompt="Question: what is the sentiment of the opinion? Answer:"),
    "multiple_choice": Template(prompt="{question}\nAnswer:", separator="\n\n"),
    "binding": Template(prompt="This is a", separator="."),
    # KOSMOS-2's grounding prompts ({object}: the example's boxes as location tokens,
    # kosmos.eval.grounding): the model continues a phrase with its <object>, or describes
    # the object shown.
    "rec": Template(prompt="<grounding><phrase> {phrase}</phrase>", target="{object}"),
    "phrase_grounding": Template(prompt="<grounding>{prefix}<phrase> {phrase}</phrase>",
                                 target="{object}"),
    "reg": Template(prompt="<grounding><phrase> It</phrase>{object} is", target=" {expression}"),
    # OpenFlamingo's eval prompts (kosmos.eval.protocols, --protocol openflamingo); the
    # image segment stands where its text has "<image>".
    "openflamingo_caption": Template(prompt="Output:", target="{caption}",
                                     separator="<|endofchunk|>\n"),
    "openflamingo_vqa": Template(prompt="Question:{question} Short answer:",
                                 target="{first_answer}", separator="<|endofchunk|>\n"),
    "openflamingo_hateful_memes": Template(
        prompt="is an image with: '{text}' written on it. Is it hateful? Answer:",
        target="{answer}", separator="<|endofchunk|>"),
    "openflamingo_imagenet": Template(prompt="Output:", target="{answer}",
                                      separator="<|endofchunk|>"),
}


@dataclasses.dataclass(frozen=True)
class Prompt:
  """segments: the interleaved model input; candidates: continuations to rank (empty for
  generation tasks), each scored after `segments`."""
  segments: list[Segment]
  candidates: tuple[str, ...] = ()

  @property
  def num_images(self) -> int:
    return sum(1 for s in self.segments if "image" in s)


def get_template(name: str, overrides: Mapping[str, str] | None = None) -> Template:
  """The named template, with any of prompt/target/separator replaced (config strings)."""
  if name not in TEMPLATES:
    raise ValueError(f"unknown prompt template {name!r}; valid: {sorted(TEMPLATES)}")
  overrides = dict(overrides or {})
  bad = set(overrides) - {f.name for f in dataclasses.fields(Template)}
  if bad:
    raise ValueError(f"template overrides {sorted(bad)} are not among prompt, target, separator")
  return dataclasses.replace(TEMPLATES[name], **overrides)


def _fill(text: str, fields: Mapping[str, str], example_id: str) -> str:
  try:
    return text.format(**fields)
  except KeyError as e:
    names = [n for _, n, _, _ in string.Formatter().parse(text) if n]
    raise KeyError(f"template {text!r} needs fields {names}; example {example_id!r} has "
                   f"{sorted(fields)}") from e


def _append(segments: list[Segment], segment: Segment) -> None:
  if "text" in segment:
    if not segment["text"]:
      return
    if segments and "text" in segments[-1]:
      segments[-1] = {"text": segments[-1]["text"] + segment["text"]}
      return
  segments.append(segment)


def build_prompt(template: Template, demos: Sequence[Example], query: Example, *,
                 candidates: Sequence[str] = (), text_only_demos: bool = False) -> Prompt:
  """The few-shot prompt for `query` after `demos` (in order; the last is nearest the query).

  Args:
    template: the task's Template.
    demos: demonstrations; their `fields` must fill prompt and target.
    query: the example to answer; its `fields` must fill prompt.
    candidates: answers to rank (class names or choices); each becomes
      `target.format(**query.fields, answer=candidate)`.
    text_only_demos: drop the demonstrations' images (0-shot with text-only demos).
  """
  segments: list[Segment] = []
  for demo in demos:
    if not text_only_demos:
      for image in demo.images():
        _append(segments, {"image": image})
    _append(segments, {"text": _fill(template.prompt + template.target, demo.fields, demo.id)
                       + template.separator})
  for image in query.images():
    _append(segments, {"image": image})
  _append(segments, {"text": _fill(template.prompt, query.fields, query.id)})
  rendered = tuple(_fill(template.target, {**query.fields, "answer": c}, query.id)
                   for c in candidates)
  return Prompt(segments=segments, candidates=rendered)
