"""Import transformers checkpoints into a kosmos workdir (config.json + params at step 0).

    python -m kosmos.interop.main import --format hf --src DIR [--config configs/X.py] --out OUT
    python -m kosmos.interop.main import --format hf --lm LLAMA_DIR --vision CLIP_DIR \
        --connector mlp --out OUT                                    # PaLM-E-style start

Kosmos2ForConditionalGeneration and LlavaForConditionalGeneration import whole; a
LlamaForCausalLM imports as the decoder, with vision and connector either from `--vision`
(CLIPVisionModel / SiglipVisionModel / a CLIPModel's vision half) or freshly initialised
from `--config`. Without `--config` the kosmos config is inferred from config.json; with
it, the config's model sections must agree with the checkpoint (differences are listed).
The source's SentencePiece model becomes OUT/tokenizer.model (`config.tokenizer.path`); a
Kosmos-2's `<image>` / `</image>` ids come from its tokenizer files, else from
`Kosmos2Processor`'s layout (`hf_config.kosmos2_image_ids`); so do its location tokens
(`config.tokenizer.grounding`: `<phrase>` ... `<patch_index_1023>`, else
`hf_config.kosmos2_grounding`), so the imported model grounds as it was trained. A missing or malformed source
raises `stream.BadFile` naming the file; nothing is written before every check has passed.
Tensors are read one at a time (`stream.SafetensorsReader`) and each converted tensor
becomes a jax.Array at once; those params are the only full copy held in memory, handed
once to Orbax.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from typing import Any, Callable, Iterator

import jax
import ml_collections
import numpy as np
from flax import nnx

from kosmos import workdir
from kosmos.data import grounding
from kosmos.interop import hf_config
from kosmos.interop import hf_export
from kosmos.interop import mapping
from kosmos.interop import stream
from kosmos.model import connector as connector_lib
from kosmos.model import multimodal
from kosmos.model import stack
from kosmos.model import vision as vision_lib

_SPM_FILES = ("tokenizer.model", "sentencepiece.bpe.model", "spiece.model")


def _check_dir(directory: str, flag: str) -> None:
  if not os.path.isdir(directory):
    raise stream.BadFile(f"{flag} {directory!r}: no such directory (want a transformers model "
                         "directory: config.json + *.safetensors)")


def _read_json(directory: str, name: str, required: bool = True) -> dict[str, Any] | None:
  """A JSON object from `directory/name`; stream.BadFile naming the file if absent or invalid."""
  path = os.path.join(directory, name)
  if not os.path.exists(path):
    if required:
      raise stream.BadFile(f"{path} not found: {directory!r} is not a transformers model directory")
    return None
  try:
    with open(path, encoding="utf-8") as f:
      value = json.load(f)
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise stream.BadFile(f"{path}: not valid JSON ({e})") from None
  if not isinstance(value, dict):
    raise stream.BadFile(f"{path}: holds a JSON {type(value).__name__}, not an object")
  return value


@contextlib.contextmanager
def _fields_of(path: str) -> Iterator[None]:
  """Turns a missing or mistyped config field read inside into a stream.BadFile naming `path`."""
  try:
    yield
  except (KeyError, TypeError, AttributeError) as e:
    raise stream.BadFile(f"{path}: missing or mistyped field ({type(e).__name__}: {e})") from None


def _from_hf_json(directory: str, preprocessor: dict[str, Any] | None = None
                  ) -> tuple[str, ml_collections.ConfigDict]:
  """`hf_config.from_hf_json` of `directory/config.json`."""
  hf = _read_json(directory, "config.json")
  with _fields_of(os.path.join(directory, "config.json")):
    return hf_config.from_hf_json(hf, preprocessor)


def _added_token_ids(src: str) -> dict[str, int]:
  """{content: id} of the added tokens in `src`'s tokenizer_config.json or tokenizer.json."""
  found: dict[str, int] = {}
  config = _read_json(src, "tokenizer_config.json", required=False) or {}
  with _fields_of(os.path.join(src, "tokenizer_config.json")):
    for key, token in (config.get("added_tokens_decoder") or {}).items():
      found[token["content"] if isinstance(token, dict) else str(token)] = int(key)
  if not found:
    full = _read_json(src, "tokenizer.json", required=False) or {}
    with _fields_of(os.path.join(src, "tokenizer.json")):
      for token in full.get("added_tokens") or []:
        found[token["content"]] = int(token["id"])
  return found


