"""Generation benchmark: prefill and KV-cache decode throughput on a config's model.

    python -m kosmos.bench.generate --config configs/demo.py --out generate_bench.json

The model is randomly initialised (throughput does not depend on the weights). For each
batch size (default 1 and 8), prompts of `--prompt-len` tokens with `--images` images are
prefilled, then `--new-tokens` tokens are decoded greedily with no stop id (every row runs
the full length). Reported, as medians over `--repeats` timed runs after one compile run:

    prefill_tokens_per_s   B * P / prefill time   (one forward over the padded prompts,
                           including the vision encoder)
    decode_ms_per_step     (time(generate T tokens) - time(generate 1 token)) / (T - 1):
                           the loop's cost per step, prefill and compile excluded
    decode_tokens_per_s    B / decode time per step
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import jax
import numpy as np
from flax import nnx

from kosmos import configs
from kosmos.bench import report
from kosmos.data import tokenizer as tokenizer_lib
from kosmos.infer import cache as cache_lib
from kosmos.infer import generate as generate_lib
from kosmos.model import multimodal


def _prefill(model, batch, *, options):
  b, p = batch["tokens"].shape
  cache = cache_lib.init(model.decoder.config, b, p + options.max_new_tokens)
  logits, cache = cache_lib.prefill(model, batch, cache)
  return logits, cache


def make_batch(config, batch_size: int, prompt_len: int, num_images: int, seed: int = 0):
  """Random text tokens with `num_images` image spans at the start, lengths = prompt_len."""
  n = multimodal.tokens_per_image(config.model)
  rng = np.random.default_rng(seed)
  tok = config.tokenizer
  tokens = rng.integers(8, config.model.decoder.vocab_size, (batch_size, prompt_len)).astype(np.int32)
  tokens[:, 0] = tok.bos_id
  at = 1
  span = tokenizer_lib.image_span(tok, n)
  for _ in range(num_images):
    if at + len(span) > prompt_len:
      raise ValueError(f"--prompt-len {prompt_len} cannot hold {num_images} images of {n} tokens")
    tokens[:, at:at + len(span)] = span
    at += len(span)
  size = config.model.vision.image_size
  return {"tokens": tokens, "lengths": np.full((batch_size,), prompt_len, np.int32),
          "images": rng.integers(0, 256, (batch_size, num_images, size, size, 3), dtype=np.uint8),
          "image_mask": np.ones((batch_size, num_images), bool)}


def _time(fn, repeats: int) -> float:
  jax.block_until_ready(fn())  # compile
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def run(config, *, batch_sizes=(1, 8), prompt_len: int = 128, new_tokens: int = 64,
        num_images: int = 1, repeats: int = 3) -> dict[str, Any]:
  model = multimodal.Multimodal(config.model, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  decode = generate_lib.jit(generate_lib.decode)(graphdef)
  prefill = generate_lib.jit(_prefill)(graphdef)
  if new_tokens < 2:
    raise ValueError(f"--new-tokens={new_tokens} must be >= 2")
  options = generate_lib.Options(max_new_tokens=new_tokens, stop_ids=(), pad_id=config.tokenizer.pad_id)
  one = generate_lib.Options(max_new_tokens=1, stop_ids=(), pad_id=config.tokenizer.pad_id)
  if prompt_len + new_tokens > config.model.decoder.max_len:
    raise ValueError(f"--prompt-len + --new-tokens = {prompt_len + new_tokens} exceeds "
                     f"model.decoder.max_len={config.model.decoder.max_len}")
  rows = []
  for b in batch_sizes:
    batch = {k: jax.numpy.asarray(v) for k, v in
             make_batch(config, b, prompt_len, num_images).items()}
    rng = jax.random.PRNGKey(0)
    t_prefill = _time(lambda: prefill(state, batch, options=options), repeats)
    t_total = _time(lambda: decode(state, batch, rng, options=options), repeats)
    t_one = _time(lambda: decode(state, batch, rng, options=one), repeats)
    t_step = max(t_total - t_one, 1e-9) / (new_tokens - 1)
    rows.append(dict(batch_size=b, prompt_len=prompt_len, new_tokens=new_tokens,
                     images_per_prompt=num_images, prefill_s=t_prefill, total_s=t_total,
                     one_token_s=t_one, prefill_tokens_per_s=b * prompt_len / t_prefill,
                     decode_tokens_per_s=b / t_step, decode_ms_per_step=1e3 * t_step))
  params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  return dict(benchmark="generate", params=int(params), results=rows)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m kosmos.bench.generate", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", required=True, help="config file[:arg]")
  parser.add_argument("--batch-sizes", default="1,8")
  parser.add_argument("--prompt-len", type=int, default=128)
  parser.add_argument("--new-tokens", type=int, default=64)
  parser.add_argument("--images", type=int, default=1, help="images per prompt")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--out", required=True, help="JSON file to write")
  args = parser.parse_args(argv)
  config = configs.load(args.config)
  result = report.environment("kosmos.bench.generate", argv)
  result.update(run(config, batch_sizes=tuple(int(b) for b in args.batch_sizes.split(",")),
                    prompt_len=args.prompt_len, new_tokens=args.new_tokens,
                    num_images=args.images, repeats=args.repeats))
  report.write(result, args.out)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
