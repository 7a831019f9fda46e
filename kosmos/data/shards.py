"""Data shards independent of the number of processes.

`config.data.num_shards` (0 = one per process) splits every source into that many
disjoint slices; process p of P reads shards [p*k, (p+1)*k), k = num_shards / P, and
concatenates their per-shard batches along the batch dim. The global batch is then the
same for any process count that divides num_shards: a 2-process run and a 1-process run
with num_shards=2 see identical batches (launch/local.sh rehearsals rely on it).

Iterator states are checkpointed per process (Grain's handler), so a run resumes on the
same number of processes; a fresh run on another host count keeps the data order.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import grain
import numpy as np


class _ConcatIterator(grain.DatasetIterator):

  def __init__(self, parents: Sequence[grain.DatasetIterator]):
    super().__init__(parents)

  def __next__(self) -> dict[str, Any]:
    batches = [next(p) for p in self._parents]
    out: dict[str, Any] = {}
    for key, value in batches[0].items():
      if key == "data_stats":
        totals: dict[str, int] = {}
        for b in batches:
          for name, count in b[key].items():
            totals[name] = totals.get(name, 0) + int(count)
        out[key] = totals
      else:
        out[key] = np.concatenate([b[key] for b in batches], axis=0)
    return out

  def get_state(self) -> dict[str, Any]:
    return {"shards": [p.get_state() for p in self._parents]}

  def set_state(self, state: dict[str, Any]) -> None:
    if len(state["shards"]) != len(self._parents):
      raise ValueError(
          f"the checkpointed data iterator holds {len(state['shards'])} shard states, this process "
          f"reads {len(self._parents)} shards: resume with the process count that saved it")
    for parent, parent_state in zip(self._parents, state["shards"]):
      parent.set_state(parent_state)


class ConcatBatches(grain.IterDataset):
  """Zips several batch datasets and concatenates each step's batches along dim 0."""

  def __init__(self, parents: Sequence[grain.IterDataset]):
    super().__init__(list(parents))

  def __iter__(self) -> grain.DatasetIterator:
    return _ConcatIterator([iter(p) for p in self._parents])


def shards_of_process(num_shards: int, process_index: int, process_count: int) -> range:
  """Which data shards process `process_index` reads."""
  num_shards = num_shards or process_count
  if num_shards % process_count:
    raise ValueError(f"data.num_shards={num_shards} is not a multiple of the {process_count} "
                     f"processes; use a multiple of {process_count} (or 0 = one per process)")
  k = num_shards // process_count
  return range(process_index * k, (process_index + 1) * k)


def make(build: Callable[[int, int], grain.IterDataset], num_shards: int, process_index: int,
         process_count: int) -> grain.IterDataset:
  """build(shard_index, num_shards) -> that shard's batch dataset; concatenated per process."""
  num_shards = num_shards or process_count
  parts = [build(s, num_shards) for s in shards_of_process(num_shards, process_index, process_count)]
  return parts[0] if len(parts) == 1 else ConcatBatches(parts)
