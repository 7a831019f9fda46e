"""Few-shot evaluation tasks read from local files in their public formats.

`load_task(name, data_dir, **options)` opens a task by name from the standard layout of
its public release under `data_dir` (file names below; `options` override any path or
pass loader options). Each loader module documents its file format.

    coco            dataset_coco.json; images data_dir/{train2014,val2014}/ (Karpathy split)
    flickr30k       dataset_flickr30k.json; images data_dir/flickr30k-images/
    vqav2           v2_OpenEnded_mscoco_{train,val}2014_questions.json,
                    v2_mscoco_{train,val}2014_annotations.json; images data_dir/{train,val}2014/
    okvqa           OpenEnded_mscoco_{train,val}2014_questions.json,
                    mscoco_{train,val}2014_annotations.json; images as vqav2
    vizwiz          train.json, val.json; images data_dir/{train,val}/
    textvqa         TextVQA_0.5.1_{train,val}.json; images data_dir/train_images/
    hateful_memes   train.jsonl, dev_seen.jsonl (test_jsonl=...), images data_dir/img/
    imagenet        data_dir/{train,val}/<class>/*; class_names={dir: name} optional
    rendered_sst2   data_dir/{train,test}/{negative,positive}/*
    text_mc         train.jsonl, test.jsonl ({"question"|"context", "choices", "label"})
    tfds            any TFDS dataset: options of `tfds_task` (dataset=..., kind=..., keys)
    binding         episodes.jsonl (fast-binding episodes, e.g. the shapes world's
                    eval/binding/); each episode's support set is its demonstrations
    induction       episodes.jsonl in the binding layout (the shapes world's
                    eval/induction/: task induction); 0 shots = no demonstrations
    pope            coco_pope_{split}.json (split=random|popular|adversarial, default
                    random; questions=PATH for another file), images data_dir/val2014/;
                    zero-shot, reports accuracy, precision, recall, F1, yes-ratio
    refcoco, refcoco+, refcocog
                    referring expression comprehension (accuracy at IoU >= 0.5):
                    MDETR's finetune_<name>_{train,<test_split>}.json (or final_...;
                    test_split=val by default; testA, testB, test); images
                    data_dir/train2014/
    refcoco_reg, refcoco+_reg, refcocog_reg
                    referring expression generation (CIDEr), the same files
    flickr30k_entities
                    phrase grounding, R@1 any-box (and merged-box): {train,test}.txt,
                    Sentences/, Annotations/; images data_dir/flickr30k-images/

Every task also takes the options `prompt`, `target`, `separator`: strings replacing those
of its prompt template (kosmos.eval.prompts), e.g. to match a model's training format.
VQA tasks take `vqa_metric`: "official" (the current official VQA script; the default of
vqav2 and okvqa), "official_2016" or "openflamingo" (every answer normalized; the default
of vizwiz and textvqa, whose answers are raw) -- see kosmos.eval.vqa_normalize.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from kosmos.eval.tasks.binding import binding_task
from kosmos.eval.tasks.captioning import karpathy_task
from kosmos.eval.tasks.classification import (
    hateful_memes_task, image_folder_task, multiple_choice_task)
from kosmos.eval.tasks.example import (
    CAPTION, CLASSIFICATION, GROUNDING, KINDS, MULTIPLE_CHOICE, VQA, Example, Task,
    sample_eval_set)
from kosmos.eval.tasks.flickr_entities import flickr_entities_task
from kosmos.eval.tasks.pope import SPLITS as POPE_SPLITS, pope_task
from kosmos.eval.tasks.refexp import NAMES as REFEXP_NAMES, refexp_task, reg_task
from kosmos.eval.tasks.tfds_source import tfds_task
from kosmos.eval.tasks.vqa import vqa_task

__all__ = ["CAPTION", "CLASSIFICATION", "GROUNDING", "KINDS", "MULTIPLE_CHOICE", "VQA",
           "Example", "Task", "refexp_task", "reg_task", "flickr_entities_task",
           "TASKS", "load_task", "sample_eval_set", "karpathy_task", "vqa_task",
           "hateful_memes_task", "image_folder_task", "multiple_choice_task", "tfds_task",
           "binding_task", "pope_task", "TEMPLATE_OPTIONS"]
TEMPLATE_OPTIONS = ("prompt", "target", "separator")


def _coco_vqa(prefix: str, ann_prefix: str, name: str) -> Callable[..., Task]:
  def load(d: str, **o: Any) -> Task:
    args = dict(
        train_questions=os.path.join(d, f"{prefix}_train2014_questions.json"),
        train_annotations=os.path.join(d, f"{ann_prefix}_train2014_annotations.json"),
        train_images=os.path.join(d, "train2014"),
        test_questions=os.path.join(d, f"{prefix}_val2014_questions.json"),
        test_annotations=os.path.join(d, f"{ann_prefix}_val2014_annotations.json"),
        test_images=os.path.join(d, "val2014"))
    return vqa_task(name, **{**args, **o})
  return load


TASKS: dict[str, Callable[..., Task]] = {
    "coco": lambda d, **o: karpathy_task(
        "coco", o.pop("json_path", os.path.join(d, "dataset_coco.json")),
        o.pop("image_dir", d), **o),
    "flickr30k": lambda d, **o: karpathy_task(
        "flickr30k", o.pop("json_path", os.path.join(d, "dataset_flickr30k.json")),
        o.pop("image_dir", os.path.join(d, "flickr30k-images")), **o),
    "vqav2": _coco_vqa("v2_OpenEnded_mscoco", "v2_mscoco", "vqav2"),
    "okvqa": _coco_vqa("OpenEnded_mscoco", "mscoco", "okvqa"),
    "vizwiz": lambda d, **o: vqa_task("vizwiz", **{**dict(
        train_questions=os.path.join(d, "train.json"), train_images=os.path.join(d, "train"),
        test_questions=os.path.join(d, "val.json"), test_images=os.path.join(d, "val"),
        vqa_metric="openflamingo"), **o}),
    "textvqa": lambda d, **o: vqa_task("textvqa", **{**dict(
        train_questions=os.path.join(d, "TextVQA_0.5.1_train.json"),
        train_images=os.path.join(d, "train_images"),
        test_questions=os.path.join(d, "TextVQA_0.5.1_val.json"),
        test_images=os.path.join(d, "train_images"), vqa_metric="openflamingo"), **o}),
    "hateful_memes": lambda d, **o: hateful_memes_task(**{**dict(
        train_jsonl=os.path.join(d, "train.jsonl"),
        test_jsonl=os.path.join(d, "dev_seen.jsonl"), image_dir=os.path.join(d, "img")), **o}),
    "imagenet": lambda d, **o: image_folder_task("imagenet", **{**dict(
        train_dir=os.path.join(d, "train"), test_dir=os.path.join(d, "val")), **o}),
    "rendered_sst2": lambda d, **o: image_folder_task("rendered_sst2", **{**dict(
        train_dir=os.path.join(d, "train"), test_dir=os.path.join(d, "test"),
        template="rendered_sst2"), **o}),
    "text_mc": lambda d, **o: multiple_choice_task(o.pop("name", "text_mc"), **{**dict(
        train_jsonl=os.path.join(d, "train.jsonl"),
        test_jsonl=os.path.join(d, "test.jsonl")), **o}),
    "tfds": lambda d, **o: tfds_task(o.pop("name", "tfds"), o.pop("dataset"),
                                     data_dir=d or None, **o),
    "binding": lambda d, **o: binding_task(
        o.pop("jsonl_path", os.path.join(d, "episodes.jsonl")), **o),
    "induction": lambda d, **o: binding_task(
        o.pop("jsonl_path", os.path.join(d, "episodes.jsonl")),
        **{"name": "induction", "text_only_zero_shot": False, **o}),
    "flickr30k_entities": flickr_entities_task,
    "pope": lambda d, **o: _pope(d, **o),
}
for _name in REFEXP_NAMES:
  TASKS[_name] = lambda d, _n=_name, **o: refexp_task(_n, d, **o)
  TASKS[f"{_name}_reg"] = lambda d, _n=_name, **o: reg_task(_n, d, **o)


def _pope(d: str, split: str = "random", **o: Any) -> Task:
  if split not in POPE_SPLITS:
    raise ValueError(f"pope split={split!r}; valid: {POPE_SPLITS}")
  return pope_task(**{**dict(questions=os.path.join(d, f"coco_pope_{split}.json"),
                             image_dir=os.path.join(d, "val2014"), name=f"pope_{split}"), **o})


def load_task(name: str, data_dir: str, **options: Any) -> Task:
  """The task `name` (a key of TASKS) from `data_dir`; `options` override paths/loader
  arguments (see the module docstring and each loader)."""
  if name not in TASKS:
    raise ValueError(f"unknown task {name!r}; valid: {sorted(TASKS)}")
  overrides = {k: options.pop(k) for k in TEMPLATE_OPTIONS if k in options}
  task = TASKS[name](data_dir, **options)
  task.template_overrides.update(overrides)
  return task
