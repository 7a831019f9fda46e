"""Evaluation protocols: named presets of prompts, decoding, scoring and post-processing.

A `Protocol` fixes everything about a few-shot run except the model, data and shots:
which prompt template each task uses, the decoding settings per task, how generated text
becomes a prediction, how classes are scored, which VQA accuracy variant is computed, and
what RICES does at 0 shots. `kosmos-eval --protocol NAME` picks one (`PROTOCOLS`):

    kosmos        KOSMOS-1-style prompts (kosmos.eval.prompts.TEMPLATES), greedy VQA with 5
                  new tokens, captions by 3 beams / 20 tokens, classes ranked by their
                  summed log-likelihood, the official VQA accuracy (vqav2, okvqa; VizWiz
                  and TextVQA normalize every answer), RICES only for shots > 0 (0-shot
                  demos are 2 random text-only ones).
    openflamingo  OpenFlamingo's eval (open_flamingo/eval/evaluate.py and
                  models/open_flamingo.py), the protocol of its published tables:
                    captions   "<image>Output:{caption}<|endofchunk|>\\n" per demo, query
                               "<image>Output:"; 3 beams, 20 new tokens; cut at "Output",
                               double quotes dropped
                    VQA        "<image>Question:{question} Short answer:{answer}<|endofchunk|>\\n"
                               with the demo's FIRST annotator answer (not VQAv2's
                               multiple_choice_answer); 3 beams, 5 new tokens (TextVQA 10);
                               cut at "Question"/"Answer"/"Short" then ", "; OK-VQA
                               predictions stemmed (kosmos.eval.okvqa_stem); accuracy by
                               OpenFlamingo's metric copy (every answer normalized)
                    HatefulMemes "<image>is an image with: '{text}' written on it. Is it
                               hateful? Answer:{yes|no}<|endofchunk|>"; ROC AUC on P("yes")
                    ImageNet   "<image>Output:{class name}<|endofchunk|>" (OpenFlamingo's
                               current code; its older code used the same prompt without
                               <|endofchunk|>); top-1 accuracy; also used for other image
                               folders and TFDS classification (rendered_sst2, text_mc and
                               binding have no OpenFlamingo prompt and are refused)
                  classes ranked by their per-token MEAN log-likelihood
                  (`normalize_length=True`); generation stops at "<|endofchunk|>"; with
                  RICES, 0 shots use the 2 most similar demos, text only.

Known differences from OpenFlamingo that no setting removes: images are spans of tokens in
the sequence (`<image>` slots `</image>`), not cross-attended media, so OpenFlamingo's
0-shot classification quirk (the two demo images are passed to the model although their
`<image>` markers were removed from the text) has no counterpart: kosmos drops them. A
class name is tokenized in its context ("Output:" + name), OpenFlamingo tokenizes it alone.
Prompt ensembling (`--classification_prompt_ensembling`, off by default there) is not
implemented. Demonstrations are drawn per (trial seed, query id), not from one stream.
"<|endofchunk|>" is tokenized by the workdir's tokenizer: a special piece only if that
tokenizer has one.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

from kosmos.eval import metrics
from kosmos.eval import okvqa_stem
from kosmos.eval import vqa_normalize
from kosmos.eval.tasks.example import CAPTION, VQA, Task

KOSMOS, OPENFLAMINGO = "kosmos", "openflamingo"
SUM, MEAN = "sum", "mean"  # class scores: summed or per-token mean log-likelihood
END_OF_CHUNK = "<|endofchunk|>"


@dataclasses.dataclass(frozen=True)
class Protocol:
  """name; templates: {task name or kind: template name in prompts.TEMPLATES} (a task
  found in neither keeps its own template; `None` as a value = the protocol does not cover
  that task); settings: {"*" or task name: {runner.Settings field: value}}, task names
  overriding "*"; vqa_metric: vqa_normalize variant for every VQA task, or None = each
  task's default; class_score: SUM | MEAN; postprocess: KOSMOS | OPENFLAMINGO;
  okvqa_stem: stem OK-VQA predictions; rices_zero_shot: with RICES, 0 shots take the 2
  nearest demos (text only) instead of 2 random ones."""
  name: str
  templates: Mapping[str, str | None] = dataclasses.field(default_factory=dict)
  settings: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
  vqa_metric: str | None = None
  class_score: str = SUM
  postprocess: str = KOSMOS
  okvqa_stem: bool = False
  rices_zero_shot: bool = False

  def settings_for(self, task_name: str) -> dict[str, Any]:
    """The runner.Settings fields this protocol sets for `task_name`."""
    return {**self.settings.get("*", {}), **self.settings.get(task_name, {})}


PROTOCOLS: dict[str, Protocol] = {
    KOSMOS: Protocol(name=KOSMOS, settings={"*": dict(
        caption_beams=3, caption_tokens=20, vqa_beams=1, vqa_tokens=5, length_penalty=0.0,
        stop_strings=())}),
    OPENFLAMINGO: Protocol(
        name=OPENFLAMINGO,
        templates={CAPTION: "openflamingo_caption", VQA: "openflamingo_vqa",
                   "hateful_memes": "openflamingo_hateful_memes",
                   "imagenet": "openflamingo_imagenet", "classification":
                   "openflamingo_imagenet", "rendered_sst2": None, "multiple_choice": None,
                   "binding": None},
        settings={"*": dict(caption_beams=3, caption_tokens=20, vqa_beams=3, vqa_tokens=5,
                            length_penalty=0.0, stop_strings=(END_OF_CHUNK,)),
                  "textvqa": dict(vqa_tokens=10)},
        vqa_metric=vqa_normalize.OPENFLAMINGO, class_score=MEAN, postprocess=OPENFLAMINGO,
        okvqa_stem=True, rices_zero_shot=True),
}


def get_protocol(name: str | Protocol) -> Protocol:
  if isinstance(name, Protocol):
    return name
  if name not in PROTOCOLS:
    raise ValueError(f"unknown eval protocol {name!r}; valid: {sorted(PROTOCOLS)}")
  return PROTOCOLS[name]


def template_for(protocol: Protocol, task: Task) -> str:
  """The template name `protocol` uses for `task`: by task name, then by the task's own
  template name, then by kind; the task's own when the protocol names none."""
  for key in (task.name, task.template, task.kind):
    if key in protocol.templates:
      name = protocol.templates[key]
      if name is None:
        raise ValueError(f"protocol {protocol.name!r} has no prompt for task {task.name!r} "
                         f"(template {task.template!r}); use --protocol kosmos")
      return name
  return task.template


