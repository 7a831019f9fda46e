"""Parameter count and breakdown of a config, from `jax.eval_shape` (nothing allocated).

    python -m kosmos.model.summary --config configs/kosmos1.py [--out F.json] [--config.a.b=v ...]

Counts are the same for scanned stacks (`scan_layers`: one [L, ...] array per parameter).
"""

from __future__ import annotations

import argparse
import json
import sys

import jax
import numpy as np
from flax import nnx

from kosmos import configs
from kosmos.model import multimodal

PARTS = ("vision", "connector", "decoder", "vector_proj")


def abstract_model(model_config) -> multimodal.Multimodal:
  return nnx.eval_shape(lambda: multimodal.Multimodal(model_config, rngs=nnx.Rngs(0)))


def count(model_config) -> dict[str, int]:
  """{"vision": n, "connector": n, "decoder": n, ["vector_proj": n,] "total": n}."""
  state = nnx.state(abstract_model(model_config), nnx.Param)
  counts = {}
  for part in PARTS:
    if part in state:
      counts[part] = int(sum(np.prod(x.shape) for x in jax.tree.leaves(state[part])))
  counts["total"] = sum(counts.values())
  return counts


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", required=True, help="configs/X.py[:arg]")
  parser.add_argument("--out", help="also write the counts as JSON here")
  args, rest = parser.parse_known_args(argv)
  config = configs.load(args.config)
  try:
    configs.apply_overrides(config, rest)
  except (ValueError, TypeError) as e:
    parser.error(str(e))
  counts = count(config.model)
  tpi = multimodal.tokens_per_image(config.model)
  for part, n in counts.items():
    print(f"{part:12s} {n:>15,d}  ({n / 1e9:.3f}B)")
  print(f"tokens per image: {tpi}")
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"config": args.config, "params": counts, "tokens_per_image": tpi}, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
