#!/usr/bin/env python
"""Offline data preparation: `python data/prepare.py FORMAT --input ... --output DIR`.

FORMAT names a module of `kosmos.data.convert` ('-' read as '_'); a module is a format
when it defines `DESCRIPTION`, `add_arguments(parser)` and `main(args) -> int`.
`prepare.py --help` lists the formats, `prepare.py FORMAT --help` shows a format's flags.
See data/README.md for each format's input layout, an example command and what is dropped.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import os
import pkgutil
import sys

try:
  import kosmos  # noqa: F401  (installed in editable mode)
except ImportError:  # run from a checkout before `pip install -e .`
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kosmos.data import convert  # noqa: E402

_REQUIRED = ("DESCRIPTION", "add_arguments", "main")


def _static_description(path: str) -> str | None:
  """The module's literal DESCRIPTION if it also defines add_arguments and main, read without
  importing it (so listing formats does not import TensorFlow or JAX)."""
  try:
    with open(path, encoding="utf-8") as f:
      tree = ast.parse(f.read(), path)
  except (OSError, SyntaxError, ValueError):
    return None
  names, description = set(), None
  for node in tree.body:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      names.add(node.name)
    elif isinstance(node, (ast.Assign, ast.AnnAssign)):
      targets = node.targets if isinstance(node, ast.Assign) else [node.target]
      for target in targets:
        if isinstance(target, ast.Name) and target.id == "DESCRIPTION":
          names.add("DESCRIPTION")
          try:
            description = ast.literal_eval(node.value)
          except ValueError:
            description = "(description computed at import)"
  if not {"add_arguments", "main", "DESCRIPTION"} <= names:
    return None
  return str(description)


def formats() -> dict[str, str]:
  """Format name ('_' shown as '-') -> description, for every format module of the package."""
  found = {}
  for info in pkgutil.iter_modules(convert.__path__):
    if info.ispkg or info.name.startswith("_"):
      continue
    path = os.path.join(convert.__path__[0], info.name + ".py")
    description = _static_description(path)
    if description is not None:
      found[info.name.replace("_", "-")] = description
  return dict(sorted(found.items()))


def _usage() -> str:
  lines = ["usage: prepare.py FORMAT [--help] --input PATH [PATH ...] --output DIR [flags]",
           "", "Converts raw corpora into kosmos record shards (see data/README.md).", "",
           "formats:"]
  for name, description in formats().items():
    lines.append(f"  {name:16s} {description}")
  lines += ["", "`prepare.py FORMAT --help` shows the flags of one format."]
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if not argv or argv[0] in ("-h", "--help"):
    print(_usage())
    return 0 if argv else 2
  name = argv[0]
  available = formats()
  if name.replace("_", "-") not in available:
    print(f"error: unknown format {name!r}; valid formats: {', '.join(available)}",
          file=sys.stderr)
    return 2
  module = importlib.import_module(f"{convert.__name__}.{name.replace('-', '_')}")
  missing = [attr for attr in _REQUIRED if not hasattr(module, attr)]
  if missing:
    print(f"error: module {module.__name__} lacks {', '.join(missing)}", file=sys.stderr)
    return 2
  parser = argparse.ArgumentParser(prog=f"prepare.py {name.replace('_', '-')}",
                                   description=module.DESCRIPTION)
  module.add_arguments(parser)
  args = parser.parse_args(argv[1:])
  args.format = name.replace("_", "-")
  return int(module.main(args) or 0)


if __name__ == "__main__":
  sys.exit(main())
