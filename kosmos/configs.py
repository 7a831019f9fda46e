"""Loading `configs/*.py` files by path (big_vision's `path:arg` syntax) and `--config.a.b=v`
overrides on them outside absl (kosmos-compile, kosmos.bench.train_step)."""

from __future__ import annotations

import ast
import importlib.util
import os
import re
from types import ModuleType
from typing import Any, Sequence

import ml_collections


def load_module(path: str) -> ModuleType:
  """A config file as a module (configs/ is not a package), e.g. for its constants."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"config file {path!r} not found (expected e.g. configs/demo.py[:arg])")
  module_spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module


def load(spec: str) -> ml_collections.ConfigDict:
  """`configs/demo.py` or `configs/demo.py:ARG` -> get_config(ARG)."""
  path, _, arg = spec.partition(":")
  return load_module(path).get_config(arg or None)


def _parse_value(text: str, current: Any) -> Any:
  if isinstance(current, bool):
    if text.lower() not in ("true", "false", "1", "0"):
      raise ValueError(f"expected true/false, got {text!r}")
    return text.lower() in ("true", "1")
  if isinstance(current, str):
    return text
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    if current is None:
      return text
    raise ValueError(f"cannot parse {text!r} as {type(current).__name__}") from None


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> None:
  """`--config.a.b=v` flags (as kosmos-train takes them) applied in place, type-checked."""
  for flag in overrides:
    match = re.fullmatch(r"--config\.([\w.]+)=(.*)", flag, re.S)
    if not match:
      raise ValueError(f"unrecognised argument {flag!r}; overrides look like --config.a.b=value")
    path, text = match.groups()
    node = config
    keys = path.split(".")
    for key in keys[:-1]:
      if key not in node:
        raise ValueError(f"--config.{path}: no section {key!r}; valid: {sorted(node.keys())}")
      node = node[key]
    if keys[-1] not in node:
      raise ValueError(f"--config.{path}: no field {keys[-1]!r}; valid: {sorted(node.keys())}")
    node[keys[-1]] = _parse_value(text, node[keys[-1]])
