"""Loading `configs/*.py` files by path, with big_vision's `path:arg` syntax."""

from __future__ import annotations

import importlib.util
import os
from types import ModuleType

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
