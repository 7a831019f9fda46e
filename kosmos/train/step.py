"""Train state, loss and the jitted train step.

The state is a pytree of pure dicts (what Orbax saves):
    step       int32 []
    params     trainable Params (nested dicts by module path)
    frozen     frozen Params (same layout; no gradient, no optimizer state)
    opt_state  optax state over `params`
The model's graph (`graphdef`) is static and merged back inside the step.

Loss (kosmos.train.loss): next-token cross-entropy on text targets only (`loss_mask`),
normalised by the number of text targets of the whole global batch, plus optional z-loss
(z_loss * mean(logsumexp(logits)^2)); with `optim.loss_chunk` > 0 the logits are made
and consumed that many positions at a time, never [b, l, vocab] at once. Gradient
accumulation runs the micro-batches in a `lax.scan` summing gradients of the *summed*
loss, then divides once, so accumulating A micro-batches equals one step on the full
batch. The update is applied only when loss and gradients are finite and the batch has
text targets: otherwise the state is unchanged, step counter included (`finite` = 0 or
`no_text` = 1 in the metrics; the trainer then stops, skips or counts).
Scanned stacks in which only some layers train (KOSMOS-1's ViT) get their frozen
layers' updates zeroed (`Setup.layer_masks`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
from flax import traverse_util

from kosmos import sharding
from kosmos.data import packing
from kosmos.model import lora
from kosmos.model import multimodal
from kosmos.model import stack
from kosmos.train import freeze
from kosmos.train import loss as loss_lib
from kosmos.train import optimizer as optimizer_lib

# Keys of the batch that go to the device (the rest, e.g. data_stats, stays on the host).
DEVICE_KEYS = ("tokens", "targets", "loss_mask", "segment_ids", "positions", "images",
               "image_mask", "vectors", "vector_mask", "kind_ids")
KINDS = tuple(packing.KIND_IDS)  # text, pair, interleaved, conversation


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  frozen: Any
  opt_state: Any


@dataclasses.dataclass(frozen=True)
class Setup:
  """Everything static about a run: model graph, optimizer, shardings."""
  graphdef: Any
  tx: optax.GradientTransformation
  state_shardings: Any  # TrainState of NamedSharding
  abstract_state: Any  # TrainState of ShapeDtypeStruct (with shardings)
  trainable: freeze.Trainable
  layer_masks: dict  # {flat param key: [L] bool} of partly trained stacked params
  accum_unroll: int = 1  # lax.scan unroll of the micro-batch loop (kosmos-compile's cost)
  loss_unroll: int = 1  # lax.scan unroll of the loss's chunk loop (kosmos-compile's cost)


def _split(model: nnx.Module, trainable: freeze.Trainable):
  graphdef, params, frozen = nnx.split(model, trainable, ...)
  return graphdef, nnx.to_pure_dict(params), nnx.to_pure_dict(frozen)


def setup(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> Setup:
  """Abstract state and shardings of `config` on `mesh`; nothing is allocated."""
  multimodal.check_config(config.model)
  sharding.check_model(config.model, mesh)
  sharding.check_batch(config.data.global_batch_size, mesh)
  check_config(config, mesh)
  trainable = freeze.from_config(config.optim, lora.frozen_patterns(config.model.decoder))
  tx = optimizer_lib.make(config.optim, config.train.steps)
  rules = config.sharding_rules

  abstract_model = nnx.eval_shape(lambda: multimodal.Multimodal(config.model, rngs=nnx.Rngs(config.seed)))
  stack.mark_frozen_prefix(abstract_model, trainable.matches)  # static: in the graphdef
  graphdef, abstract_params_state, abstract_frozen_state = nnx.split(abstract_model, trainable, ...)
  params_sh = nnx.to_pure_dict(sharding.param_shardings(abstract_params_state, mesh, rules))
  frozen_sh = nnx.to_pure_dict(sharding.param_shardings(abstract_frozen_state, mesh, rules))
  abstract_params = nnx.to_pure_dict(abstract_params_state)
  abstract_opt = jax.eval_shape(tx.init, abstract_params)
  # Optimizer moments are laid out like their parameters; scalars (counts) replicated.
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  opt_sh = _like_params(abstract_opt, abstract_params, params_sh, replicated)
  state_sh = TrainState(step=replicated, params=params_sh, frozen=frozen_sh, opt_state=opt_sh)
  abstract = TrainState(
      step=jax.ShapeDtypeStruct((), jnp.int32),
      params=abstract_params, frozen=nnx.to_pure_dict(abstract_frozen_state), opt_state=abstract_opt)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract, state_sh)
  return Setup(graphdef=graphdef, tx=tx, state_shardings=state_sh, abstract_state=abstract,
               trainable=trainable, layer_masks=freeze.layer_masks(abstract_params, trainable))


def check_config(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> None:
  """Training-config errors that would otherwise surface inside jit or silently."""
  accum, batch = int(config.optim.accum_steps), config.data.global_batch_size
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if accum < 1 or batch % accum or (batch // accum) % shards:
    raise ValueError(
        f"optim.accum_steps={accum}: the global batch {batch} must split into {accum} "
        f"micro-batches that each divide over data*fsdp={shards} devices")
  for field in ("image_slot_id", "vector_slot_id"):
    model_id, tok_id = config.model[field], config.tokenizer[field]
    if model_id != tok_id and not (field == "vector_slot_id" and not config.model.get("vector_dim")):
      raise ValueError(f"config.model.{field}={model_id} differs from config.tokenizer.{field}="
                       f"{tok_id}: the model would never see the pipeline's slots")


def _like_params(opt_tree, params, params_sh, replicated):
  """Shardings for an optax state: subtrees shaped like `params` get the params' layout."""
  params_def = jax.tree.structure(params)

  def visit(node):
    if jax.tree.structure(node) == params_def:
      return params_sh
    if isinstance(node, jax.ShapeDtypeStruct) or not jax.tree.leaves(node):
      return jax.tree.map(lambda _: replicated, node)
    children, treedef = jax.tree.flatten(node, is_leaf=lambda x: x is not node and (
        jax.tree.structure(x) == params_def or isinstance(x, jax.ShapeDtypeStruct)))
    return jax.tree.unflatten(treedef, [visit(c) for c in children])

  return visit(opt_tree)


