"""The training loop: `train_and_evaluate(config, workdir)`.

One code path from one CPU to a pod: mesh from `config.mesh`, state created sharded,
each process reads only its own data shard and feeds its slice of the global batch,
Orbax saves state + every process's data-iterator state, and a workdir with a checkpoint
resumes automatically. Only process 0 writes metrics and logs.

Faults: SIGTERM/SIGINT set a flag (from the first line of `train_and_evaluate`: a signal
during set-up stops before the first step, exit 0); all processes agree on it at the same
step (an all-gather of the flag), save and return normally (exit 0). A non-finite loss or
gradient never reaches the state (the step keeps the old one); with
`train.nan_policy="stop"` the run stops with `NonFiniteError` without saving, so the last
good checkpoint stays the latest; with "skip" the bad batch is skipped and counted. A
batch without text targets is not applied either and is counted (`no_text_steps_total`).
A resumed run first drops the train_log.jsonl lines of steps after its checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from etils import epath
from clu import metric_writers, parameter_overview, periodic_actions
from jax.experimental import multihost_utils

from kosmos import defaults
from kosmos import sharding
from kosmos import workdir as workdir_lib
from kosmos.data import grounding
from kosmos.data import pipeline
from kosmos.data import shards
from kosmos.model import multimodal
from kosmos.train import checkpoint as checkpoint_lib
from kosmos.train import eval_hook
from kosmos.train import flops as flops_lib
from kosmos.train import startup
from kosmos.train import step as step_lib


class NonFiniteError(RuntimeError):
  """The loss or the gradients became NaN/inf and train.nan_policy is 'stop'."""


class _StopFlag:
  """Set by SIGTERM/SIGINT; the loop checks it between steps."""

  def __init__(self):
    self.requested = False
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    logging.warning("signal %d: saving a checkpoint and stopping", signum)
    self.requested = True

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  def agreed(self) -> bool:
    """True on every process when any process was signalled (same step everywhere)."""
    if jax.process_count() == 1:
      return self.requested
    flags = multihost_utils.process_allgather(np.asarray(self.requested, np.int32))
    return bool(np.max(flags))


def global_batch(local: dict[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
  """This process's rows -> global arrays sharded over (data, fsdp)."""
  out = {}
  for key, value in local.items():
    if key not in step_lib.DEVICE_KEYS:
      continue
    sh = sharding.batch_sharding(mesh, value.ndim)
    global_shape = (value.shape[0] * jax.process_count(),) + value.shape[1:]
    out[key] = jax.make_array_from_process_local_data(sh, value, global_shape)
  return out


def make_data(config: ml_collections.ConfigDict):
  """This process's batches: its data shards (kosmos.data.shards), concatenated."""
  def build(shard: int, count: int):  # a shard's batch: global_batch_size / count rows
    return pipeline.make_dataset(
        config.data, config.tokenizer, image_size=config.model.vision.image_size,
        tokens_per_image=multimodal.tokens_per_image(config.model),
        process_index=shard, process_count=count)

  return shards.make(build, config.data.num_shards, jax.process_index(), jax.process_count())


def _mean_metrics(history: list[dict[str, Any]]) -> dict[str, float]:
  fetched = jax.device_get(history)
  keys = fetched[0].keys()
  out = {}
  for key in keys:
    values = np.asarray([m[key] for m in fetched], np.float64)
    if key.startswith("text_tokens") or key in ("finite", "no_text"):
      out[key] = float(values.sum())
    else:
      out[key] = float(values.mean())
  out["nonfinite_steps"] = float(len(fetched) - out.pop("finite"))
  out["no_text_steps"] = out.pop("no_text", 0.0)
  return out


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(d, ml_collections.ConfigDict):
    d = d.to_dict()
  if not isinstance(d, dict):
    return {prefix[:-1]: tuple(d) if isinstance(d, list) else d}
  out: dict[str, Any] = {}
  for k, v in d.items():
    out.update(_flat(v, f"{prefix}{k}."))
  return out


