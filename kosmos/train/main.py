"""kosmos-train: train or resume a config in a workdir.

    kosmos-train --config configs/demo.py --workdir /tmp/demo [--config.train.steps=100]

Parses flags, initialises distributed JAX (kosmos.train.distributed) and calls
`train_and_evaluate(config, workdir)`. A workdir with a checkpoint resumes from it.
"""

from kosmos.train import distributed

distributed.set_local_devices_from_env()

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/X.py[:arg]", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "where checkpoints, metrics and config.json go")
flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraries:
  """Drops INFO lines of checkpoint/data libraries (one per file written) from the log."""

  NOISY = ("/orbax/", "/grain/", "/tensorstore/")

  def filter(self, record) -> bool:
    return record.levelno >= 30 or not any(n in record.pathname for n in self.NOISY)


def _main(argv):
  del argv
  logging.get_absl_handler().addFilter(_QuietLibraries())
  distributed.initialize()
  from kosmos.train import trainer
  result = trainer.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  logging.info("done at step %d (stopped by signal: %s)", result["step"], result["stopped_by_signal"])


def main():
  app.run(_main)


if __name__ == "__main__":
  main()
