"""Any TFDS image-text dataset as a task, read by random access through `tfds.data_source`.

Features are mapped by name ("/" walks nested features, e.g. "captions/text"):

    image_key       an Image feature (kept encoded: SkipDecoding), or "" for text-only
    id_key          a scalar feature for `Example.id` ("" = the split name and index)
    field_keys      {prompt field: feature}, e.g. {"question": "question"}
    references_key  a text or sequence-of-text feature (captions, answers)
    label_key       a ClassLabel (class names from the dataset info) or int feature

`dataset` is a registered TFDS name (with `data_dir`) or the directory of a prepared
dataset version (`.../name/config/1.0.0`). Nothing is downloaded. Examples are built on
access, so `Task.train`/`Task.test` are lazy sequences.
"""

from __future__ import annotations

import collections.abc
import os
from typing import Any, Callable, Mapping

from kosmos.eval.tasks.example import CAPTION, CLASSIFICATION, KINDS, Example, Task

_METRIC = {"caption": "cider", "vqa": "vqa_accuracy", "classification": "accuracy",
           "multiple_choice": "accuracy"}


def _get(row: Mapping[str, Any], path: str) -> Any:
  value: Any = row
  for part in path.split("/"):
    if not isinstance(value, Mapping) or part not in value:
      keys = list(value) if isinstance(value, Mapping) else type(value).__name__
      raise KeyError(f"TFDS feature {path!r}: no {part!r} among {keys}")
    value = value[part]
  return value


def _text(value: Any) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _texts(value: Any) -> tuple[str, ...]:
  if isinstance(value, (bytes, str)):
    return (_text(value),)
  return tuple(_text(v) for v in value)


class LazyExamples(collections.abc.Sequence):
  """A TFDS data source seen as a sequence of `Example`s (built on `__getitem__`)."""

  def __init__(self, source, convert: Callable[[int, Mapping[str, Any]], Example]):
    self._source = source
    self._convert = convert

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index):
    if isinstance(index, slice):
      return [self[i] for i in range(*index.indices(len(self)))]
    if not -len(self) <= index < len(self):
      raise IndexError(f"example {index} out of range for {len(self)} examples")
    return self._convert(index % len(self), self._source[index])


def tfds_task(name: str, dataset: str, *, kind: str, train_split: str = "train",
              test_split: str = "test", data_dir: str | None = None, image_key: str = "image",
              id_key: str = "", field_keys: Mapping[str, str] | None = None,
              references_key: str = "", label_key: str = "",
              template: str | None = None) -> Task:
  """A task over two splits of a TFDS dataset (see the module docstring for the keys)."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  if kind not in KINDS:
    raise ValueError(f"tfds task {name!r}: kind {kind!r} not in {KINDS}")
  decoders = {image_key.split("/")[0]: tfds.decode.SkipDecoding()} if image_key else None
  if os.path.isdir(dataset):
    builder = tfds.builder_from_directory(dataset)
  else:
    builder = tfds.builder(dataset, data_dir=data_dir)
  class_names: tuple[str, ...] = ()
  if label_key:
    feature = builder.info.features
    for part in label_key.split("/"):
      feature = feature[part]
    class_names = tuple(getattr(feature, "names", None) or ())
  if kind == CLASSIFICATION and not class_names:
    raise ValueError(f"tfds task {name!r}: label {label_key!r} is not a ClassLabel with names")
  fields = dict(field_keys or {})

  def make_convert(split: str):
    def convert(index: int, row: Mapping[str, Any]) -> Example:
      values = {f: _text(_get(row, k)) for f, k in fields.items()}
      refs = _texts(_get(row, references_key)) if references_key else ()
      label = int(_get(row, label_key)) if label_key else None
      if kind == CAPTION and refs:
        values.setdefault("caption", refs[0])
      if refs:
        values.setdefault("answer", refs[0])
        values.setdefault("first_answer", refs[0])
      if label is not None and class_names:
        values.setdefault("answer", class_names[label])
      images = (bytes(_get(row, image_key)),) if image_key else ()
      example_id = _text(_get(row, id_key)) if id_key else f"{split}/{index}"
      return Example(id=example_id, fields=values, references=refs, label=label,
                     image_bytes=images)
    return convert

  splits = {}
  for split in (train_split, test_split):
    source = builder.as_data_source(split=split, decoders=decoders)
    splits[split] = LazyExamples(source, make_convert(split))
  return Task(name=name, kind=kind, metric=_METRIC[kind], template=template or kind,
              train=splits[train_split], test=splits[test_split], class_names=class_names)