def _check_resume_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """A workdir with checkpoints resumes only a config with the same model and tokenizer."""
  if workdir_lib.latest_step(workdir) is None:
    return
  try:
    saved = workdir_lib.load_config(workdir)
  except FileNotFoundError:
    return
  if "tokenizer" in saved and "grounding" not in saved.tokenizer:  # saved before location tokens
    saved.tokenizer.grounding = defaults.grounding()
  saved_chat = saved.get("tokenizer", {}).get("chat_template")
  if saved_chat and "image_sep" not in saved_chat and config.tokenizer.get("chat_template"):
    # saved before image_sep: it joins composed chat turns only (kosmos-chat, eval --chat),
    # never training records, so the run's value stands
    saved_chat.image_sep = config.tokenizer.chat_template.get("image_sep", "")
  old = {k: v for k, v in _flat(saved).items() if k.startswith(("model.", "tokenizer."))}
  new = {k: v for k, v in _flat(config).items() if k.startswith(("model.", "tokenizer."))}
  diff = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
  if diff:
    raise ValueError(f"{workdir} holds checkpoints of a different model: "
                     + "; ".join(f"{k}: saved {old.get(k)!r}, now {new.get(k)!r}" for k in diff[:10])
                     + ". Use a new --workdir, or the saved config.")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       hooks: list[Callable[[int, Any], None]] | None = None) -> dict[str, Any]:
  """Trains `config` in `workdir` (resuming if it holds a checkpoint); returns a summary.

  hooks: called as hook(step, state) after every step (tests, custom logging); few-shot
  evaluation runs as one when train.eval_every > 0 (kosmos.train.eval_hook).
  """
  with _StopFlag() as stop:  # from the start: a SIGTERM during set-up also exits cleanly
    return _train(config, workdir, hooks, stop)


