"""Scanned layer stacks: L identical blocks as ONE module whose params have a leading [L] axis.

`create(make_block, L, rngs)` builds the stack (`nnx.vmap` over split rngs); its params
carry the logical axis `layers` first, e.g. `decoder.blocks.attn.q_proj.kernel` [L, d, n*k]
where the unrolled model has `decoder.blocks.0.attn.q_proj.kernel` [d, n*k] ... one per
layer. `run(stack, x, ...)` applies the layers in order under `lax.scan`, so XLA compiles
one block body instead of L (compile time, code size), with the remat policy applied
inside the scanned body (MaxText's layout).

Per-layer views, so that the rest of kosmos keeps speaking of layers:
  `layer_paths(path, L)`   the L per-layer path strings of a stacked parameter path,
                           used by freezing regexes (`vision.blocks.23.` still names the
                           ViT's last block) and LoRA patterns;
  `unstack(tree)` / `stack_like(tree, scanned)`  convert a params pure dict between the two
                           layouts (HF import/export, `train.init_from` across layouts);
  `layer(stack, i)`        block i as an ordinary module (KV-cache decoding loops layers).

Partly frozen stacks (KOSMOS-1 trains only the ViT's last block): the leading layers in
which nothing trains are `frozen_prefix`; `run` applies them in a scan of their own with
their params under `stop_gradient`, so no backward pass runs through them (as with the
unrolled model), and the trainer masks the updates of frozen layers of trained arrays.
"""

from __future__ import annotations

import re
from typing import Any, Callable

import jax
import numpy as np
from flax import nnx

from kosmos.model import remat as remat_lib

LAYERS_AXIS = "layers"
STACK_NAME = "blocks"  # attribute name of every stack (decoder.blocks, vision.blocks)
_STACKED = re.compile(rf"(^|\.){STACK_NAME}\.(?!\d+(\.|$))")


def create(make_block: Callable[[nnx.Rngs], nnx.Module], num_layers: int,
           rngs: nnx.Rngs) -> nnx.Module:
  """`num_layers` blocks from `make_block(rngs)`, params stacked on a leading `layers` axis."""
  @nnx.split_rngs(splits=num_layers)
  @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: LAYERS_AXIS})
  def build(r):
    return make_block(r)

  blocks = build(rngs)
  blocks.scan_num_layers = num_layers
  blocks.frozen_prefix = 0
  blocks.scan_unroll = (1, 1)  # lax.scan unroll of the (frozen, trained) segments
  return blocks


def is_stack(module: Any) -> bool:
  return isinstance(module, nnx.Module) and hasattr(module, "scan_num_layers")


def _sliced(blocks: nnx.Module, start: int, stop: int, frozen: bool):
  graphdef, state = nnx.split(blocks)
  state = jax.tree.map(lambda a: a[start:stop], state)
  if frozen:
    state = jax.tree.map(jax.lax.stop_gradient, state)
  return graphdef, state


def run(blocks: nnx.Module, x: Any, *args: Any, remat: str = "none", stop: int | None = None,
        **kwargs: Any) -> Any:
  """x -> block_{stop-1}(... block_0(x, *args, **kwargs)); `stop` defaults to all layers.

  Each block returns its new carry x (a block returning (x, extra) keeps only x: the
  decoder's blocks return (x, cache) and the cache is None in training).
  """
  stop = blocks.scan_num_layers if stop is None else stop
  policy = remat_lib.policy(remat)

  def segment(x, start, end, frozen, unroll):
    if end <= start:
      return x
    graphdef, state = _sliced(blocks, start, end, frozen)

    def body(carry, layer_state):
      out = nnx.merge(graphdef, layer_state)(carry, *args, **kwargs)
      return (out[0] if isinstance(out, tuple) else out), None

    if policy is not remat_lib.NO_REMAT:
      body = jax.checkpoint(body, policy=policy, prevent_cse=False)
    return jax.lax.scan(body, x, state, unroll=unroll)[0]

  split = min(blocks.frozen_prefix, stop)
  frozen_unroll, trained_unroll = blocks.scan_unroll
  x = segment(x, 0, split, frozen=True, unroll=frozen_unroll)
  return segment(x, split, stop, frozen=False, unroll=trained_unroll)


def layer(blocks: nnx.Module, i: int) -> nnx.Module:
  """Block i of a stack as an ordinary module (its params sliced out of the stack)."""
  graphdef, state = _sliced(blocks, i, i + 1, frozen=False)
  return nnx.merge(graphdef, jax.tree.map(lambda a: a[0], state))


# ----------------------------------------------------------------------------- layouts


def is_stacked_path(path: str) -> bool:
  """True for a dotted param path inside a stack (`decoder.blocks.attn.q_proj.kernel`)."""
  return bool(_STACKED.search(path))


def layer_paths(path: str, num_layers: int) -> list[str]:
  """`decoder.blocks.attn.q_proj.kernel` -> [`decoder.blocks.0.attn.q_proj.kernel`, ...]."""
  return [_STACKED.sub(lambda m: f"{m.group(1)}{STACK_NAME}.{i}.", path, count=1)
          for i in range(num_layers)]


def _is_stacked_dict(node: dict) -> bool:
  return bool(node) and not all(str(k).isdigit() for k in node)


