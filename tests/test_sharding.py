"""Mesh layout: a 2x2x2 sharded forward equals one device; shape errors before compile."""

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

import tiny
from kosmos import configs, defaults, sharding
from kosmos.model import multimodal


def _forward(model, batch):
  return nnx.jit(lambda m, b: m(b)[0])(model, batch)


def test_mesh_from_config_fills_minus_one():
  assert sharding.mesh_shape(dict(data=-1, fsdp=2, tensor=2), 8) == dict(data=2, fsdp=2, tensor=2)
  assert sharding.mesh_shape(dict(data=2, fsdp=-1, tensor=1, dcn_data=2), 8) == dict(
      data=4, fsdp=2, tensor=1)
  mesh = sharding.make_mesh(dict(data=2, fsdp=2, tensor=2))
  assert dict(mesh.shape) == dict(data=2, fsdp=2, tensor=2)


def test_logical_rules_map_to_mesh_axes():
  rules = defaults.SHARDING_RULES
  assert sharding.logical_to_spec(("embed", "mlp"), rules) == PartitionSpec("fsdp", "tensor")
  assert sharding.logical_to_spec(("batch", "length"), rules) == PartitionSpec(("data", "fsdp"), None)
  # A mesh axis is used once per array: the second logical name falls back to replication.
  assert sharding.logical_to_spec(("mlp", "heads"), rules) == PartitionSpec("tensor", None)


def test_sharded_forward_equals_single_device_and_params_are_sharded():
  assert jax.device_count() == 8
  config = configs.load("configs/demo.py")
  mesh = sharding.make_mesh(dict(data=2, fsdp=2, tensor=2))
  model = multimodal.create_sharded(config.model, mesh, defaults.SHARDING_RULES, seed=3)
  graphdef, state = nnx.split(model)
  single = nnx.merge(graphdef, jax.device_put(state, jax.devices()[0]))  # same values, one device
  batch = tiny.batch(config.model, b=4, l=64, m=2)

  # Same values, different layouts.
  kernel = model.decoder.blocks[0].mlp.fc1.kernel.value
  assert isinstance(kernel.sharding, NamedSharding)
  assert kernel.sharding.spec == PartitionSpec("fsdp", "tensor")
  assert kernel.addressable_shards[0].data.shape == (64, 256)  # [128, 512] / (2, 2)
  embed = model.decoder.embed_tokens.embedding.value
  assert embed.sharding.spec == PartitionSpec("tensor", "fsdp")
  assert single.decoder.blocks[0].mlp.fc1.kernel.value.sharding.num_devices == 1

  sharded_batch = {k: jax.device_put(v, sharding.batch_sharding(mesh, v.ndim)) for k, v in batch.items()}
  with sharding.use_mesh(mesh, defaults.SHARDING_RULES):
    out = _forward(model, sharded_batch)
  assert out.sharding.spec[0] == ("data", "fsdp")
  ref = _forward(single, batch)
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-5, atol=1e-5)


def test_mesh_that_does_not_match_the_devices_fails_clearly():
  with pytest.raises(sharding.ShardingError, match="needs 12 devices, but there are 8"):
    sharding.make_mesh(dict(data=3, fsdp=2, tensor=2))
  with pytest.raises(sharding.ShardingError, match="do not divide the 8 devices"):
    sharding.make_mesh(dict(data=-1, fsdp=3, tensor=1))
  with pytest.raises(sharding.ShardingError, match="at most one axis may be -1"):
    sharding.make_mesh(dict(data=-1, fsdp=-1, tensor=1))


def test_batch_not_divisible_by_data_axes_fails_clearly():
  mesh = sharding.make_mesh(dict(data=2, fsdp=2, tensor=2))
  with pytest.raises(sharding.ShardingError, match="global batch 6 is not divisible by the data axes"):
    sharding.check_batch(6, mesh)
  sharding.check_batch(8, mesh)


def test_heads_not_divisible_by_tensor_axis_fails_before_compile():
  config = tiny.model_config()
  config.decoder.update(num_heads=6, num_kv_heads=6, d_model=48)
  mesh = sharding.make_mesh(dict(data=1, fsdp=2, tensor=4))
  with pytest.raises(sharding.ShardingError, match=r"num_heads=6 is not divisible by the tensor axis \(4\)"):
    multimodal.create_sharded(config, mesh, defaults.SHARDING_RULES)