def _set(tree: dict, path: tuple, value: Any) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def load_entries(reader: stream.SafetensorsReader, entries: list[mapping.Entry], architecture: str,
                 abstract: dict[tuple, Any], params: dict, used: set[str]) -> None:
  """Reads each entry's tensor, converts it to the kosmos layout and dtype, into `params`."""
  names = {mapping.canonical_name(k, architecture): k for k in reader.keys()}
  for e in entries:
    if e.hf not in names:
      raise KeyError(f"tensor {e.hf!r} (for kosmos {'.'.join(map(str, e.kosmos))}) is not in "
                     f"{reader.directory!r}; the checkpoint does not match its config.json")
    raw = names[e.hf]
    value = mapping.from_hf(e.kind, reader.get(raw))
    want = abstract[e.kosmos]
    if tuple(value.shape) != tuple(want.shape):
      raise ValueError(f"tensor {raw!r} has shape {reader.shape(raw)}, but kosmos "
                       f"{'.'.join(map(str, e.kosmos))} needs {tuple(want.shape)} "
                       f"(from {mapping.hf_shape(e.kind, want.shape)} in transformers layout)")
    # A device array, not numpy: Orbax serialises jax.Arrays without the two host copies
    # it makes of numpy leaves (measured: +2x model size at save time for numpy).
    _set(params, e.kosmos, jax.device_put(np.ascontiguousarray(value).astype(want.dtype, copy=False)))
    del value
    used.add(raw)


def _check_identity_linear_2(reader: stream.SafetensorsReader, used: set[str]) -> None:
  names = {mapping.canonical_name(k, mapping.LLAVA): k for k in reader.keys()}
  w, b = (names[mapping.LLAVA_LINEAR_2 + s] for s in (".weight", ".bias"))
  weight, bias = reader.get(w), reader.get(b)
  if not (np.array_equal(weight, np.eye(weight.shape[0], dtype=weight.dtype)) and not bias.any()):
    raise hf_config.Unsupported(
        "projector_hidden_act='linear' with a non-identity linear_2: kosmos's linear connector is "
        "one matrix (an exported kosmos model has linear_2 = identity)")
  used.update((w, b))


def fresh_params(part: str, model: ml_collections.ConfigDict, seed: int) -> dict:
  """Freshly initialised params of one part ('vision' or 'connector') as numpy."""
  rngs = nnx.Rngs(seed)
  model = stack.per_layer_config(model)
  if part == "vision":
    module = vision_lib.VisionTransformer(model.vision, rngs=rngs)
  else:
    module = connector_lib.make(model.connector, model.vision.width, model.decoder.d_model, rngs=rngs)
  return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(module, nnx.Param)))


def _copy_tokenizer(src: str, out: str, config: ml_collections.ConfigDict,
                    log: Callable[[str], None]) -> None:
  if config.tokenizer.path:
    return
  for name in _SPM_FILES:
    path = os.path.join(src, name)
    if os.path.exists(path):
      target = os.path.abspath(os.path.join(out, "tokenizer.model"))
      shutil.copyfile(path, target)
      config.tokenizer.path = target
      log(f"tokenizer: copied {path} -> {target}")
      return
  log(f"tokenizer: no SentencePiece model in {src!r} ({', '.join(_SPM_FILES)}); "
      "config.tokenizer.path left empty")


def _finish(out: str, config: ml_collections.ConfigDict, params: dict, used: set[str],
            readers: list[stream.SafetensorsReader], tokenizer_src: str, meta: dict[str, Any],
            log: Callable[[str], None]) -> ml_collections.ConfigDict:
  abstract = hf_export.leaves(hf_export.abstract_params(config.model))
  got = hf_export.leaves(params)
  missing = sorted(".".join(map(str, p)) for p in abstract if p not in got)
  if missing:
    raise AssertionError(f"import left kosmos params unset: {missing[:5]}")
  for reader in readers:
    unused = [k for k in reader.keys() if k not in used]
    if unused:
      log(f"ignored {len(unused)} tensors of {reader.directory!r} with no kosmos counterpart, "
          f"e.g. {unused[:4]}")
  parts = stack.scanned_parts(config.model)
  if parts:  # the config's layout on disk: [L, ...] arrays
    params = {k: stack.stack(v) if k in parts else v for k, v in params.items()}
    got = hf_export.leaves(params)
  os.makedirs(out, exist_ok=True)  # only now: a refused import writes nothing
  _copy_tokenizer(tokenizer_src, out, config, log)  # sets config.tokenizer.path
  workdir.save_config(config, out)
  total = sum(v.nbytes for v in got.values())
  largest = max(v.nbytes for v in got.values())
  # Serialise a bounded number of bytes at a time (Orbax otherwise encodes every array at
  # once, a second copy of the model).
  workdir.save_params(out, 0, params, meta=meta, save_concurrent_gb=max(largest, 16 << 20) * 1.05 / 1e9)
  log(f"imported {meta} -> {out} ({len(got)} params, {total / 1e6:.1f} MB, step 0)")
  return config


