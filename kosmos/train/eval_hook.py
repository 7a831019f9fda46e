"""Few-shot evaluation from the training loop, every `train.eval_every` steps.

`config.eval.tasks` lists what to run, each as {task, data, shots, num_queries, trials,
options} (the `kosmos-eval` flags; `options` = the --task-option pairs); results go to
DIR/eval/<step>/<task>.json and to TensorBoard as `eval/<task>/<shots>shot`. Every process
runs the hook (queries are split between processes inside `kosmos.eval.runner.evaluate`).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections


class EvalHook:
  """hook(step, state): evaluates the current params when step % every == 0."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, mesh: jax.sharding.Mesh,
               writer: Any):
    self.config, self.workdir, self.mesh, self.writer = config, workdir, mesh, writer
    self.every = int(config.train.eval_every)
    self.tasks = [dict(t) for t in config.eval.tasks]
    if self.every and not self.tasks:
      raise ValueError(f"train.eval_every={self.every} but config.eval.tasks is empty; add "
                       "{task, data, shots} entries or set train.eval_every=0")

  def __call__(self, step: int, state: Any) -> None:
    if not self.every or step % self.every:
      return
    from kosmos.eval import runner  # pylint: disable=g-import-not-at-top
    from kosmos.train import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
    params = checkpoint_lib.merged_params(state)
    scalars = {}
    for spec in self.tasks:
      result = runner.evaluate(
          self.config, params, spec["task"], spec["data"], tuple(spec.get("shots", (0,))),
          trials=int(spec.get("trials", 1)), num_queries=int(spec.get("num_queries", 0)),
          mesh=self.mesh, show_progress=False, task_options=dict(spec.get("options", {})))
      runner.write_results(dict(result, step=step),
                           os.path.join(self.workdir, "eval", str(step), f"{result['task']}.json"))
      for row in result["rows"]:
        scalars[f"eval/{result['task']}/{row['shots']}shot"] = row["mean"]
    self.writer.write_scalars(step, scalars)
