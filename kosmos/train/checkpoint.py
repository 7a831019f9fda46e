"""Orbax checkpoints of the train state and every process's data-iterator state.

Layout (kosmos.workdir): DIR/checkpoints/<step>/{params, opt_state, data_iter, meta}.
`params` holds trainable and frozen Params merged (the same item `kosmos-import` and
`kosmos-export` use); `opt_state` the optimizer state and step; `data_iter` Grain's
per-process iterator state; `meta` JSON (step, tokens seen, data counters).

Saves are asynchronous and atomic: Orbax writes into a temporary directory and renames it
when complete, so a save killed half-way leaves the previous checkpoint as the latest.
Retention: the last `train.keep` plus every `train.keep_every`-th step.
"""

from __future__ import annotations

import logging
from typing import Any

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

from kosmos import workdir as workdir_lib
from kosmos.model import stack
from kosmos.train import freeze
from kosmos.train import step as step_lib

PARAMS, OPT_STATE, DATA_ITER, META = (workdir_lib.PARAMS, workdir_lib.OPT_STATE,
                                      workdir_lib.DATA_ITER, workdir_lib.META)


def _merge(params: dict, frozen: dict) -> dict:
  """Deep-merges the trainable and frozen pure dicts (disjoint leaves)."""
  out = dict(frozen)
  for key, value in params.items():
    out[key] = _merge(value, out[key]) if isinstance(value, dict) and key in out else value
  return out


def merged_params(state: step_lib.TrainState) -> dict:
  """All the model's Params (trainable and frozen) as one pure dict."""
  return _merge(state.params, state.frozen)


def _split_like(merged: dict, like: dict) -> dict:
  """The sub-dict of `merged` with the keys of `like`."""
  return {k: _split_like(merged[k], v) if isinstance(v, dict) else merged[k] for k, v in like.items()}


class Checkpointer:
  """Saves and restores (TrainState, data iterator) in a workdir."""

  def __init__(self, directory: str, train_config: ml_collections.ConfigDict, *,
               with_data: bool = True):
    options = ocp.CheckpointManagerOptions(
        max_to_keep=train_config.keep, keep_period=train_config.keep_every or None,
        create=True, enable_async_checkpointing=True)
    self.with_data = with_data
    items = (PARAMS, OPT_STATE, META) + ((DATA_ITER,) if with_data else ())
    handlers = {DATA_ITER: grain.checkpoint.CheckpointHandler()} if with_data else {}
    self.manager = ocp.CheckpointManager(workdir_lib.checkpoint_dir(directory), options=options,
                                         item_names=items, item_handlers=handlers)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, state: step_lib.TrainState, data_iter: Any, meta: dict[str, Any],
           *, force: bool = False) -> bool:
    step = int(jax.device_get(state.step))
    items = {
        PARAMS: ocp.args.StandardSave(_merge(state.params, state.frozen)),
        OPT_STATE: ocp.args.StandardSave({"step": state.step, "opt_state": state.opt_state}),
        META: ocp.args.JsonSave(dict(meta, step=step)),
    }
    if self.with_data and data_iter is not None:
      items[DATA_ITER] = grain.checkpoint.CheckpointSave(data_iter)
    return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

  def restore(self, abstract: step_lib.TrainState, data_iter: Any,
              step: int | None = None) -> tuple[step_lib.TrainState, dict[str, Any]]:
    """Restores state (laid out like `abstract`'s shardings) and, in place, the iterator."""
    step = self.manager.latest_step() if step is None else step
    items = {
        PARAMS: ocp.args.StandardRestore(_merge(abstract.params, abstract.frozen)),
        OPT_STATE: ocp.args.StandardRestore({"step": abstract.step, "opt_state": abstract.opt_state}),
        META: ocp.args.JsonRestore(),
    }
    if self.with_data and data_iter is not None:
      items[DATA_ITER] = grain.checkpoint.CheckpointRestore(data_iter)
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    params = restored[PARAMS]
    state = step_lib.TrainState(
        step=restored[OPT_STATE]["step"], params=_split_like(params, abstract.params),
        frozen=_split_like(params, abstract.frozen), opt_state=restored[OPT_STATE]["opt_state"])
    return state, dict(restored[META])

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def load_init(init_from: str, patterns: tuple[str, ...], abstract: step_lib.TrainState,
              state: step_lib.TrainState) -> tuple[step_lib.TrainState, list[str]]:
  """Overwrites params whose path matches `patterns` with those of workdir `init_from`.

  `init_from` is a workdir (kosmos-import output, kosmos-export --format params, or a
  training run). Parameters absent from it, or not matching, keep their fresh values.
  Returns the new state and the loaded paths.
  """
  if not epath.Path(init_from).exists():
    raise FileNotFoundError(f"train.init_from={init_from!r} is not a directory (a kosmos workdir)")
  try:  # same parameter tree: restore straight into the mesh layout, no host copy
    _, source = workdir_lib.restore_params(init_from, target=_merge(abstract.params, abstract.frozen))
  except (ValueError, KeyError, TypeError) as e:  # a different tree (partial init): via host
    logging.info("init_from %s: tree differs from the model (%s); restoring on the host",
                 init_from, str(e)[:200])
    _, source = workdir_lib.restore_params(init_from)
    source = stack.like(source, _merge(abstract.params, abstract.frozen))  # scanned or not
  wanted = freeze.Trainable(trainable=patterns)
  loaded: list[str] = []

  def pick(path, current, target):
    name = freeze.path_string(path)
    value = _lookup(source, path)
    if value is None or not wanted.matches(name):
      return current
    if tuple(value.shape) != tuple(target.shape):
      raise ValueError(f"init_from {init_from}: {name} has shape {tuple(value.shape)}, "
                       f"the model expects {tuple(target.shape)}")
    loaded.append(name)
    if isinstance(value, jax.Array) and value.sharding == target.sharding and value.dtype == target.dtype:
      return value
    return jax.device_put(value.astype(target.dtype), target.sharding)

  params = jax.tree_util.tree_map_with_path(pick, state.params, abstract.params)
  frozen = jax.tree_util.tree_map_with_path(pick, state.frozen, abstract.frozen)
  return state.replace(params=params, frozen=frozen), loaded


def _lookup(tree: Any, path) -> Any:
  node = tree
  for entry in path:
    key = getattr(entry, "key", entry)
    if not isinstance(node, dict):
      return None
    node = node.get(key, node.get(str(key)))
    if node is None:
      return None
  return node