def _truncate_log(path: str, after_step: int) -> None:
  """Drops train_log.jsonl lines of steps after `after_step` (written past the checkpoint
  a resumed run restarts from, so that they are not logged twice)."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = f.readlines()
  keep = [line for line in lines if line.strip() and json.loads(line).get("step", 0) <= after_step]
  if len(keep) != len(lines):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
      f.writelines(keep)
    os.replace(tmp, path)


def _train(config: ml_collections.ConfigDict, workdir: str,
           hooks: list[Callable[[int, Any], None]] | None, stop: _StopFlag) -> dict[str, Any]:
  mesh = sharding.make_mesh(config.mesh)
  run = step_lib.setup(config, mesh)
  is_main = jax.process_index() == 0
  _check_resume_config(config, workdir)
  grounding.check_vocab(config.tokenizer, config.model.decoder.vocab_size)
  workdir_lib.save_config(config, workdir)
  startup.summarize_and_check(config, mesh, workdir)

  dataset = make_data(config)
  data_iter = iter(dataset)
  checkpointer = checkpoint_lib.Checkpointer(workdir, config.train)
  meta: dict[str, Any] = {}
  if checkpointer.latest_step() is not None:
    state, meta = checkpointer.restore(run.abstract_state, data_iter)
    logging.info("resumed from step %d", int(state.step))
  else:
    state = step_lib.init_state(config, run)
    if config.train.init_from:
      state, loaded = checkpoint_lib.load_init(config.train.init_from, tuple(config.train.init_patterns),
                                               run.abstract_state, state)
      logging.info("init_from %s: loaded %d arrays", config.train.init_from, len(loaded))
  data_totals: dict[str, int] = dict(meta.get("data_totals", {}))
  tokens_seen = int(meta.get("tokens_seen", 0))

  metrics_dir = os.path.join(workdir, "metrics")
  if is_main:
    epath.Path(metrics_dir).mkdir(parents=True, exist_ok=True)
  # train_log.jsonl is appended to, which object stores cannot do: local workdirs only.
  jsonl = os.path.join(metrics_dir, "train_log.jsonl") if is_main and not workdir_lib.is_remote(workdir) else None
  if jsonl:
    _truncate_log(jsonl, int(state.step))
  writer = metric_writers.create_default_writer(metrics_dir, just_logging=not is_main)
  if is_main and int(state.step) == 0:
    parameter_overview.log_parameter_overview(state.params, msg="trainable parameters")
  hooks = list(hooks or ())
  if config.train.eval_every:
    hooks.append(eval_hook.EvalHook(config, workdir, mesh, writer))
  total_steps = config.train.steps
  report = periodic_actions.ReportProgress(num_train_steps=total_steps, writer=writer,
                                           every_steps=config.train.log_every)
  step_flops = flops_lib.step_flops(config, flops_lib.trainable_vision_layers(
      run.abstract_state.params, config.model.vision.depth,
      run.layer_masks))["total"]
  device_kind = jax.devices()[0].device_kind

  train_step = None
  history: list[dict[str, Any]] = []
  losses: list[float] = []
  skipped = consecutive = 0
  last_log = time.time()
  images_since = 0
  step = reported = int(state.step)
  no_text = 0  # steps whose batch had no text target: not applied, retried like skips
  signalled_early = stop.agreed()  # during set-up: exit cleanly, nothing new to save
  if signalled_early:
    logging.warning("stopped by signal before the first step")
  while step < total_steps and not signalled_early:
    local = next(data_iter)
    pipeline.accumulate_stats(data_totals, local.pop("data_stats", {}))
    batch = global_batch(local, mesh)
    if train_step is None:
      shapes = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()}
      train_step = step_lib.jit_train_step(config, run, mesh, shapes)
    state, metrics = train_step(state, batch)
    history.append(metrics)
    images_since += int(local["image_mask"].sum()) * jax.process_count()
    step += 1
    tokens_seen += int(np.prod(local["tokens"].shape)) * jax.process_count()
    if step > reported:  # a skipped (non-finite) step is retried under the same number
      report(step)
      reported = step
    for hook in hooks:
      hook(step, state)
    at_log = step % config.train.log_every == 0 or step == total_steps
    at_ckpt = step % config.train.checkpoint_every == 0 or step == total_steps
    # Agreeing on a signal is a host sync on multi-host runs: do it every few steps.
    stopping = (jax.process_count() == 1 or step % config.train.signal_check_every == 0
                or at_log or at_ckpt) and stop.agreed()
    if at_log or at_ckpt or stopping:
      summary = _mean_metrics(history)
      bad = int(summary["nonfinite_steps"])
      if bad and config.train.nan_policy == "stop":
        checkpointer.close()
        raise NonFiniteError(
            f"non-finite loss or gradients in {bad} of the last {len(history)} steps before "
            f"step {step} (loss {summary['loss']}, grad_norm {summary['grad_norm']}); the state "
            f"was not updated by them and the last good checkpoint is step "
            f"{checkpointer.latest_step()} in {workdir}. Set train.nan_policy='skip' to go on.")
      skipped += bad
      no_text += int(summary["no_text_steps"])
      step = int(jax.device_get(state.step))  # skipped / no-text updates do not advance it
      consecutive = consecutive + bad if bad == len(history) else 0
      if consecutive > config.train.max_consecutive_skips:
        checkpointer.close()
        raise NonFiniteError(
            f"{consecutive} consecutive non-finite steps at step {step} (more than "
            f"train.max_consecutive_skips={config.train.max_consecutive_skips}): the model "
            f"diverged; the last good checkpoint is step {checkpointer.latest_step()} in {workdir}")
      elapsed = max(time.time() - last_log, 1e-9)
      summary.update({
          "tokens_per_s": len(history) * config.data.global_batch_size * config.data.seq_len / elapsed,
          "images_per_s": images_since / elapsed,
          "skipped_steps_total": skipped,
          "no_text_steps_total": no_text,
      })
      mfu = flops_lib.mfu(step_flops, elapsed / len(history), jax.device_count(), device_kind)
      if mfu is not None:
        summary["mfu"] = mfu
      # Data counters: records per source always, problem counters once non-zero.
      data_scalars = {f"data/{k}": v for k, v in data_totals.items() if v or k.endswith("/records")}
      writer.write_scalars(step, summary)
      writer.write_scalars(step, data_scalars)
      if jsonl:
        with open(jsonl, "a") as f:
          f.write(json.dumps(dict(summary, **data_scalars, step=step)) + "\n")
      losses.append(summary["loss"])
      history, images_since, last_log = [], 0, time.time()
    if (at_ckpt or stopping) and step != checkpointer.latest_step():
      checkpointer.save(state, data_iter, {"tokens_seen": tokens_seen, "data_totals": data_totals},
                        force=stopping)
    if stopping:
      logging.warning("stopped by signal at step %d after saving", step)
      break
  checkpointer.close()
  writer.flush()
  return {"step": step, "losses": losses, "stopped_by_signal": stop.requested,
          "skipped_steps": skipped, "no_text_steps": no_text, "tokens_seen": tokens_seen,
          "state": state}