def _index(tree: Any, i: int) -> Any:
  return jax.tree.map(lambda a: a[i], tree)


def unstack(tree: Any) -> Any:
  """A params pure dict in the per-layer layout (`blocks` -> {0: ..., 1: ...}); a tree
  already per-layer comes back unchanged."""
  if not isinstance(tree, dict):
    return tree
  out = {}
  for key, value in tree.items():
    if key == STACK_NAME and isinstance(value, dict) and _is_stacked_dict(value):
      n = jax.tree.leaves(value)[0].shape[0]
      value = {i: _index(value, i) for i in range(n)}
    out[key] = unstack(value)
  return out


def stack(tree: Any) -> Any:
  """The inverse of `unstack`: per-layer `blocks` dicts stacked on a leading axis."""
  if not isinstance(tree, dict):
    return tree
  out = {}
  for key, value in tree.items():
    if key == STACK_NAME and isinstance(value, dict) and value and not _is_stacked_dict(value):
      layers_ = [stack(value[k]) for k in sorted(value, key=int)]
      value = jax.tree.map(lambda *a: np.stack([np.asarray(x) for x in a]), *layers_)
    else:
      value = stack(value)
    out[key] = value
  return out


def is_scanned_tree(tree: Any) -> bool:
  """Whether a params pure dict holds any stacked `blocks`."""
  if not isinstance(tree, dict):
    return False
  return any((k == STACK_NAME and isinstance(v, dict) and _is_stacked_dict(v))
             or is_scanned_tree(v) for k, v in tree.items())


def like(tree: Any, reference: Any) -> Any:
  """`tree` with each top-level part (decoder, vision, ...) converted to the layout of
  that part in `reference` (both params pure dicts)."""
  out = dict(tree)
  for part, value in tree.items():
    if part not in reference or is_scanned_tree(value) == is_scanned_tree(reference[part]):
      continue
    out[part] = stack(value) if is_scanned_tree(reference[part]) else unstack(value)
  return out


def mark_frozen_prefix(model: nnx.Module, trains: Callable[[str], bool]) -> None:
  """Sets each stack's `frozen_prefix`: its leading layers in which no param trains.

  `trains(path)` says whether a per-layer param path trains (kosmos.train.freeze).
  """
  for path, module in nnx.iter_graph(model):
    if not is_stack(module):
      continue
    prefix = ".".join(str(p) for p in path)
    n = module.scan_num_layers
    trained = [False] * n
    state = nnx.state(module, nnx.Param)
    for leaf_path, _ in nnx.to_flat_state(state):
      full = ".".join([prefix] + [str(p) for p in leaf_path])
      for i, layer_path in enumerate(layer_paths(full, n)):
        trained[i] |= trains(layer_path)
    module.frozen_prefix = next((i for i, t in enumerate(trained) if t), n)


def per_layer_config(model_config: Any) -> Any:
  """A copy of `config.model` with its stacks unrolled (the interop's per-layer view)."""
  out = model_config.copy_and_resolve_references()
  for part in ("decoder", "vision"):
    if "scan_layers" in out[part]:
      out[part].scan_layers = False
  return out


def scanned_parts(model_config: Any) -> tuple[str, ...]:
  return tuple(p for p in ("decoder", "vision") if model_config[p].get("scan_layers", False))


def split_layer_path(path: tuple, parts: tuple[str, ...]) -> tuple[tuple, int] | None:
  """('decoder', 'blocks', 3, 'attn', ...) -> (('decoder', 'blocks', 'attn', ...), 3) when
  that part is scanned, else None."""
  if len(path) > 2 and path[0] in parts and path[1] == STACK_NAME and str(path[2]).isdigit():
    return path[:2] + path[3:], int(path[2])
  return None


class LayerReader:
  """Per-layer leaves of a params checkpoint that may hold stacked arrays.

  `read(path, leaf)` takes a per-layer path; for a scanned part it reads the stacked array
  once and serves its layers from memory until all `num_layers` were taken (callers read
  a stacked param's layers consecutively to hold one stacked array at a time).
  """

  def __init__(self, read_leaf: Callable[[tuple, Any], np.ndarray], model_config: Any):
    self.read_leaf = read_leaf
    self.parts = scanned_parts(model_config)
    self.layers = {"decoder": model_config.decoder.num_layers, "vision": model_config.vision.depth}
    self.cache: dict[tuple, list] = {}

  def read(self, path: tuple, leaf: Any) -> np.ndarray:
    split = split_layer_path(path, self.parts)
    if split is None:
      return self.read_leaf(path, leaf)
    stacked_path, i = split
    n = self.layers[path[0]]
    if stacked_path not in self.cache:
      shape = jax.ShapeDtypeStruct((n,) + tuple(leaf.shape), leaf.dtype)
      self.cache[stacked_path] = [self.read_leaf(stacked_path, shape), n]
    entry = self.cache[stacked_path]
    entry[1] -= 1
    value = np.asarray(entry[0][i])
    if entry[1] == 0:
      del self.cache[stacked_path]
    return value

  def order(self, path: tuple) -> tuple:
    """A sort key that puts the layers of one stacked param next to each other."""
    split = split_layer_path(path, self.parts)
    return tuple(map(str, path)) if split is None else tuple(map(str, split[0])) + (f"{split[1]:06d}",)
