"""kosmos-train config for the trainer tests: `--config tests/tiny_train_config.py:DATA_ROOT`."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import train_fixture  # pylint: disable=g-import-not-at-top,wrong-import-position


def get_config(arg=None):
  return train_fixture.config(arg)
