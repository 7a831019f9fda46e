"""Export a params-only Orbax checkpoint (an output workdir) in float32 or bfloat16.

    python -m kosmos.interop.main export --workdir DIR [--step N] --format params \
        [--dtype bfloat16] --out OUT

OUT is a workdir: OUT/config.json (the source config, with every `param_dtype` set to the
exported dtype so the config describes the checkpoint) and OUT/checkpoints/<step>/{params,
meta}. It is restorable onto any mesh with `workdir.restore_params(OUT, target=...)`
(abstract arrays carrying `kosmos.sharding.param_shardings`), and usable as
`config.train.init_from`. Casting needs the params once in the source dtype and once in
the exported one. LoRA adapters are folded into their kernels (W + alpha/rank * A B) and
the exported config has `decoder.lora.rank = 0`: the output is a plain model.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from kosmos import workdir
from kosmos.interop import hf_export
from kosmos.model import lora

DTYPES = ("float32", "bfloat16")


def export_params(src: str, out: str, *, step: int | None = None, dtype: str = "float32",
                  log: Callable[[str], None] = print) -> dict[str, Any]:
  if dtype not in DTYPES:
    raise ValueError(f"--dtype {dtype!r} not supported for --format params; valid: {list(DTYPES)}")
  if os.path.abspath(src) == os.path.abspath(out):
    raise ValueError(f"--out {out!r} is the source workdir; choose another directory")
  config = workdir.load_config(src)
  abstract = hf_export.abstract_params(config.model)
  target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), abstract)
  step, params = workdir.restore_params(src, step, target=target)
  spec = lora.spec_of(config.model.decoder)
  if spec is not None:  # a plain model: W + alpha/rank * A B, adapters dropped
    params = lora.fold(jax.tree.map(np.asarray, params), spec.scale)
    config.model.decoder.lora.rank = 0
  cast = jnp.dtype(dtype)
  params = jax.tree.map(lambda x: np.asarray(x).astype(cast, copy=False), params)
  for section in ("vision", "connector", "decoder"):
    config.model[section].param_dtype = dtype
  workdir.save_config(config, out)
  workdir.save_params(out, step, params, meta=dict(exported_from=os.path.abspath(src), dtype=dtype))
  total = sum(x.nbytes for x in jax.tree.leaves(params))
  log(f"exported params of {src} step {step} as {dtype} ({total / 1e6:.1f} MB) -> {out}")
  return dict(step=step, dtype=dtype, bytes=total, out=out)
