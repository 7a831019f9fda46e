"""What XLA's cost analysis leaves out of a compiled TPU program, read from its HLO text.

`compiled.cost_analysis()` sees no work inside Mosaic (Pallas) kernels: a splash-attention
program reports ~1e-4 of the FLOPs of the same attention written in XLA. `analyze(compiled)`
reads the compiled (SPMD-partitioned, so per-device) HLO and returns

  kernels      every `tpu_custom_call`: its name (the op_name's last scope before
               `pallas_call`, e.g. `splash_mha_fwd_segmented_residuals`), executions per
               step (the trip counts of the while loops around it multiply), operand and
               result shapes; splash-attention kernels also get analytic FLOPs and HBM
               bytes (kosmos.train.splash_costs); any other kernel is listed uncounted.
  collectives  all-gather, reduce-scatter, all-reduce, all-to-all, collective-permute
               (sync, or the `-start` of an async pair, counted once) with bytes per device
               per step: max(operand bytes, result bytes) of each op (the full buffer: an
               all-gather's result, a reduce-scatter's input), times executions. XLA:TPU's
               reduce-scatter is a fusion of all-reduce + dynamic-slice; it is reported as
               reduce-scatter.

  hot_ops      where the program's time goes by XLA:TPU's own estimate: each top-level
               fusion carries `estimated_cycles` in its backend_config; summed times
               executions per step, grouped by the op's JAX name scope (numbers dropped) and
               result shape, the largest `HOT_OPS` with their share of all estimated cycles.
               (A profile from hardware is better; this is what the compiler plans with.)

Executions per step: a computation runs as often as its callers (while bodies and
conditions times the loop's trip count; fusions, calls, conditional branches (each counted
as if taken), async wrappers once). A while's trip count is its backend_config's
`known_trip_count`, else read from its condition `counter < N` with the counter's initial
constant (XLA:TPU's compiled whiles carry no backend_config); a loop whose count cannot be
read counts once and is named in `unknown_trip_counts`.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import re
from typing import Any

from kosmos.train import splash_costs

DTYPE_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "s32": 4,
               "u32": 4, "s64": 8, "u64": 8, "f16": 2, "bf16": 2, "f32": 4, "f64": 8,
               "c64": 8, "c128": 16}
_SHAPE = re.compile(r"\b(pred|[suf]\d+|bf16|c64|c128|f8e\w+)\[([\d,]*)\]")
_INSTR = re.compile(r"^\s*(ROOT\s+)?%([\w.\-]+)\s*=\s*(.*?)\s([a-z][\w\-]*)\((.*)$", re.S)
_COMP = re.compile(r"^(ENTRY\s+)?%([\w.\-]+)\s.*\{\s*$")
_START = re.compile(r"^\s*(ROOT\s+)?%[\w.\-]+\s*=")
_CYCLES = re.compile(r'"estimated_cycles":"(\d+)"')
HOT_OPS = 15
COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
_NO_CALL = ("async-update", "async-done")  # the wrapped computation runs once, at async-start


@dataclasses.dataclass
class Instr:
  name: str
  opcode: str
  shape: str  # result type text
  args: str  # operand list text
  attrs: str  # everything after the operand list
  root: bool

  @property
  def operands(self) -> list[str]:
    return re.findall(r"%([\w.\-]+)", self.args)


def dtype_bytes(dtype: str) -> float:
  return DTYPE_BYTES.get(dtype, 1 if dtype.startswith("f8") else 4)


def shapes(text: str) -> list[tuple[str, tuple[int, ...]]]:
  """[(dtype, dims)] of every array type in `text` (a result type, maybe a tuple)."""
  return [(d, tuple(int(x) for x in dims.split(",") if x)) for d, dims in _SHAPE.findall(text)]


def nbytes(shape: tuple[str, tuple[int, ...]]) -> int:
  dtype, dims = shape
  n = 1
  for d in dims:
    n *= d
  return int(dtype_bytes(dtype) * n)


def _split_args(rest: str) -> tuple[str, str]:
  """'a, %b), attr=...' -> ('a, %b', 'attr=...'): the text up to the matching ')'."""
  depth = 1
  for i, ch in enumerate(rest):
    depth += {"(": 1, ")": -1}.get(ch, 0)
    if depth == 0:
      return rest[:i], rest[i + 1:]
  return rest, ""


def parse(text: str) -> tuple[dict[str, list[Instr]], str | None]:
  """HLO module text -> ({computation: [instructions]}, entry computation name)."""
  comps: dict[str, list[Instr]] = {}
  entry, current, pending = None, None, []

  def flush():
    if pending and current is not None:
      found = _INSTR.match("\n".join(pending))
      if found:
        root, name, shape, opcode, rest = found.groups()
        args, attrs = _split_args(rest)
        comps[current].append(Instr(name, opcode, shape, args, attrs, bool(root)))
    pending.clear()

  for line in text.splitlines():
    header = _COMP.match(line) if not line.startswith(" ") else None
    if header:
      flush()
      current = header.group(2)
      comps[current] = []
      entry = current if header.group(1) else entry
    elif line.startswith("}") and not pending:
      current = None
    elif _START.match(line):
      flush()
      pending.append(line)
    elif pending:
      if line.startswith("}") and (not line.startswith("}}") and "=" not in line):
        flush()
        current = None
      else:
        pending.append(line)
  flush()
  return comps, entry


def computation_texts(text: str) -> dict[str, list[str]]:
  """{computation name: its lines} of an HLO module's text, header first (without
  `ENTRY`), as `parse` splits it."""
  out: dict[str, list[str]] = {}
  current = None
  for line in text.splitlines():
    if current is None:
      header = _COMP.match(line)
      if header:
        current = header.group(2)
        out[current] = [line[len(header.group(1)):] if header.group(1) else line]
    else:
      out[current].append(line)
      if line == "}":
        current = None
  return out


def _callees(instr: Instr) -> list[tuple[str, str]]:
  """(computation, role) pairs an instruction calls; roles: body, condition, other."""
  if instr.opcode in _NO_CALL:
    return []
  out = []
  for key in ("body", "condition", "calls", "to_apply"):
    out += [(name, key) for name in re.findall(rf"\b{key}=%([\w.\-]+)", instr.attrs)]
  for group in re.findall(r"branch_computations=\{([^}]*)\}", instr.attrs):
    out += [(name, "branch") for name in re.findall(r"%([\w.\-]+)", group)]
  for key in ("true_computation", "false_computation"):
    out += [(name, "branch") for name in re.findall(rf"\b{key}=%([\w.\-]+)", instr.attrs)]
  return out


def constant_ints(comp: list[Instr], name: str) -> list[int] | None:
  """Integer values of the constant behind `name` (through copies and bitcasts), or None
  when it is not a constant or was printed elided (`{...}`)."""
  by_name = {i.name: i for i in comp}
  for _ in range(8):
    instr = by_name.get(name)
    if instr is None:
      return None
    if instr.opcode == "constant":
      if "..." in instr.args:
        return None
      return [int(v) for v in re.findall(r"-?\d+", instr.args)]
    if instr.opcode not in ("copy", "copy-start", "copy-done", "bitcast", "reshape", "convert"):
      return None
    name = instr.operands[0] if instr.operands else ""
  return None


# Ops a block mask passes through on its way to a kernel; a (dynamic-)slice of a sharded
# mask's constant yields the whole constant, which splash_costs then reads as a density.
_PASS_THROUGH = ("copy", "copy-start", "copy-done", "bitcast", "reshape", "convert",
                 "dynamic-slice", "slice")


def traced_ints(comps: dict[str, list[Instr]], callers: dict[str, list[tuple[str, Instr]]],
                comp_name: str, name: str, element: int | None = None,
                depth: int = 0) -> list[int] | None:
  """Like `constant_ints`, but also follows tuple elements into the callers of a while
  body or called computation (a loop-invariant constant enters a loop through its tuple)."""
  if depth > 32:
    return None
  instr = next((i for i in comps.get(comp_name, []) if i.name == name), None)
  if instr is None:
    return None
  follow = lambda c, n, e=None: traced_ints(comps, callers, c, n, e, depth + 1)
  if element is not None:  # we want element `element` of this tuple-valued instruction
    if instr.opcode == "tuple" and element < len(instr.operands):
      return follow(comp_name, instr.operands[element])
    if instr.opcode == "parameter":
      return _from_callers(comps, callers, comp_name, instr, element, depth)
    body = re.search(r"\bbody=%([\w.\-]+)", instr.attrs) if instr.opcode == "while" else None
    root = next((i for i in comps.get(body.group(1), []) if i.root), None) if body else None
    return follow(body.group(1), root.name, element) if root else None  # a loop's output
  if instr.opcode == "constant":
    return constant_ints(comps[comp_name], name)
  if instr.opcode in _PASS_THROUGH and instr.operands:
    return follow(comp_name, instr.operands[0])
  if instr.opcode == "get-tuple-element" and instr.operands:
    index = re.search(r"index=(\d+)", instr.attrs)
    return follow(comp_name, instr.operands[0], int(index.group(1))) if index else None
  if instr.opcode == "parameter":
    return _from_callers(comps, callers, comp_name, instr, None, depth)
  return None


def _from_callers(comps, callers, comp_name, param, element, depth):
  """The value a parameter gets from every caller, if they all agree."""
  number = re.search(r"(\d+)", param.args)
  values = []
  for caller_comp, caller in callers.get(comp_name, []):
    if caller.opcode == "while":
      operand = caller.operands[0] if caller.operands else None
    else:
      k = int(number.group(1)) if number else 0
      operand = caller.operands[k] if k < len(caller.operands) else None
    if operand is None:
      return None
    values.append(traced_ints(comps, callers, caller_comp, operand, element, depth + 1))
  if not values or any(v is None or v != values[0] for v in values):
    return None
  return values[0]


def trip_count(instr: Instr, comps: dict[str, list[Instr]], caller: list[Instr]) -> int | None:
  """A while op's trip count: backend_config known_trip_count, else `i < N` in its condition
  with i's initial value a constant in the while's operand tuple (else assumed 0)."""
  found = re.search(r'"known_trip_count"\s*:\s*\{\s*"n"\s*:\s*"?(\d+)', instr.attrs)
  if found:
    return int(found.group(1))
  cond = re.search(r"\bcondition=%([\w.\-]+)", instr.attrs)
  body = comps.get(cond.group(1)) if cond else None
  root = next((i for i in body or [] if i.root), None)
  direction = re.search(r"direction=(\w+)", root.attrs) if root else None
  if root is None or root.opcode != "compare" or len(root.operands) != 2 or not direction:
    return None
  by_name = {i.name: i for i in body}
  a, b = (by_name.get(n) for n in root.operands)
  sign = direction.group(1)
  if a is not None and a.opcode == "constant":  # N > i  ==  i < N
    a, b, sign = b, a, {"GT": "LT", "GE": "LE"}.get(sign, "")
  if a is None or b is None or a.opcode != "get-tuple-element" or sign not in ("LT", "LE"):
    return None
  limit = constant_ints(body, b.name)
  index = re.search(r"index=(\d+)", a.attrs)
  if not limit or len(limit) != 1 or not index:
    return None
  start = 0
  tuple_name = instr.operands[0] if instr.operands else None
  tup = next((i for i in caller if i.name == tuple_name), None)
  if tup is not None and tup.opcode == "tuple" and int(index.group(1)) < len(tup.operands):
    init = constant_ints(caller, tup.operands[int(index.group(1))])
    start = init[0] if init and len(init) == 1 else 0
  step = counter_step(instr, comps, int(index.group(1)))
  if step is None:
    return None
  span = limit[0] - start + (1 if sign == "LE" else 0)
  return max(-(-span // step), 0)


def counter_step(instr: Instr, comps: dict[str, list[Instr]], index: int) -> int | None:
  """How much a while's body adds to its loop counter (tuple element `index`) per
  iteration: XLA:TPU's windowed einsums step theirs by 2 (two shards per iteration, one
  each way round the ring). 1 when the body's update is not `counter + constant`."""
  body = re.search(r"\bbody=%([\w.\-]+)", instr.attrs)
  comp = comps.get(body.group(1), []) if body else []
  by_name = {i.name: i for i in comp}
  root = next((i for i in comp if i.root), None)
  if root is None or root.opcode != "tuple" or index >= len(root.operands):
    return 1
  update = by_name.get(root.operands[index])
  if update is None or update.opcode != "add" or len(update.operands) != 2:
    return 1
  for counter, other in (update.operands, update.operands[::-1]):
    read = by_name.get(counter)
    if (read is not None and read.opcode == "get-tuple-element"
        and re.search(rf"\bindex={index}\b", read.attrs)):
      value = constant_ints(comp, other)
      if value and len(value) == 1:
        return value[0] if value[0] > 0 else None
  return 1