def apply(protocol: Protocol, task: Task, explicit_options: frozenset[str] = frozenset()) -> Task:
  """`task` with the protocol's template and VQA metric variant (unless `vqa_metric` was
  given as a task option, named in `explicit_options`). Mutates and returns `task`."""
  task.template = template_for(protocol, task)
  if (task.kind == VQA and task.metric == metrics.VQA_ACCURACY and protocol.vqa_metric is not None
      and "vqa_metric" not in explicit_options):
    task.metric_options["variant"] = protocol.vqa_metric
  return task


def postprocess_fn(protocol: Protocol, task: Task, chat: bool = False) -> Callable[[str], str]:
  """Generated text -> prediction, for a caption or VQA task; `chat`: the answers are
  assistant turns of a chat template (ended by its stop string)."""
  if task.kind == CAPTION:
    return (metrics.postprocess_caption_openflamingo if protocol.postprocess == OPENFLAMINGO
            else metrics.postprocess_caption)
  if task.kind != VQA:
    raise ValueError(f"task {task.name!r} of kind {task.kind!r} does not generate text")
  if task.metric == metrics.POPE_F1:
    # POPE's evaluate.py reads yes / no from a chat model's whole answer. Without a chat
    # template the continuation of "Question: ... Answer:" runs on into questions and
    # answers of its own, which that rule would read too: cut it at the next marker first.
    if chat:
      return metrics.pope_answer
    return lambda text: metrics.pope_answer(metrics.cut_run_on(text))
  post = (metrics.postprocess_vqa_openflamingo if protocol.postprocess == OPENFLAMINGO
          else metrics.postprocess_vqa)
  if protocol.okvqa_stem and task.name == "okvqa":
    return lambda text: okvqa_stem.stem(post(text))
  return post


def class_score_index(protocol: Protocol) -> int:
  """Which element of `Engine.score`'s (sum, mean) pair ranks the classes."""
  if protocol.class_score not in (SUM, MEAN):
    raise ValueError(f"protocol {protocol.name!r}: class_score {protocol.class_score!r} "
                     f"not in {(SUM, MEAN)}")
  return 0 if protocol.class_score == SUM else 1