def import_hf(src: str, out: str, *, config: ml_collections.ConfigDict | None = None,
              log: Callable[[str], None] = print) -> ml_collections.ConfigDict:
  """One transformers directory (Kosmos-2, LLaVA, or Llama + `config` for vision) -> workdir."""
  _check_dir(src, "--src")
  architecture, inferred = _from_hf_json(
      src, _read_json(src, "preprocessor_config.json", required=False))
  if architecture == mapping.KOSMOS2:  # the source's own <image> / </image>, if it ships them
    added = _added_token_ids(src)
    if "<image>" in added and "</image>" in added:
      inferred.tokenizer.update(image_start_id=added["<image>"], image_end_id=added["</image>"])
    cells = [added.get(grounding.patch_token(k)) for k in range(grounding.KOSMOS2_GRID ** 2)]
    if all(added.get(t) is not None for t in grounding.TAGS) and cells[0] is not None and (
        cells == list(range(cells[0], cells[0] + len(cells)))):  # its own location tokens
      inferred.tokenizer.grounding.update(
          grid=grounding.KOSMOS2_GRID, first_patch_id=cells[0],
          **{field: added[t] for t, field in zip(grounding.TAGS, grounding.TAG_FIELDS)})
  if architecture == mapping.LLAMA:
    if config is None:
      raise hf_config.Unsupported(
          "LlamaForCausalLM has no vision tower: pass --vision DIR (CLIPVisionModel or "
          "SiglipVisionModel; PaLM-E-style) or --config configs/X.py whose vision and connector "
          "are freshly initialised")
    sections: tuple[str, ...] = ("decoder",)
  else:
    sections = ("decoder", "vision")
  if config is not None:
    diffs = hf_config.differences(config.model, inferred.model, sections)
    if architecture != mapping.LLAMA:
      for key in ("kind",) + (("num_tokens", "num_heads") if architecture == mapping.KOSMOS2 else ()):
        if config.model.connector[key] != inferred.model.connector[key]:
          diffs.append(f"model.connector.{key}: config has {config.model.connector[key]!r}, "
                       f"checkpoint has {inferred.model.connector[key]!r}")
      if config.model.image_slot_id != inferred.model.image_slot_id:
        diffs.append(f"model.image_slot_id: config has {config.model.image_slot_id}, "
                     f"checkpoint has {inferred.model.image_slot_id}")
    if diffs:
      raise hf_config.ConfigMismatch(f"--config disagrees with {src}/config.json:\n  " + "\n  ".join(diffs))
  else:
    config = inferred
  config = ml_collections.ConfigDict(config.to_dict())
  multimodal.check_config(config.model)
  reader = stream.SafetensorsReader(src)
  abstract = hf_export.leaves(hf_export.abstract_params(config.model))
  params: dict = {}
  used: set[str] = set()
  load_entries(reader, mapping.entries(config.model, architecture), architecture, abstract,
               params, used)
  if architecture == mapping.LLAVA and config.model.connector.kind == connector_lib.Kind.LINEAR:
    _check_identity_linear_2(reader, used)
  if architecture == mapping.LLAMA:
    params["vision"] = fresh_params("vision", config.model, config.seed)
    params["connector"] = fresh_params("connector", config.model, config.seed + 1)
    log("vision and connector freshly initialised from --config (LlamaForCausalLM has none)")
  return _finish(out, config, params, used, [reader], src,
                 dict(imported_from=os.path.abspath(src), architecture=architecture), log)