def executions(comps: dict[str, list[Instr]], entry: str, count_trips: bool = True
               ) -> tuple[dict[str, int], list[str]]:
  """How many times each computation runs per call of `entry`; and whiles of unknown count.
  `count_trips=False`: every while runs its body once (how XLA's cost analysis counts)."""
  calls: dict[str, list[tuple[str, int]]] = collections.defaultdict(list)
  unknown = []
  for comp_name, comp in comps.items():
    for instr in comp:
      callees = _callees(instr)
      if not callees:
        continue
      trips = 1
      if instr.opcode == "while" and count_trips:
        trips = trip_count(instr, comps, comp)
        if trips is None:
          unknown.append(instr.name)
          trips = 1
      for callee, role in callees:
        factor = (trips + (1 if role == "condition" and count_trips else 0)
                  if instr.opcode == "while" else 1)
        calls[callee].append((comp_name, factor))
  memo: dict[str, int] = {entry: 1}

  def count(name: str, depth: int = 0) -> int:
    if name not in memo:
      memo[name] = 0  # guards against cycles
      memo[name] = sum(count(caller, depth + 1) * f for caller, f in calls.get(name, []))
    return memo[name]

  return {name: count(name) for name in comps}, unknown


def _kernel_name(instr: Instr) -> str:
  op_name = re.search(r'op_name="([^"]*)"', instr.attrs)
  if op_name:
    scopes = [s for s in op_name.group(1).split("/") if s and s != "pallas_call"]
    if scopes:
      return scopes[-1]
  return re.sub(r"\.\d+$", "", instr.name)


