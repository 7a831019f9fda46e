"""The workdir layout shared by train, eval, export and import (ARCHITECTURE.md).

    DIR/config.json                 the resolved config
    DIR/checkpoints/<step>/params   Orbax StandardSave of the model's Params (pure dict)
    DIR/checkpoints/<step>/opt_state  optimizer state (absent in imported/params-only dirs)
    DIR/checkpoints/<step>/data_iter  per-process Grain iterator state (training only)
    DIR/checkpoints/<step>/meta     JSON: {"step", "tokens_seen", ...}
    DIR/metrics/                    TensorBoard event files (process 0)
    DIR/eval/<step>/<task>.json     eval results

`params` is the pure-dict of `nnx.state(model, nnx.Param)`: nested dicts keyed by module
path (`decoder.blocks.0.attn.q_proj.kernel`), array leaves. It is its own Orbax item so
that `kosmos-import` writes only it and `config.train.init_from` restores only it.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

CONFIG = "config.json"
CHECKPOINTS = "checkpoints"
PARAMS, OPT_STATE, DATA_ITER, META = "params", "opt_state", "data_iter", "meta"


def _to_builtin(value: Any) -> Any:
  if isinstance(value, ml_collections.ConfigDict):
    return {k: _to_builtin(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_to_builtin(v) for v in value]
  return value


def _path(directory: str) -> epath.Path:
  """Local paths and object-store URIs (gs://...) alike."""
  return epath.Path(directory)


def is_remote(directory: str) -> bool:
  return "://" in str(directory)


def save_config(config: ml_collections.ConfigDict, directory: str) -> str:
  """Writes DIR/config.json (process 0 only in multi-host runs)."""
  path = _path(directory) / CONFIG
  if jax.process_index() == 0:
    _path(directory).mkdir(parents=True, exist_ok=True)
    text = json.dumps(_to_builtin(config), indent=1, sort_keys=True)
    if is_remote(directory):  # object stores write whole objects atomically
      path.write_text(text)
    else:
      tmp = path.with_name(CONFIG + ".tmp")
      tmp.write_text(text)
      os.replace(tmp, path)
  return str(path)


def _tuples(value: Any) -> Any:
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


def load_config(directory: str) -> ml_collections.ConfigDict:
  """Reads DIR/config.json back (JSON lists become tuples, as the config files write them)."""
  path = _path(directory) / CONFIG
  if not path.exists():
    raise FileNotFoundError(f"{path} not found: {directory!r} is not a kosmos workdir "
                            "(made by kosmos-train or kosmos-import)")
  return ml_collections.ConfigDict(_tuples(json.loads(path.read_text())))


def checkpoint_dir(directory: str) -> str:
  if is_remote(directory):
    return str(directory).rstrip("/") + "/" + CHECKPOINTS
  return os.path.join(os.path.abspath(directory), CHECKPOINTS)


def latest_step(directory: str) -> int | None:
  """The newest complete checkpoint step in DIR/checkpoints, or None."""
  path = checkpoint_dir(directory)
  if not _path(path).exists():
    return None
  steps = ocp.utils.checkpoint_steps(path) if hasattr(ocp, "utils") else []
  return max(steps) if steps else None


def save_params(directory: str, step: int, params: Any, meta: dict[str, Any] | None = None,
                save_concurrent_gb: float | None = None) -> None:
  """Writes a params-only checkpoint DIR/checkpoints/<step>/{params,meta} (import, export).

  `save_concurrent_gb` caps the bytes Orbax serialises at once (it must be at least the
  largest array); kosmos-import sets it so saving adds about one tensor, not one model.
  """
  handlers = (None if save_concurrent_gb is None else
              {PARAMS: ocp.StandardCheckpointHandler(save_concurrent_gb=save_concurrent_gb),
               META: ocp.JsonCheckpointHandler()})
  with ocp.CheckpointManager(checkpoint_dir(directory), item_names=(PARAMS, META),
                             item_handlers=handlers) as manager:
    manager.save(step, args=ocp.args.Composite(**{
        PARAMS: ocp.args.StandardSave(params),
        META: ocp.args.JsonSave(dict(meta or {}, step=step)),
    }), force=True)
    manager.wait_until_finished()


def restore_params(directory: str, step: int | None = None, target: Any = None) -> tuple[int, Any]:
  """(step, params) from DIR/checkpoints; `target` (abstract arrays with shardings) lays
  the values out on a mesh, else they come back as host numpy arrays."""
  step = latest_step(directory) if step is None else step
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {checkpoint_dir(directory)}")
  with ocp.CheckpointManager(checkpoint_dir(directory), item_names=(PARAMS,),
                             item_handlers={PARAMS: ocp.StandardCheckpointHandler()}) as manager:
    to_host = target is None
    if to_host:  # via this process's first device, whatever mesh saved them
      device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
      target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                            manager.item_metadata(step)[PARAMS])
    params = manager.restore(step, args=ocp.args.Composite(**{
        PARAMS: ocp.args.StandardRestore(target)}))[PARAMS]
  return step, jax.tree.map(np.asarray, params) if to_host else params
