"""Mesh from config, logical-axis rules, and sharding helpers.

Parameters and activations carry LOGICAL axis names ('embed', 'mlp', 'batch', ...);
only `config.mesh` and `config.sharding_rules` name the physical mesh axes
(`data`, `fsdp`, `tensor`). `use_mesh(mesh, rules)` makes `constrain(x, axes)` apply
sharding constraints inside jitted code; outside it `constrain` is the identity, so
single-device code needs no mesh.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import threading
from typing import Any, Iterator, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

Rules = Sequence[tuple[str, Any]]


class ShardingError(ValueError):
  """A mesh, batch or model shape that cannot be laid out on the devices."""


def mesh_shape(mesh_config, num_devices: int) -> dict[str, int]:
  """Resolves `config.mesh` ({data, fsdp, tensor[, dcn_data]}; one -1 fills) to sizes."""
  sizes = {axis: int(mesh_config.get(axis, 1)) for axis in MESH_AXES}
  dcn = int(mesh_config.get("dcn_data", 1))
  fill = [axis for axis, size in sizes.items() if size == -1]
  if len(fill) > 1:
    raise ShardingError(f"mesh {sizes}: at most one axis may be -1 (fill), got {fill}")
  if any(size == 0 or size < -1 for size in sizes.values()) or dcn < 1:
    raise ShardingError(f"mesh {sizes} (dcn_data={dcn}): sizes must be positive or -1")
  known = math.prod(size for size in sizes.values() if size != -1) * dcn
  if fill:
    if num_devices % known:
      raise ShardingError(
          f"mesh {sizes} with dcn_data={dcn}: the fixed axes ({known} devices) do not "
          f"divide the {num_devices} devices")
    sizes[fill[0]] = num_devices // known
  if math.prod(sizes.values()) * dcn != num_devices:
    raise ShardingError(
        f"mesh {dict(sizes, dcn_data=dcn)} needs {math.prod(sizes.values()) * dcn} devices, "
        f"but there are {num_devices}; use -1 on one axis to fill")
  sizes["data"] *= dcn
  return sizes


def make_mesh(mesh_config, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds the (data, fsdp, tensor) mesh; with dcn_data > 1 the data axis spans slices."""
  devices = list(devices if devices is not None else jax.devices())
  sizes = mesh_shape(mesh_config, len(devices))
  dcn = int(mesh_config.get("dcn_data", 1))
  shape = tuple(sizes[a] for a in MESH_AXES)
  if dcn > 1 and hasattr(devices[0], "slice_index"):
    from jax.experimental import mesh_utils  # pylint: disable=g-import-not-at-top
    ici = (shape[0] // dcn, shape[1], shape[2])
    grid = mesh_utils.create_hybrid_device_mesh(ici, (dcn, 1, 1), devices)
  else:
    try:
      from jax.experimental import mesh_utils  # pylint: disable=g-import-not-at-top
      grid = mesh_utils.create_device_mesh(shape, devices)
    except (ValueError, NotImplementedError, AssertionError):
      grid = np.asarray(devices).reshape(shape)
  return Mesh(grid, MESH_AXES)


def logical_to_spec(axes: Sequence[str | None] | None, rules: Rules) -> PartitionSpec:
  """Maps logical axis names to a PartitionSpec of mesh axes; a mesh axis is used once."""
  if not axes:
    return PartitionSpec()
  table = dict(rules)
  used: set[str] = set()
  out = []
  for name in axes:
    target = table.get(name) if name is not None else None
    targets = (target,) if isinstance(target, str) else tuple(target or ())
    targets = tuple(t for t in targets if t not in used)
    used.update(targets)
    out.append(None if not targets else targets[0] if len(targets) == 1 else targets)
  return PartitionSpec(*out)


def _fits(shape: Sequence[int], spec: PartitionSpec, mesh: Mesh) -> PartitionSpec:
  """Drops mesh axes from dims they do not divide (small dims stay replicated)."""
  fixed = []
  for dim, entry in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    axes = (entry,) if isinstance(entry, str) else tuple(entry or ())
    size = math.prod(mesh.shape[a] for a in axes)
    fixed.append(entry if axes and dim % size == 0 else None)
  return PartitionSpec(*fixed)


def param_shardings(abstract_state: nnx.State, mesh: Mesh, rules: Rules) -> nnx.State:
  """NamedShardings for every variable of an (abstract) NNX state from its logical names."""
  def one(variable):
    axes = variable.get_metadata().get("out_sharding")
    spec = _fits(variable.value.shape, logical_to_spec(axes, rules), mesh)
    return variable.replace(NamedSharding(mesh, spec))
  return jax.tree.map(one, abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  """Leading (batch) dim over (data, fsdp); the rest replicated."""
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES, *([None] * (ndim - 1))))


def check_batch(global_batch_size: int, mesh: Mesh) -> None:
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if global_batch_size % shards:
    raise ShardingError(
        f"global batch {global_batch_size} is not divisible by the data axes "
        f"data*fsdp={mesh.shape['data']}*{mesh.shape['fsdp']}={shards}; use a multiple of {shards}")


def check_model(model_config, mesh: Mesh) -> None:
  """Head counts must divide the tensor axis (checked before any compile)."""
  tensor = mesh.shape["tensor"]
  dec = model_config.decoder
  for name, heads in (("decoder.num_heads", dec.num_heads),
                      ("decoder.num_kv_heads", dec.get("num_kv_heads") or dec.num_heads)):
    if heads % tensor:
      raise ShardingError(
          f"model.{name}={heads} is not divisible by the tensor axis ({tensor}); "
          f"choose tensor in {[d for d in range(1, heads + 1) if heads % d == 0]}")


@dataclasses.dataclass
class _Context(threading.local):
  mesh: Mesh | None = None
  rules: Rules = ()


_CONTEXT = _Context()


@contextlib.contextmanager
def use_mesh(mesh: Mesh, rules: Rules) -> Iterator[None]:
  """Within this context `constrain` lays activations out on `mesh` by `rules`."""
  previous = (_CONTEXT.mesh, _CONTEXT.rules)
  _CONTEXT.mesh, _CONTEXT.rules = mesh, tuple(rules)
  try:
    yield
  finally:
    _CONTEXT.mesh, _CONTEXT.rules = previous


def active_mesh() -> Mesh | None:
  """The mesh of the enclosing `use_mesh`, or None outside one."""
  return _CONTEXT.mesh


def spec_for(shape: Sequence[int], axes: Sequence[str | None]) -> PartitionSpec:
  """The PartitionSpec of logical `axes` under the active mesh and rules (`use_mesh`)."""
  return _fits(shape, logical_to_spec(axes, _CONTEXT.rules), _CONTEXT.mesh)


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
  """Sharding constraint by logical axes when a mesh is active; identity otherwise."""
  if _CONTEXT.mesh is None:
    return x
  return jax.lax.with_sharding_constraint(x, NamedSharding(_CONTEXT.mesh, spec_for(x.shape, axes)))
