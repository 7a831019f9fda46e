"""Train-step benchmark: the real jitted step (`step.jit_train_step`) on a config's shapes.

    python -m kosmos.bench.train_step --config configs/demo.py --steps 10 --out train_bench.json
    python -m kosmos.bench.train_step --config configs/kosmos1.py \
        --config.data.global_batch_size=8 --steps 3 --out k1_small.json

The state is created sharded on the config's mesh (all local devices) and randomly
initialised; batches are synthetic in the pipeline's format with every image slot used
(`max_images_per_row` images per row, each followed by text; the rest of the row text), so
the step computes exactly what a full batch of the data pipeline would. Reported:

    compile_s              lowering + compile of the step
    step_s                 median wall time of `--steps` steps after one warm-up step
    tokens_per_s           global_batch_size * seq_len / step_s
    images_per_s           global_batch_size * max_images_per_row / step_s
    analytic_flops         kosmos.train.flops.step_flops (trainable ViT blocks counted once)
    flops_per_s, mfu       achieved FLOP/s; MFU when the device's peak is known (not on CPU)

No data pipeline, no checkpointing, no metrics writing: those are the trainer's and
`kosmos.bench.data`'s to measure.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from kosmos import sharding
from kosmos.bench import report
from kosmos.data import tokenizer as tokenizer_lib
from kosmos.model import multimodal
from kosmos.train import flops as flops_lib
from kosmos.train import step as step_lib

TEXT_KIND = 3  # packing.KIND_IDS["interleaved"]: every row is an interleaved document


def make_batch(config: ml_collections.ConfigDict, seed: int = 0) -> dict[str, np.ndarray]:
  """A global batch [B, L] in the pipeline's format, one document per row: bos, then
  `max_images_per_row` image spans each followed by equal text, then text to the end."""
  data, tok = config.data, config.tokenizer
  b, seq, m = data.global_batch_size, data.seq_len, data.max_images_per_row
  span = tokenizer_lib.image_span(tok, multimodal.tokens_per_image(config.model))
  if m * len(span) + 2 > seq:
    raise ValueError(f"data.max_images_per_row={m} spans of {len(span)} tokens do not fit "
                     f"data.seq_len={seq}")
  rng = np.random.default_rng(seed)
  tokens = rng.integers(8, config.model.decoder.vocab_size, (b, seq)).astype(np.int32)
  tokens[:, 0] = tok.bos_id
  text_between = (seq - 1 - m * len(span)) // max(m, 1)
  at = 1
  for _ in range(m):
    tokens[:, at:at + len(span)] = span
    at += len(span) + text_between
  targets = np.roll(tokens, -1, axis=1)
  special = (tokens == tok.image_slot_id) | (targets == tok.image_slot_id) | (targets == tok.image_end_id)
  size = config.model.vision.image_size
  batch = {
      "tokens": tokens, "targets": targets, "loss_mask": (~special).astype(np.float32),
      "segment_ids": np.ones((b, seq), np.int32),
      "positions": np.tile(np.arange(seq, dtype=np.int32), (b, 1)),
      "images": rng.integers(0, 256, (b, m, size, size, 3), dtype=np.uint8),
      "image_mask": np.ones((b, m), bool),
      "kind_ids": np.full((b, seq), TEXT_KIND, np.int8),
  }
  batch["loss_mask"][:, -1] = 0.0
  return batch


def run(config: ml_collections.ConfigDict, *, steps: int = 10) -> dict[str, Any]:
  if steps < 1:
    raise ValueError(f"--steps={steps} must be >= 1")
  mesh = sharding.make_mesh(config.mesh)
  run_setup = step_lib.setup(config, mesh)
  state = step_lib.init_state(config, run_setup)
  batch = make_batch(config)
  shapes = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()}
  train_step = step_lib.jit_train_step(config, run_setup, mesh, shapes)
  device_batch = {k: jax.device_put(v, s) for (k, v), s in
                  zip(batch.items(), step_lib.batch_shardings(mesh, shapes).values())}
  start = time.perf_counter()
  compiled = train_step.lower(state, device_batch).compile()
  compile_s = time.perf_counter() - start
  state, metrics = compiled(state, device_batch)  # warm-up
  jax.block_until_ready(metrics)
  times, losses = [], []
  for _ in range(steps):
    start = time.perf_counter()
    state, metrics = compiled(state, device_batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
    losses.append(float(metrics["loss"]))
  step_s = statistics.median(times)
  data = config.data
  analytic = flops_lib.step_flops(config, flops_lib.trainable_vision_layers(
      run_setup.abstract_state.params, config.model.vision.depth,
      run_setup.layer_masks))
  count = lambda tree: int(sum(x.size for x in jax.tree.leaves(tree)))
  kind = str(jax.devices()[0].device_kind)
  return {
      "benchmark": "train_step",
      "mesh": dict(mesh.shape), "global_batch_size": data.global_batch_size,
      "seq_len": data.seq_len, "max_images_per_row": data.max_images_per_row,
      "params": count(run_setup.abstract_state.params) + count(run_setup.abstract_state.frozen),
      "trainable_params": count(run_setup.abstract_state.params),
      "compile_s": compile_s, "steps": steps, "step_s": step_s, "step_s_all": times,
      "tokens_per_s": data.global_batch_size * data.seq_len / step_s,
      "images_per_s": data.global_batch_size * data.max_images_per_row / step_s,
      "analytic_flops": analytic, "flops_per_s": analytic["total"] / step_s,
      "mfu": flops_lib.mfu(analytic["total"], step_s, jax.device_count(), kind),
      "losses": losses,
  }


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m kosmos.bench.train_step", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", required=True, help="config file[:arg]")
  parser.add_argument("--steps", type=int, default=10, help="timed steps after one warm-up")
  parser.add_argument("--out", required=True, help="JSON file to write")
  args, config = report.parse_with_config(parser, argv)
  result = report.environment("kosmos.bench.train_step", argv)
  result.update(run(config, steps=args.steps))
  report.write(result, args.out)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