def _kernel_metadata(instr: Instr) -> dict[str, Any]:
  found = re.search(r'"xprof_metadata":"((?:[^"\\]|\\.)*)"', instr.attrs)
  if not found:
    return {}
  try:
    return json.loads(found.group(1).encode().decode("unicode_escape"))
  except ValueError:
    return {}


def _operand_shapes(instr: Instr) -> list[tuple[str, tuple[int, ...]]]:
  """Operand shapes: compiled HLO prints operands by name only, but a custom call lists
  its operands' layouts (operand_layout_constraints) in order."""
  found = re.search(r"operand_layout_constraints=\{(.*?)\}(?:,\s*\w+=|\s*$)", instr.attrs, re.S)
  if found:
    return shapes(found.group(1))
  return shapes(instr.args)


def analyze_text(text: str) -> dict[str, Any]:
  """Kernels and collectives of one HLO module's text (see the module docstring)."""
  comps, entry = parse(text)
  if entry is None:
    return {"kernels": [], "collectives": {}, "unknown_trip_counts": []}
  runs, unknown = executions(comps, entry)
  callers: dict[str, list[tuple[str, Instr]]] = collections.defaultdict(list)
  for comp_name, comp in comps.items():
    for instr in comp:
      for callee, role in _callees(instr):
        if role in ("body", "calls"):
          callers[callee].append((comp_name, instr))
  kernels: dict[tuple, dict[str, Any]] = {}
  coll: dict[str, dict[str, float]] = {k: {"ops": 0, "executions": 0, "bytes": 0}
                                       for k in COLLECTIVES}
  for comp_name, comp in comps.items():
    n = runs.get(comp_name, 0)
    if n == 0:
      continue
    by_name = {i.name: i for i in comp}
    root = next((i for i in comp if i.root), None)
    for instr in comp:
      if instr.opcode == "custom-call" and 'custom_call_target="tpu_custom_call"' in instr.attrs:
        operands = _operand_shapes(instr)
        results = shapes(instr.shape)
        mask = (traced_ints(comps, callers, comp_name, instr.operands[1])
                if len(instr.operands) > 1 else None)
        name = _kernel_name(instr)
        key = (name, tuple(operands), tuple(results))
        if key in kernels:
          kernels[key]["executions"] += n
          continue
        entry_ = {"name": name, "executions": n,
                  "operands": [_fmt(s) for s in operands], "results": [_fmt(s) for s in results]}
        cost = splash_costs.kernel_cost(name, operands, results, _kernel_metadata(instr), mask)
        entry_.update(cost or {"counted": False})
        kernels[key] = entry_
        continue
      kind = _collective_kind(instr, comp, root)
      if kind is None:
        continue
      operand_bytes = sum(nbytes(s) for o in instr.operands if o in by_name
                          for s in shapes(by_name[o].shape))
      if instr.opcode.endswith("-start"):  # result: (operands..., outputs..., sync flags)
        result_bytes = max((nbytes(s) for s in shapes(instr.shape)), default=0)
      else:
        result_bytes = sum(nbytes(s) for s in shapes(instr.shape))
      if kind == "reduce-scatter" and instr.opcode == "all-reduce":
        result_bytes = operand_bytes
      stats = coll[kind]
      stats["ops"] += 1
      stats["executions"] += n
      stats["bytes"] += n * max(operand_bytes, result_bytes)
  coll = {k: v for k, v in coll.items() if v["ops"]}
  return {"kernels": sorted(kernels.values(), key=lambda k: k["name"]), "collectives": coll,
          "collective_bytes": sum(v["bytes"] for v in coll.values()),
          "hot_ops": hot_ops(comps, runs), "unknown_trip_counts": unknown}


