"""Parquet row-group units and column lookup shared by the parquet-based converters.

Each row group of each file is one Unit, so a single large parquet file can still be
split over several output shards; rows are read with `iter_batches`, a few hundred at a
time, so memory is bounded by one batch.
"""

from __future__ import annotations

import sys
from typing import Any, Iterable, Iterator

import pyarrow.parquet as pq

from kosmos.data.convert import common
from kosmos.data.convert.common import Unit

SUFFIXES = (".parquet", ".pq")
MISSING_COLUMN = "missing_column"


def row_group_units(patterns: Iterable[str]) -> list[Unit]:
  """One Unit per row group; payload = (path, file key, row group index, first row index)."""
  units = []
  for path, key in common.expand_inputs(patterns, SUFFIXES):
    try:
      metadata = pq.ParquetFile(path).metadata
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError, ...
      raise ValueError(f"--input file {path!r} is not a readable parquet file: {e}") from e
    first = 0
    for k in range(metadata.num_row_groups):
      group = metadata.row_group(k)
      units.append(Unit(key=f"{key}#{k:05d}", size=group.total_byte_size,
                        payload=(path, key, k, first)))
      first += group.num_rows
  return units


def resolve(names: list[str], wanted: str) -> str | None:
  """The schema column named `wanted`, matched exactly or else case-insensitively."""
  if wanted in names:
    return wanted
  lower = [n for n in names if n.lower() == wanted.lower()]
  return lower[0] if len(lower) == 1 else None


def iter_rows(unit: Unit, required: dict[str, str], optional: list[str], batch_size: int,
              ctx: common.Context) -> Iterator[tuple[int, dict[str, Any]]]:
  """(row index in file, {role or column name: value}) for the rows of one row group.

  `required` maps a role (e.g. 'image') to the column asked for; when the file lacks
  one, every row of the group is counted as `missing_column` (with a warning) and none
  is yielded. `optional` columns are included when present, under their own names.
  """
  path, key, group, first = unit.payload
  parquet = pq.ParquetFile(path)
  names = parquet.schema_arrow.names
  columns: dict[str, str] = {}
  for role, wanted in required.items():
    found = resolve(names, wanted)
    if found is None:
      rows = parquet.metadata.row_group(group).num_rows
      print(f"warning: {key} has no column {wanted!r} (columns: {names}); "
            f"{rows} rows dropped as {MISSING_COLUMN}", file=sys.stderr)
      ctx.drop(MISSING_COLUMN, rows)
      return
    columns[role] = found
  for wanted in optional:
    found = resolve(names, wanted)
    if found is not None:
      columns[wanted] = found
  read = sorted(set(columns.values()))
  row = first
  for batch in parquet.iter_batches(batch_size=batch_size, row_groups=[group], columns=read):
    values = {name: batch.column(name).to_pylist() for name in read}
    for i in range(batch.num_rows):
      yield row, {role: values[column][i] for role, column in columns.items()}
      row += 1


def image_bytes(value: Any) -> bytes | None:
  """Image bytes from a binary cell or a struct cell with a `bytes` field (HF datasets)."""
  if isinstance(value, dict):
    value = value.get("bytes")
  if isinstance(value, (bytes, bytearray)):
    return bytes(value)
  return None
