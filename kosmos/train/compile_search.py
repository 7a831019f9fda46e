"""`kosmos-compile --search`: compile candidate plans for one topology and rank them by MFU.

    kosmos-compile --config configs/kosmos1.py --topology v5p-256 --search --out /tmp/best.json \
        [--search-mesh fsdp,data2_fsdp,fsdp_tensor2] [--search-remat full,qkv_attn,dots] \
        [--search-attention xla,splash] [--search-accum 1,2] [--jobs 1] [--config.a.b=v ...]

Candidates are the product of the lists (an empty list keeps the config's value):
  mesh       `_`-joined axes, each `data|fsdp|tensor` with a size or none for -1 (fill):
             fsdp = data 1, fsdp -1, tensor 1; data2_fsdp = data 2, fsdp -1; fsdp_tensor2
  remat      model.decoder.remat and model.vision.remat
  attention  model.decoder.attention and model.vision.attention
  accum      optim.accum_steps (the same global batch in that many micro-batches, so fewer
             rows per chip at a time)
A candidate whose overrides the config rejects, whose mesh does not divide the chips, or
whose batch does not split over (data x fsdp x accum) is skipped with the reason. Each
other candidate compiles in its own process (this command without --search), `--jobs` at
once (each needs the host memory of one compile: ~10 GB for kosmos1). One table follows,
ranked by predicted MFU among the candidates that fit, then those that do not fit, failed
or were skipped, with the reason. `--out` gets the winner's overrides (the `--config.a.b=v`
strings to launch with) and its full report, and every candidate's row.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from typing import Any, Sequence

from kosmos import configs, sharding

MESH_AXES = ("data", "fsdp", "tensor")
DEFAULTS = {"mesh": "fsdp,data2_fsdp,fsdp_tensor2", "remat": "full,qkv_attn,dots",
            "attention": "xla,splash", "accum": "1,2"}


@dataclasses.dataclass
class Candidate:
  choice: dict[str, str]  # dimension -> value, e.g. {"mesh": "fsdp", "remat": "full"}
  overrides: list[str]
  status: str = "pending"  # fits | does not fit | failed | skipped
  reason: str | None = None
  report: dict[str, Any] | None = None

  @property
  def label(self) -> str:
    return " ".join(f"{k}={v}" for k, v in self.choice.items())


def add_flags(parser) -> None:
  group = parser.add_argument_group("search (--search)")
  group.add_argument("--search", action="store_true",
                     help="compile every candidate plan (the product of the lists below; an "
                          "empty list keeps the config's value) and rank them by predicted "
                          "MFU; exits 1 when none fits")
  group.add_argument("--search-mesh", default=DEFAULTS["mesh"],
                     help="meshes: '_'-joined data|fsdp|tensor, each with a size or none for "
                          "-1 (fill) (default: %(default)s)")
  group.add_argument("--search-remat", default=DEFAULTS["remat"],
                     help="decoder and vision remat policies (default: %(default)s)")
  group.add_argument("--search-attention", default=DEFAULTS["attention"],
                     help="decoder and vision attention implementations (default: %(default)s)")
  group.add_argument("--search-accum", default=DEFAULTS["accum"],
                     help="optim.accum_steps values (default: %(default)s)")
  group.add_argument("--jobs", type=int, default=1,
                     help="compiles at once, each in its own process (default: %(default)s)")


def mesh_overrides(name: str) -> list[str]:
  """'data2_fsdp' -> ['--config.mesh.data=2', '--config.mesh.fsdp=-1', '--config.mesh.tensor=1']."""
  sizes = {}
  for part in name.split("_"):
    found = re.fullmatch(r"(data|fsdp|tensor)(\d*)", part)
    if not found or found.group(1) in sizes:
      raise ValueError(f"mesh candidate {name!r}: parts are data|fsdp|tensor with an optional "
                       f"size, joined by '_' (e.g. fsdp, data2_fsdp, fsdp_tensor2)")
    sizes[found.group(1)] = int(found.group(2)) if found.group(2) else -1
  return [f"--config.mesh.{axis}={sizes.get(axis, 1)}" for axis in MESH_AXES]


def _values(text: str) -> list[str]:
  return [v.strip() for v in text.split(",") if v.strip()]


def candidates(args) -> list[Candidate]:
  """The product of the search lists, as override lists."""
  dims = {"mesh": _values(args.search_mesh), "remat": _values(args.search_remat),
          "attention": _values(args.search_attention), "accum": _values(args.search_accum)}
  dims = {k: v for k, v in dims.items() if v}
  out = []
  for combo in itertools.product(*dims.values()):
    choice = dict(zip(dims, combo))
    overrides, reason = [], None
    for dim, value in choice.items():
      if dim == "mesh":
        try:
          overrides += mesh_overrides(value)
        except ValueError as e:
          reason = str(e)
      elif dim == "accum":
        overrides.append(f"--config.optim.accum_steps={value}")
      else:
        overrides += [f"--config.model.{part}.{dim}={value}" for part in ("decoder", "vision")]
    out.append(Candidate(choice, overrides, "skipped" if reason else "pending", reason))
  return out


def check(candidate: Candidate, config_spec: str, base: Sequence[str], chips: int,
          slices: int) -> None:
  """Marks the candidate skipped when the config rejects it (without compiling)."""
  if candidate.status != "pending":
    return
  try:
    config = configs.load(config_spec)
    configs.apply_overrides(config, list(base) + candidate.overrides)
    if slices > 1 and int(config.mesh.get("dcn_data", 1)) == 1:
      config.mesh.dcn_data = slices
    mesh = sharding.mesh_shape(config.mesh, chips)
  except (ValueError, TypeError) as e:
    candidate.status, candidate.reason = "skipped", str(e).splitlines()[0][:300]
    return
  accum, batch = int(config.optim.accum_steps), config.data.global_batch_size
  shards = mesh["data"] * mesh["fsdp"]
  if accum < 1 or batch % accum or (batch // accum) % shards:
    candidate.status = "skipped"
    candidate.reason = (f"global batch {batch} does not split into {accum} micro-batches over "
                        f"data x fsdp = {shards} shards")


def _run(pending: list[Candidate], config_spec: str, topology: str, base: Sequence[str],
         jobs: int, workdir: str) -> None:
  """Compiles each candidate in a subprocess of this command, `jobs` at once."""
  queue, running = list(enumerate(pending)), []
  while queue or running:
    while queue and len(running) < max(jobs, 1):
      i, cand = queue.pop(0)
      out = os.path.join(workdir, f"candidate{i}.json")
      log = open(os.path.join(workdir, f"candidate{i}.log"), "w+")  # pylint: disable=R1732
      cmd = [sys.executable, "-m", "kosmos.train.compile", "--config", config_spec,
             "--topology", topology, "--out", out, *base, *cand.overrides]
      running.append((cand, out, log, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)))
    time.sleep(0.5)
    for item in list(running):
      cand, out, log, proc = item
      if proc.poll() is None:
        continue
      running.remove(item)
      log.seek(0)
      text = log.read()
      log.close()
      if proc.returncode == 0 and os.path.exists(out):
        with open(out) as f:
          cand.report = json.load(f)
        cand.status = "fits" if cand.report["fits"] else "does not fit"
        if not cand.report["fits"]:
          total = cand.report["memory_per_chip"]["total"]
          cand.reason = (f"{total / 2 ** 30:.2f} GiB per chip > "
                         f"{cand.report['topology']['hbm_bytes'] / 2 ** 30:.2f} GiB HBM")
      else:
        lines = [l for l in text.strip().splitlines() if l.strip()]
        errors = [l for l in lines if re.match(r"^\w*(Error|Exception)\b|^\w+: ", l)]
        cand.status = "failed"
        cand.reason = ((errors or lines or [f"exit code {proc.returncode}"])[-1]).strip()[:300]
      mfu = (cand.report or {}).get("mfu")
      done = len(pending) - len(queue) - len(running)
      print(f"[{done}/{len(pending)}] {cand.label}: {cand.status}"
            + (f", predicted MFU {mfu:.1%}" if mfu is not None else "")
            + (f" ({cand.reason})" if cand.reason else ""), flush=True)


def _key(cand: Candidate) -> tuple:
  order = {"fits": 0, "does not fit": 1, "failed": 2, "skipped": 3}[cand.status]
  mfu = (cand.report or {}).get("mfu")
  # A plan whose MFU is only an upper bound (work the cost model missed) ranks after the
  # plans whose figure holds.
  bound = bool((cand.report or {}).get("mfu_is_upper_bound"))
  return (order, bound, -(mfu if mfu is not None else -1.0))


def format_table(ranked: list[Candidate], dims: Sequence[str]) -> str:
  head = ["#", *dims, "MFU", "step s", "memory/chip", "collectives/chip", "kernels s", "status"]
  rows = []
  for rank, cand in enumerate(ranked, 1):
    r = cand.report or {}
    mem = (r.get("memory_per_chip") or {}).get("total")
    coll = (r.get("collectives_per_chip") or {}).get("total_bytes")
    kern = (r.get("kernels") or {}).get("seconds")
    mfu = r.get("mfu")
    rows.append([str(rank) if cand.status == "fits" else "-", *(cand.choice[d] for d in dims),
                 "-" if mfu is None else f"{'<=' if r.get('mfu_is_upper_bound') else ''}{mfu:.1%}",
                 "-" if r.get("step_seconds") is None else f"{r['step_seconds']:.4g}",
                 "-" if mem is None else f"{mem / 2 ** 30:.2f} GiB",
                 "-" if coll is None else f"{coll / 2 ** 30:.3f} GiB",
                 "-" if kern is None else f"{kern:.3g}",
                 cand.status + (f": {cand.reason}" if cand.reason else "")])
  widths = [max(len(x) for x in col) for col in zip(head, *rows)]
  line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
  return "\n".join([line(head)] + [line(r) for r in rows])


def run(args, topo, base: Sequence[str]) -> int:
  """The search; `topo` is the parsed topology, `base` the user's --config overrides."""
  cands = candidates(args)
  for cand in cands:
    check(cand, args.config, base, topo.chips, topo.num_slices)
  pending = [c for c in cands if c.status == "pending"]
  print(f"kosmos-compile --search: {len(cands)} candidates, {len(pending)} to compile "
        f"({len(cands) - len(pending)} skipped), {args.jobs} at a time", flush=True)
  with tempfile.TemporaryDirectory(prefix="kosmos-compile-search-") as workdir:
    _run(pending, args.config, args.topology, base, args.jobs, workdir)
  ranked = sorted(cands, key=_key)
  dims = list(ranked[0].choice) if ranked else []
  print(format_table(ranked, dims))
  best = ranked[0] if ranked and ranked[0].status == "fits" else None
  if best:
    print(f"best: {' '.join(list(base) + best.overrides)}")
  else:
    print("no candidate fits")
  if args.out:
    rows = [{"choice": c.choice, "overrides": list(base) + c.overrides, "status": c.status,
             "reason": c.reason, "mfu": (c.report or {}).get("mfu"),
             "step_seconds": (c.report or {}).get("step_seconds")} for c in ranked]
    result = {"config": args.config, "topology": args.topology, "base_overrides": list(base),
              "winner": None if best is None else {
                  "choice": best.choice, "overrides": list(base) + best.overrides,
                  "report": best.report},
              "candidates": rows}
    with open(args.out, "w") as f:
      json.dump(result, f, indent=1)
  return 0 if best else 1