def _scope(instr: Instr) -> str:
  """The op's JAX name scope without the wrappers every op shares and without numbers."""
  op_name = re.search(r'op_name="([^"]*)"', instr.attrs)
  scope = op_name.group(1) if op_name else instr.opcode
  for noise in ("jit(wrapped)/", "while/body/", "closed_call/", "/while/body"):
    scope = scope.replace(noise, "")
  return re.sub(r"_?\d+", "", scope)


def hot_ops(comps: dict[str, list[Instr]], runs: dict[str, int],
            top: int = HOT_OPS) -> dict[str, Any]:
  """XLA:TPU's estimated cycles per step, grouped by op scope and result shape."""
  cycles: collections.Counter = collections.Counter()
  for comp_name, comp in comps.items():
    n = runs.get(comp_name, 0)
    for instr in comp:
      found = _CYCLES.search(instr.attrs)
      if found and n:
        cycles[(_scope(instr), " ".join(_fmt(s) for s in shapes(instr.shape)[:2]))] += (
            int(found.group(1)) * n)
  total = sum(cycles.values())
  return {"total_cycles": total,
          "top": [{"op": op, "result": result, "cycles": c, "share": c / total}
                  for (op, result), c in cycles.most_common(top)]}


def _collective_kind(instr: Instr, comp: list[Instr], root: Instr | None) -> str | None:
  op = instr.opcode
  if op.endswith("-done"):
    return None
  base = op[:-len("-start")] if op.endswith("-start") else op
  if base not in COLLECTIVES:
    return None
  if base == "all-reduce" and root is not None and root.opcode == "dynamic-slice" \
      and instr.name in root.operands:
    return "reduce-scatter"  # XLA:TPU's all-reduce-scatter fusion
  return base


