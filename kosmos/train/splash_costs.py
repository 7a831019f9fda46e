"""Analytic FLOPs and HBM bytes of one execution of a splash-attention (Pallas TPU) kernel.

From its compiled custom call: the kernel name (`splash_{mha,mqa}_{fwd,dq,dkv}[_segmented]
[_residuals|_no_residuals]`), operand shapes (q, k, v are its first three floating-point
operands: [..., heads, seq, head_dim], leading dims from vmap; MQA k, v have no head dim),
block sizes (the `xprof_metadata` JSON the kernel carries) and the block mask (operand 1,
an int [mask heads, rows, cols] constant: 0 = block skipped, 1 = partial, 2 = full).

Only computed blocks count (a causal n x n block mask computes n(n+1)/2; segment ids skip
nothing). Matmuls per computed bq x bkv block, from
jax/experimental/pallas/ops/tpu/splash_attention/splash_attention_kernel.py:
  fwd  QK^T, PV                             2 bq bkv (K + Kv)
  dq   QK^T, dO V^T, dS K                   2 bq bkv (2K + Kv)
  dkv  QK^T, dO V^T, P^T dO, dS^T Q         2 bq bkv (2K + 2Kv)
  dkv fused (use_fused_bwd_kernel) + dS K   2 bq bkv (3K + 2Kv)
HBM bytes follow each kernel's grid: the operands indexed by the outer (row) axis are read
once per row and its outputs written once; the streamed side (k, v for fwd and dq; q, dO,
logsumexp, di for dkv) is read once per computed block (skipped blocks fetch nothing).
Segment ids and logsumexp are lane-/sublane-broadcast int32/f32 in the kernel's layout.
Exponentials and masking (VPU/EUP work) are not counted.
"""

from __future__ import annotations

import math
import re
from typing import Any, Sequence

Shape = tuple[str, tuple[int, ...]]
_NAME = re.compile(r"splash_(mha|mqa)_(fwd|dq|dkv)(_segmented)?(_residuals|_no_residuals)?")
_FLOAT = ("bf16", "f16", "f32", "f64")
_ITEMSIZE = {"bf16": 2, "f16": 2, "f32": 4, "f64": 8}
LANES, SUBLANES = 128, 8
# (K coefficient, Kv coefficient) of 2 bq bkv per computed block
MATMULS = {"fwd": (1, 1), "dq": (2, 1), "dkv": (2, 2), "dkv_fused": (3, 2)}


def kernel_cost(name: str, operands: Sequence[Shape], results: Sequence[Shape],
                metadata: dict[str, Any], mask: Sequence[int] | None) -> dict[str, Any] | None:
  """{'kind', 'flops', 'bytes', 'computed_blocks', 'mask', ...} for one execution of a
  splash kernel, or None when `name` is not one (the caller lists it as uncounted)."""
  found = _NAME.search(name)
  floats = [s for s in operands if s[0] in _FLOAT]
  if not found or len(floats) < 3 or len(operands) < 2:
    return None
  mqa, phase, segmented = found.group(1) == "mqa", found.group(2), bool(found.group(3))
  residuals = found.group(4) == "_residuals"
  (dtype, q), (_, k), (_, v) = floats[:3]
  q = _head_minor(q, metadata.get("q_layout", 1))
  k = _head_minor(k, metadata.get("k_layout", 1))
  v = _head_minor(v, metadata.get("v_layout", 1))
  lead, heads, t, kd = math.prod(q[:-3]), q[-3], q[-2], q[-1]
  s, kvd = k[-2], v[-1]
  fused = phase == "dkv" and (metadata.get("use_fused_bwd_kernel")
                              or any(len(r[1]) == len(q) + 1 for r in results))
  if phase == "fwd":
    bq, bkv = metadata.get("block_q"), metadata.get("block_kv")
  elif phase == "dq":
    bq, bkv = metadata.get("block_q_dq"), metadata.get("block_kv_dq")
  else:
    bq, bkv = metadata.get("block_q_dkv"), metadata.get("block_kv_dkv")
  mask_shape = operands[1][1]
  if not bq or not bkv:  # no metadata: the mask's (unshrunk) block grid
    if len(mask_shape) != 3:
      return None
    rows, cols = (mask_shape[2], mask_shape[1]) if phase == "dkv" else mask_shape[1:]
    bq, bkv = t // max(rows, 1), s // max(cols, 1)
  dense = (t // bq) * (s // bkv)
  grid = math.prod(mask_shape[1:]) if len(mask_shape) == 3 else 0
  if mask and grid and len(mask) == math.prod(mask_shape):
    blocks = sum(1 for m in mask if m) / mask_shape[0]  # per head
    mask_source = f"block mask: {blocks:g} of {dense} blocks per head computed"
  elif mask and grid:  # the kernel gets a slice of a sharded mask's constant
    blocks = sum(1 for m in mask if m) / len(mask) * grid
    mask_source = (f"block mask (a slice of a {len(mask)}-entry constant; its density): "
                   f"{blocks:g} of {dense} blocks per head computed")
  else:
    blocks = dense
    mask_source = f"block mask not readable: all {dense} blocks per head counted"
  ck, cv = MATMULS["dkv_fused" if fused else phase]
  flops = lead * heads * blocks * 2 * bq * bkv * (ck * kd + cv * kvd)

  isz = _ITEMSIZE.get(dtype, 2)
  seg_rows = LANES * 4 if segmented else 0  # int32 ids broadcast over 128 lanes, per position
  seg_cols = SUBLANES * 4 if segmented else 0  # ... and over 8 sublanes
  if phase == "fwd":
    per_head = (t * (kd + kvd) * isz + (t * LANES * 4 if residuals else 0)
                + blocks * bkv * (kd + kvd) * isz + t * seg_rows + blocks * bkv * seg_cols)
  elif phase == "dq":
    per_head = (t * (2 * kd + kvd) * isz + 2 * t * 4  # q, dq, dO; logsumexp, di
                + blocks * bkv * (kd + kvd) * isz + t * seg_rows + blocks * bkv * seg_cols)
  else:
    per_head = (2 * s * (kd + kvd) * isz  # k, v read; dk, dv written
                + blocks * bq * ((kd + kvd) * isz + 2 * SUBLANES * 4)  # q, dO; logsumexp, di
                + s * seg_rows + blocks * bq * seg_cols)
  nbytes = lead * heads * per_head
  if fused:  # dq partials per kv block, written by the kernel and summed outside
    nbytes += max((_bytes(r) for r in results if len(r[1]) == len(q) + 1), default=0)
  return {"kind": f"splash_{phase}{'_fused' if fused else ''}", "counted": True,
          "flops": float(flops), "bytes": float(nbytes), "computed_blocks_per_head": blocks,
          "dense_blocks_per_head": dense, "block": [bq, bkv], "mask": mask_source,
          "mask_read": bool(mask and grid),
          "batch_x_heads": lead * heads, "seq": [t, s], "head_dim": [kd, kvd], "mqa": mqa}


def _head_minor(dims: tuple[int, ...], layout: int) -> tuple[int, ...]:
  return dims if layout == 1 else dims[:-2] + (dims[-1], dims[-2])


def _bytes(shape: Shape) -> int:
  return _ITEMSIZE.get(shape[0], 4) * math.prod(shape[1])