def _vision_dir_json(vision_dir: str) -> tuple[str, dict[str, Any]]:
  hf = _read_json(vision_dir, "config.json")
  kind = hf.get("model_type")
  if kind in ("clip", "siglip"):  # a dual encoder: take its vision half
    hf = dict(hf["vision_config"], model_type=kind + "_vision_model")
    kind = hf["model_type"]
  if kind not in ("clip_vision_model", "siglip_vision_model"):
    raise hf_config.Unsupported(
        f"--vision {vision_dir}: model_type={kind!r}; valid: clip_vision_model, "
        "siglip_vision_model (or a clip / siglip model, whose vision half is used)")
  arch = mapping.SIGLIP_VISION if kind.startswith("siglip") else mapping.CLIP_VISION
  return arch, hf


def import_palme(lm: str, vision_dir: str, out: str, *, connector: str = "mlp",
                 config: ml_collections.ConfigDict | None = None, num_tokens: int = 64,
                 log: Callable[[str], None] = print) -> ml_collections.ConfigDict:
  """A Llama-family LM + a CLIP/SigLIP ViT from separate HF dirs, with a fresh connector."""
  _check_dir(lm, "--lm")
  _check_dir(vision_dir, "--vision")
  lm_arch, inferred = _from_hf_json(lm)
  if lm_arch != mapping.LLAMA:
    raise hf_config.Unsupported(f"--lm {lm}: {lm_arch} is not a LlamaForCausalLM")
  with _fields_of(os.path.join(vision_dir, "config.json")):
    vision_arch, vision_json = _vision_dir_json(vision_dir)
    v = hf_config.vision_from_json(vision_json, _read_json(vision_dir, "preprocessor_config.json",
                                                           required=False))
  if v.variant == vision_lib.Variant.CLIP:  # LLaVA's choice: penultimate layer, patches only
    v.update(feature_layer=-2, feature_select="patch", post_norm=False, l2_normalize=False)
  else:  # SigLIP's own output: last layer, post-normed, every patch
    v.update(feature_layer=-1, feature_select="all", post_norm=True, l2_normalize=False)
  d = inferred.model.decoder
  c = connector_lib.default_config(connector, num_tokens=num_tokens)
  c.update(num_heads=d.num_heads)
  inferred.model = multimodal.default_config(vision=v, connector=c, decoder=d)
  inferred.model.image_slot_id = d.vocab_size  # Llama has no free id; slots are never embedded
  inferred.model.vector_slot_id = -1
  # PaLM-E / LLaVA layout: an image is its slots alone (no <image> / </image> in Llama's vocab)
  inferred.tokenizer.update(image_slot_id=d.vocab_size, vector_slot_id=-1, image_start_id=-1,
                            image_end_id=-1)
  if config is not None:
    diffs = hf_config.differences(config.model, inferred.model, ("decoder",))
    vision_fields = ml_collections.ConfigDict({k: v[k] for k in v if k not in (
        "feature_layer", "feature_select", "post_norm", "l2_normalize")})
    diffs += hf_config.differences(config.model, ml_collections.ConfigDict(
        dict(vision=vision_fields)), ("vision",))
    if diffs:
      raise hf_config.ConfigMismatch("--config disagrees with the --lm / --vision checkpoints:\n  " + "\n  ".join(diffs))
  else:
    config = inferred
  config = ml_collections.ConfigDict(config.to_dict())
  multimodal.check_config(config.model)
  abstract = hf_export.leaves(hf_export.abstract_params(config.model))
  params: dict = {}
  lm_reader, vision_reader = stream.SafetensorsReader(lm), stream.SafetensorsReader(vision_dir)
  lm_used: set[str] = set()
  vision_used: set[str] = set()
  load_entries(lm_reader, mapping.entries(config.model, mapping.LLAMA), mapping.LLAMA, abstract,
               params, lm_used)
  load_entries(vision_reader, mapping.entries(config.model, vision_arch), vision_arch, abstract,
               params, vision_used)
  params["connector"] = fresh_params("connector", config.model, config.seed)
  log(f"connector {config.model.connector.kind!r} freshly initialised")
  return _finish(out, config, params, lm_used | vision_used, [lm_reader, vision_reader], lm,
                 dict(imported_from=[os.path.abspath(lm), os.path.abspath(vision_dir)],
                      architecture=f"{mapping.LLAMA}+{vision_arch}"), log)