def init_state(config: ml_collections.ConfigDict, run: Setup) -> TrainState:
  """Creates the state directly in its sharded layout (jit with out_shardings)."""
  def init():
    model = multimodal.Multimodal(config.model, rngs=nnx.Rngs(config.seed))
    _, params, frozen = _split(model, run.trainable)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, frozen=frozen,
                      opt_state=run.tx.init(params))
  return jax.jit(init, out_shardings=run.state_shardings)()


def model_of(run: Setup, state: TrainState) -> multimodal.Multimodal:
  return nnx.merge(run.graphdef, state.params, state.frozen)


def mask_updates(updates: Any, layer_masks: dict) -> Any:
  """Zeroes the updates of frozen layers inside partly trained stacked params."""
  if not layer_masks:
    return updates
  flat = traverse_util.flatten_dict(updates)
  for key, mask in layer_masks.items():
    u = flat[key]
    flat[key] = u * jnp.asarray(mask, u.dtype).reshape((-1,) + (1,) * (u.ndim - 1))
  return traverse_util.unflatten_dict(flat)


def make_train_step(config: ml_collections.ConfigDict, run: Setup) -> Callable:
  """(state, batch) -> (state, metrics); jit it with donated state (see `jit_train_step`)."""
  accum = int(config.optim.accum_steps)
  z_loss = float(config.optim.z_loss)
  chunk = int(config.optim.get("loss_chunk", 0))

  def micro_grads(params, frozen, batch):
    def loss_fn(p):
      model = nnx.merge(run.graphdef, p, frozen)
      if chunk:
        _, aux = model(batch, return_logits=False)
        terms = loss_lib.chunked_terms(aux["hidden"], model.decoder.head_weight(), batch,
                                       z_loss, chunk, unroll=run.loss_unroll)
      else:
        logits, _ = model(batch)
        terms = loss_lib.loss_terms(logits, batch, z_loss)
      return terms.pop("objective"), terms
    return jax.grad(loss_fn, has_aux=True)(params)

  def train_step(state: TrainState, batch: dict[str, jax.Array]):
    batch = {k: v for k, v in batch.items() if k in DEVICE_KEYS}
    if accum == 1:
      grads, terms = micro_grads(state.params, state.frozen, batch)
    else:
      # Row r goes to micro-batch r % accum, so every micro-batch spans all the data
      # shards (rows are sharded in contiguous blocks over (data, fsdp)).
      micro = jax.tree.map(
          lambda x: x.reshape((x.shape[0] // accum, accum) + x.shape[1:]).swapaxes(0, 1), batch)

      def body(carry, mb):
        mb = {k: sharding.constrain(v, ("batch",) + (None,) * (v.ndim - 1)) for k, v in mb.items()}
        g, t = micro_grads(state.params, state.frozen, mb)
        return jax.tree.map(jnp.add, carry, (g, t)), None

      zeros = jax.eval_shape(micro_grads, state.params, state.frozen,
                             jax.tree.map(lambda x: x[0], micro))
      zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), zeros)
      (grads, terms), _ = jax.lax.scan(body, zeros, micro, unroll=run.accum_unroll)
    count = jnp.maximum(terms["count"], 1.0)
    grads = jax.tree.map(lambda g: g / count, grads)
    loss = terms["ce_sum"] / count
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    has_text = terms["count"] > 0
    apply = finite & has_text
    updates, opt_state = run.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, mask_updates(updates, run.layer_masks))
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(apply, n, o), new, old)
    new_state = TrainState(step=state.step + apply.astype(jnp.int32),
                           params=keep(params, state.params), frozen=state.frozen,
                           opt_state=keep(opt_state, state.opt_state))
    metrics = {"loss": loss, "z_loss": terms["z_sum"] / count, "grad_norm": grad_norm,
               "finite": finite.astype(jnp.float32),
               "no_text": jnp.logical_not(has_text).astype(jnp.float32),
               "text_tokens": terms["count"],
               "lr": optimizer_lib.schedule(config.optim, config.train.steps)(state.step)}
    for kind in KINDS:
      if f"count/{kind}" in terms:
        metrics[f"loss/{kind}"] = terms[f"ce_sum/{kind}"] / jnp.maximum(terms[f"count/{kind}"], 1.0)
        metrics[f"text_tokens/{kind}"] = terms[f"count/{kind}"]
    return new_state, metrics

  return train_step