def _fmt(shape: tuple[str, tuple[int, ...]]) -> str:
  return f"{shape[0]}[{','.join(map(str, shape[1]))}]"


def module_text(compiled: Any) -> str:
  """The compiled module's HLO with large constants printed in full (splash block masks),
  falling back to `compiled.as_text()` (which elides them as `{...}`)."""
  try:
    from jaxlib import _hlo  # pylint: disable=g-import-not-at-top
    options = _hlo.HloPrintOptions()
    options.print_large_constants = True
    return compiled.runtime_executable().hlo_modules()[0].to_string(options)
  except Exception:  # pylint: disable=broad-except
    return compiled.as_text()


def analyze(compiled: Any) -> dict[str, Any]:
  """`analyze_text` of a compiled program; re-read with every constant printed only when a
  kernel's block mask was elided (the full text can be large)."""
  result = analyze_text(compiled.as_text())
  if any(k.get("counted") and k.get("mask_read") is False for k in result["kernels"]):
    result = analyze_text(module_text(compiled))
  return result


def kernel_seconds(analysis: dict[str, Any], peak_flops: float | None,
                   hbm_bandwidth: float | None) -> dict[str, Any]:
  """Roofline time of the counted kernels: sum of executions x max(flops / peak, bytes /
  HBM bandwidth) per kernel (each entry gets its `seconds`), with the totals per step and
  the names of uncounted kernels."""
  total = {"flops": 0.0, "bytes": 0.0, "seconds": 0.0, "uncounted": []}
  for kernel in analysis["kernels"]:
    if not kernel.get("counted"):
      total["uncounted"].append(kernel["name"])
      continue
    n = kernel["executions"]
    times = [kernel["flops"] / peak_flops if peak_flops else 0.0,
             kernel["bytes"] / hbm_bandwidth if hbm_bandwidth else 0.0]
    kernel["seconds"] = max(times)
    kernel["bound"] = "compute" if times[0] >= times[1] else "memory"
    total["flops"] += n * kernel["flops"]
    total["bytes"] += n * kernel["bytes"]
    total["seconds"] += n * kernel["seconds"]
  return total
