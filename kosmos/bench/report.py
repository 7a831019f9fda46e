"""The common part of every benchmark's JSON: how, where and when it was measured."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from typing import Any, Sequence


def environment(module: str, argv: Sequence[str] | None) -> dict[str, Any]:
  """command (as typed), UTC date, machine, JAX version and devices."""
  import jax  # pylint: disable=import-outside-toplevel
  args = list(argv) if argv is not None else sys.argv[1:]
  return {
      "command": f"python -m {module} " + " ".join(args),
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "machine": f"{platform.machine()} {os.cpu_count()} cpus, {platform.processor() or ''}".strip(),
      "platform": platform.platform(),
      "jax": jax.__version__,
      "device": str(jax.devices()[0].device_kind),
      "num_devices": jax.device_count(),
  }


def parse_with_config(parser: argparse.ArgumentParser, argv: Sequence[str] | None
                      ) -> tuple[argparse.Namespace, Any]:
  """(args, config): `--config FILE[:arg]` loaded, then the remaining `--config.a.b=v`
  flags applied as kosmos-train takes them (a bad one exits through `parser.error`)."""
  from kosmos import configs  # pylint: disable=import-outside-toplevel
  args, overrides = parser.parse_known_args(argv)
  config = configs.load(args.config)
  try:
    configs.apply_overrides(config, overrides)
  except ValueError as e:
    parser.error(str(e))
  return args, config


def write(result: dict[str, Any], out: str) -> None:
  """Writes `result` to `out` (JSON) and prints it."""
  text = json.dumps(result, indent=1)
  with open(out, "w") as f:
    f.write(text + "\n")
  print(text)
