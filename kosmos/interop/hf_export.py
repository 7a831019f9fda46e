"""Export a kosmos workdir checkpoint as a transformers model directory (no custom code).

    python -m kosmos.interop.main export --workdir DIR [--step N] --format hf --out OUT

writes OUT/{model.safetensors | model-0000i-of-0000K.safetensors + model.safetensors.index.json,
config.json, generation_config.json, preprocessor_config.json (multimodal), tokenizer files
(Kosmos-2: `hf_tokenizer`, ids equal to kosmos's)}.
Streaming: each parameter is restored alone from Orbax (partial restore), transposed,
cast and appended to its pre-planned shard (LoRA adapters folded into their kernels:
W + alpha/rank * A B), so peak host memory is about two copies of
the largest tensor plus the runtime, whatever the model size.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from flax import nnx

from kosmos import workdir
from kosmos.interop import hf_config
from kosmos.interop import hf_tokenizer
from kosmos.interop import mapping
from kosmos.interop import stream
from kosmos.model import connector as connector_lib
from kosmos.model import lora
from kosmos.model import multimodal
from kosmos.model import stack

DTYPES = {"float32": np.float32, "bfloat16": jax.numpy.bfloat16, "float16": np.float16}


def abstract_params(model_config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Pure dict of ShapeDtypeStructs of `Multimodal(model_config)`'s params (nothing
  allocated), in the per-layer layout whether or not the config scans its layers."""
  model_config = stack.per_layer_config(model_config)
  model = nnx.eval_shape(lambda: multimodal.Multimodal(model_config, rngs=nnx.Rngs(0)))
  return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def leaves(tree: dict[str, Any], prefix: tuple = ()) -> dict[tuple, Any]:
  """{key path: leaf} of a nested dict."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(leaves(value, prefix + (key,)))
    else:
      out[prefix + (key,)] = value
  return out


def _normalize_path(path: tuple) -> tuple:
  return tuple(int(k) if isinstance(k, str) and k.isdigit() else k for k in path)


def check_coverage(entries: list[mapping.Entry], abstract: dict[str, Any], parts: tuple[str, ...]) -> None:
  """Every param of `parts` is mapped exactly once (guards the maps against model changes)."""
  have = {_normalize_path(p) for p in leaves(abstract)
          if p[0] in parts and not lora.is_adapter(p)}  # adapters are folded into kernels
  mapped = [e.kosmos for e in entries]
  if len(set(mapped)) != len(mapped):
    raise AssertionError("a kosmos parameter is mapped twice")
  missing, extra = sorted(map(str, have - set(mapped))), sorted(map(str, set(mapped) - have))
  if missing or extra:
    raise AssertionError(f"name map out of date: unmapped kosmos params {missing[:5]}, "
                         f"mapped but absent {extra[:5]}")


def _write_tokenizer(config: ml_collections.ConfigDict, architecture: str, out: str,
                     log: Callable[[str], None]) -> None:
  tok = config.tokenizer
  if architecture == mapping.KOSMOS2:
    hf_tokenizer.write(config, out, log)
    return
  if not tok.path:
    log("tokenizer: config.tokenizer.path is empty (byte-level fallback tokenizer), which has no "
        "transformers equivalent; no tokenizer files written")
    return
  shutil.copyfile(tok.path, os.path.join(out, "tokenizer.model"))
  specials = {"bos_token": tok.bos_id, "eos_token": tok.eos_id, "pad_token": tok.pad_id,
              "unk_token": tok.unk_id}
  _dump(os.path.join(out, "tokenizer_config.json"), {
      "tokenizer_class": "LlamaTokenizer", "model_max_length": config.model.decoder.max_len,
      "kosmos_special_ids": specials, "kosmos_spm_id_offset": tok.spm_id_offset,
      "add_bos_token": True, "add_eos_token": False, "legacy": False})
  log(f"tokenizer: copied {tok.path} as tokenizer.model (LlamaTokenizer)")


def _dump(path: str, value: dict[str, Any]) -> None:
  with open(path, "w") as f:
    json.dump(value, f, indent=2, sort_keys=True)
    f.write("\n")


def export_hf(src: str, out: str, *, step: int | None = None, max_shard_size: str | int = "5GB",
              dtype: str | None = None, text_only: bool = False,
              log: Callable[[str], None] = print) -> dict[str, Any]:
  """Writes the transformers directory `out` from workdir `src`; returns a summary dict."""
  config = workdir.load_config(src)
  model = config.model
  architecture = hf_config.architecture_for(model, text_only)
  dtype = dtype or model.decoder.param_dtype
  if dtype not in DTYPES:
    raise ValueError(f"--dtype {dtype!r} not supported; valid: {sorted(DTYPES)}")
  hf_json = hf_config.to_hf_json(config, architecture, dtype)
  step = workdir.latest_step(src) if step is None else step
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {workdir.checkpoint_dir(src)}")
  params_dir = os.path.join(workdir.checkpoint_dir(src), str(step), workdir.PARAMS)
  if not os.path.isdir(params_dir):
    raise FileNotFoundError(f"{params_dir} not found: no params for step {step} in {src!r}")

  abstract = abstract_params(model)
  entries = mapping.entries(model, architecture)
  parts = ("decoder",) if architecture == mapping.LLAMA else ("decoder", "vision", "connector")
  check_coverage(entries, abstract, parts)
  leaf = leaves(abstract)
  out_dtype = np.dtype(DTYPES[dtype])
  plan = [(e.hf, mapping.hf_shape(e.kind, leaf[e.kosmos].shape), out_dtype)
          for e in entries]
  linear = architecture == mapping.LLAVA and model.connector.kind == connector_lib.Kind.LINEAR
  d_model = model.decoder.d_model
  if linear:
    plan += [(mapping.LLAVA_LINEAR_2 + ".weight", (d_model, d_model), out_dtype),
             (mapping.LLAVA_LINEAR_2 + ".bias", (d_model,), out_dtype)]
  # Scanned checkpoints hold [L, ...] arrays: read each once, its layers consecutively.
  reader = stack.LayerReader(lambda path, like: stream.read_param(params_dir, path, like), model)
  order = sorted(range(len(entries)), key=lambda i: reader.order(entries[i].kosmos))
  entries, plan = [entries[i] for i in order], [plan[i] for i in order] + plan[len(entries):]
  os.makedirs(out, exist_ok=True)
  writer = stream.ShardedWriter(out, plan, stream.parse_size(max_shard_size))
  for e in entries:
    value = reader.read(e.kosmos, leaf[e.kosmos])
    adapters = [e.kosmos[:-1] + (name,) for name in lora.ADAPTERS]
    if e.kosmos[-1] == "kernel" and all(a in leaf for a in adapters):
      value = lora.fold_kernel(value, *(reader.read(a, leaf[a]) for a in adapters),
                               lora.spec_of(model.decoder).scale)
    writer.write(e.hf, np.ascontiguousarray(mapping.to_hf(e.kind, value)).astype(out_dtype, copy=False))
    del value
  if linear:  # LLaVA always has linear_2: the identity makes it exact.
    writer.write(mapping.LLAVA_LINEAR_2 + ".weight", np.eye(d_model, dtype=out_dtype))
    writer.write(mapping.LLAVA_LINEAR_2 + ".bias", np.zeros((d_model,), out_dtype))
  writer.close()

  _dump(os.path.join(out, "config.json"), hf_json)
  _dump(os.path.join(out, "generation_config.json"), hf_config.generation_json(config, architecture))
  if architecture != mapping.LLAMA:
    _dump(os.path.join(out, "preprocessor_config.json"), hf_config.preprocessor_json(model.vision))
  _write_tokenizer(config, architecture, out, log)
  summary = dict(architecture=architecture, step=step, dtype=dtype, tensors=len(plan),
                 bytes=writer.total_size, files=writer.files, out=out)
  log(f"exported {src} step {step} as {architecture}: {len(plan)} tensors, "
      f"{writer.total_size / 1e6:.1f} MB in {len(writer.files)} file(s) -> {out}")
  return summary
