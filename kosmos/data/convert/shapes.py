"""`python data/prepare.py shapes`: the demo's synthetic world, kept in kosmos.demo.prepare.

prepare.py finds its formats in this package; the world itself belongs to the demo.
"""

from __future__ import annotations

import argparse

DESCRIPTION = "synthetic shapes world: records + COCO, VQAv2, binding, induction, RefCOCO"


def add_arguments(parser: argparse.ArgumentParser) -> None:
  from kosmos.demo import prepare  # pylint: disable=import-outside-toplevel
  prepare.add_arguments(parser)


def main(args: argparse.Namespace) -> int:
  from kosmos.demo import prepare  # pylint: disable=import-outside-toplevel
  return prepare.main(args)