def batch_shardings(mesh: jax.sharding.Mesh, batch_shapes: dict[str, Any]) -> dict[str, Any]:
  return {k: sharding.batch_sharding(mesh, len(v.shape)) for k, v in batch_shapes.items()
          if k in DEVICE_KEYS}


def jit_train_step(config: ml_collections.ConfigDict, run: Setup, mesh: jax.sharding.Mesh,
                   batch_shapes: dict[str, Any]):
  """The jitted step with donated state and explicit in/out shardings."""
  step_fn = make_train_step(config, run)
  b_sh = batch_shardings(mesh, batch_shapes)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

  def wrapped(state, batch):
    with sharding.use_mesh(mesh, config.sharding_rules):
      return step_fn(state, batch)

  return jax.jit(wrapped, in_shardings=(run.state_shardings, b_sh),
                 out_shardings=(run.state_shardings, replicated), donate_argnums=(0,),
                 compiler_options=compiler_options(config, mesh))


def compiler_options(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh
                     ) -> dict[str, str] | None:
  """`train.xla_options` ("name=value,...") as jit's compiler_options; options named
  `xla_tpu_*` are kept only when `mesh` is made of TPU devices (a CPU or GPU compile
  rejects them)."""
  text = str(config.train.get("xla_options", "") or "")
  tpu = mesh.devices.flat[0].platform == "tpu"
  options = {}
  for item in filter(None, (part.strip() for part in text.split(","))):
    name, sep, value = (part.strip() for part in item.partition("="))
    if not sep or not name:
      raise ValueError(f"train.xla_options: expected name=value, got {item!r} in {text!r}")
    if tpu or not name.startswith("xla_tpu_"):
      options[name] = value
  return options or None
