"""Resuming the data iterator from an Orbax checkpoint gives byte-identical batches."""

from __future__ import annotations

import grain
import numpy as np
import orbax.checkpoint as ocp

from test_pipeline import data_config, make, source_dirs, take  # noqa: F401  (fixture)


def assert_same(a: dict, b: dict) -> None:
  assert a.keys() == b.keys()
  for key in a:
    if key == "data_stats":
      assert a[key] == b[key]
    else:
      assert a[key].dtype == b[key].dtype and a[key].tobytes() == b[key].tobytes(), key


def run_resume(dirs, tmp_path, workers: int, step: int = 7, more: int = 6) -> None:
  data = data_config(dirs, workers=workers, prefetch_buffer=2)
  reference_it = iter(make(data))
  reference = take(reference_it, step + more)
  if workers:
    reference_it.close()

  it = iter(make(data))
  first = take(it, step)
  for a, b in zip(first, reference):
    assert_same(a, b)
  options = ocp.CheckpointManagerOptions(create=True)
  with ocp.CheckpointManager(tmp_path / "ckpt", item_names=("iter",), options=options,
                             item_handlers={"iter": grain.checkpoint.CheckpointHandler()}) as mngr:
    mngr.save(step, args=ocp.args.Composite(iter=grain.checkpoint.CheckpointSave(it)))
    mngr.wait_until_finished()
  take(it, 3)  # the old run goes on, then dies
  if workers:
    it.close()

  restored = iter(make(data))
  with ocp.CheckpointManager(tmp_path / "ckpt", item_names=("iter",),
                             item_handlers={"iter": grain.checkpoint.CheckpointHandler()}) as mngr:
    assert mngr.latest_step() == step
    mngr.restore(step, args=ocp.args.Composite(iter=grain.checkpoint.CheckpointRestore(restored)))
  for a, b in zip(take(restored, more), reference[step:]):
    assert_same(a, b)
  if workers:
    restored.close()


def test_resume_is_byte_identical(source_dirs, tmp_path):
  run_resume(source_dirs, tmp_path, workers=0)


def test_resume_mid_generation_and_at_every_step(source_dirs):
  """get_state/set_state at each of the first 8 steps (mid-generation states included)."""
  data = data_config(source_dirs, global_batch_size=3, packing_bins=5, mix_estimate_records=16)
  reference = take(iter(make(data)), 10)
  it = iter(make(data))
  for step in range(8):
    state = it.get_state()
    again = iter(make(data))
    again.set_state(state)
    for a, b in zip(take(again, 2), reference[step:step + 2]):
      assert_same(a, b)
    assert_same(next(it), reference[step])


def test_resume_is_byte_identical_with_two_workers(source_dirs, tmp_path):
  run_resume(source_dirs, tmp_path, workers=2)
