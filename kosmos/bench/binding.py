"""How many steps until in-context binding forms? A config's decoder on symbolic episodes.

    python -m kosmos.bench.binding --config configs/demo.py --steps 600 --out binding.json
    python -m kosmos.bench.binding --config configs/demo.py --steps 600 --horizon 1500 \
        --config.model.decoder.positions=rope --out binding_rope.json

Fast binding (Frozen; the item-label task of Reddy 2023) with perfect perception: each
episode draws `ways` key symbols (stand-ins for images of object kinds) and binds them to
as many word symbols, both afresh, then shows 1-4 rounds "key word ." (every key once per
round, random order) and a query key. Only the episode itself can tell the query's word,
so accuracy above chance needs an in-context copy circuit (a previous-token head feeding
an induction head): the mechanism the demo's binding eval asks of the full model, without
a ViT to learn first. Episodes are packed into rows of `data.seq_len` with their own
segment ids and positions, `data.global_batch_size` rows a step.

`--layout` frames each key as the model sees an image: `bare` is the key symbol alone;
`kosmos` is `<image>` + `--image-tokens` copies of the key + `</image>` (the Kosmos-1/2
prompt layout, the tokenizer's image_start_id / image_end_id), so the word follows the
constant `</image>` and is predicted there; `no-end` drops the `</image>`. The copy
circuit must then match the token two back instead of one (an extra hop on both sides),
which forms far later (docs/performance.md, Demo).

The model is `config.model.decoder` (overrides as kosmos-train takes them) trained with
the config's optimizer (`kosmos.train.optimizer.make`); `--horizon` sets the schedule's
length (default: --steps), so a run can stop early on a longer schedule. Every
`--eval-every` steps, 2-way accuracy on fixed held-out episodes at 0, 1 and 4 shots (0
shots = the query alone: chance); the report gives them with the loss, the wall time,
and `formed_at`: the first evaluation with 4-shot accuracy >= `--threshold`.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from kosmos.bench import report
from kosmos.model import decoder as decoder_lib
from kosmos.train import optimizer as optimizer_lib
from kosmos.train import loss as loss_lib

EVAL_SHOTS = (0, 1, 4)
FIRST_ID = 8  # ids below are the tokenizer's specials


LAYOUTS = ("bare", "kosmos", "no-end")


class Episodes:
  """Symbol ids: `keys` key symbols, then `words` word symbols, then the period; keys
  framed by `layout` (see the module doc) with `start_id` / `end_id`."""

  def __init__(self, keys: int, words: int, ways: int, max_shots: int, vocab_size: int, *,
               layout: str = "bare", image_tokens: int = 1, start_id: int = 4,
               end_id: int = 5):
    if keys < ways or words < ways:
      raise ValueError(f"--keys {keys} and --words {words} must be >= --ways {ways}")
    if FIRST_ID + keys + words + 1 > vocab_size:
      raise ValueError(f"{keys} keys + {words} words + 1 do not fit the decoder's vocabulary "
                       f"of {vocab_size} (ids from {FIRST_ID})")
    if layout not in LAYOUTS or image_tokens < 1 or (layout == "bare" and image_tokens != 1):
      raise ValueError(f"--layout {layout!r} must be one of {LAYOUTS} and --image-tokens "
                       f"{image_tokens} >= 1 (1 with the bare layout)")
    self.keys, self.words, self.ways, self.max_shots = keys, words, ways, max_shots
    self.period = FIRST_ID + keys + words
    self.layout, self.image_tokens = layout, image_tokens
    self.start_id, self.end_id = start_id, end_id

  def key_span(self, key: int) -> list[int]:
    """The tokens standing for one image of `key`."""
    if self.layout == "bare":
      return [key]
    end = self.layout == "kosmos" and self.end_id >= 0  # -1: the tokenizer has none (LLaVA)
    return [self.start_id] * (self.start_id >= 0) + [key] * self.image_tokens + [self.end_id] * end

  def longest(self, shots: int) -> int:
    """Tokens of a training episode with `shots` rounds (query word and period included)."""
    return (self.ways * shots + 1) * len(self.key_span(FIRST_ID)) + (self.ways * shots + 1) * 2

  def sample(self, rng: np.random.Generator, shots: int) -> tuple[list[int], int, int, int]:
    """(tokens up to the query key, query position, right word id, a wrong word id)."""
    keys = FIRST_ID + rng.choice(self.keys, size=self.ways, replace=False)
    words = FIRST_ID + self.keys + rng.choice(self.words, size=self.ways, replace=False)
    tokens: list[int] = []
    for _ in range(shots):
      for k in rng.permutation(self.ways):
        tokens += self.key_span(int(keys[k])) + [int(words[k]), self.period]
    q = int(rng.integers(self.ways))
    wrong = (q + 1 + int(rng.integers(self.ways - 1))) % self.ways
    tokens += self.key_span(int(keys[q]))
    return tokens, len(tokens) - 1, int(words[q]), int(words[wrong])

  def batch(self, rng: np.random.Generator, rows: int, seq_len: int) -> dict[str, np.ndarray]:
    """Whole training episodes (query word and period included) packed into rows, in the
    pipeline's batch format (targets = next token, loss only inside an episode)."""
    out = {k: np.zeros((rows, seq_len), np.int32) for k in ("tokens", "segment_ids", "positions")}
    for r in range(rows):
      at, segment = 0, 1
      while True:
        tokens, _, right, _ = self.sample(rng, int(rng.integers(1, self.max_shots + 1)))
        tokens += [right, self.period]
        if at + len(tokens) > seq_len:
          break
        span = slice(at, at + len(tokens))
        out["tokens"][r, span] = tokens
        out["segment_ids"][r, span] = segment
        out["positions"][r, span] = np.arange(len(tokens))
        at, segment = at + len(tokens), segment + 1
    seg = out["segment_ids"]
    out["targets"] = np.roll(out["tokens"], -1, axis=1)
    out["loss_mask"] = np.zeros((rows, seq_len), np.float32)
    out["loss_mask"][:, :-1] = (seg[:, 1:] == seg[:, :-1]) & (seg[:, :-1] > 0)
    return out


def _loss(model: decoder_lib.Decoder, batch: dict[str, jax.Array]) -> jax.Array:
  logits, _ = model(model.embed(batch["tokens"]), batch["positions"], batch["segment_ids"])
  terms = loss_lib.loss_terms(logits, batch, z_loss=0.0)  # the trainer's cross-entropy
  return terms["ce_sum"] / terms["count"]


@nnx.jit
def _train_step(model, opt, batch):
  loss, grads = nnx.value_and_grad(_loss)(model, batch)
  opt.update(model, grads)
  return loss


@nnx.jit
def _logits(model, tokens, positions, segments):
  return model(model.embed(tokens), positions, segments)[0]


def _eval_set(episodes: Episodes, seed: int, n: int) -> dict[int, dict[str, np.ndarray]]:
  rng = np.random.default_rng([seed, 1])
  out = {}
  for shots in EVAL_SHOTS:
    rows = [episodes.sample(rng, shots) for _ in range(n)]
    width = max(len(t) for t, *_ in rows)
    tokens, mask = np.zeros((n, width), np.int32), np.zeros((n, width), np.int32)
    for i, (t, *_) in enumerate(rows):
      tokens[i, :len(t)], mask[i, :len(t)] = t, 1
    out[shots] = {"tokens": tokens, "segment_ids": mask,
                  "positions": np.tile(np.arange(width, dtype=np.int32), (n, 1)) * mask,
                  "query": np.asarray([r[1] for r in rows]),
                  "right": np.asarray([r[2] for r in rows]),
                  "wrong": np.asarray([r[3] for r in rows])}
  return out


def _accuracy(model, data: dict[str, np.ndarray]) -> float:
  logits = np.asarray(_logits(model, data["tokens"], data["positions"], data["segment_ids"]))
  rows = np.arange(len(data["query"]))
  at = logits[rows, data["query"]]
  return float(np.mean(at[rows, data["right"]] > at[rows, data["wrong"]]) * 100)


def run(config: ml_collections.ConfigDict, *, steps: int, horizon: int, eval_every: int,
        keys: int, words: int, ways: int, episodes_per_eval: int, threshold: float,
        seed: int, layout: str = "bare", image_tokens: int = 1) -> dict[str, Any]:
  d = config.model.decoder
  episodes = Episodes(keys, words, ways, max_shots=max(EVAL_SHOTS), vocab_size=d.vocab_size,
                      layout=layout, image_tokens=image_tokens,
                      start_id=config.tokenizer.image_start_id,
                      end_id=config.tokenizer.image_end_id)
  longest = episodes.longest(max(EVAL_SHOTS))
  if longest > config.data.seq_len or longest > d.max_len:
    raise ValueError(f"a {max(EVAL_SHOTS)}-shot {ways}-way episode ({longest} tokens) does "
                     f"not fit data.seq_len={config.data.seq_len} / decoder.max_len={d.max_len}")
  model = decoder_lib.Decoder(d, rngs=nnx.Rngs(seed))
  opt = nnx.Optimizer(model, optimizer_lib.make(config.optim, horizon), wrt=nnx.Param)
  evals = _eval_set(episodes, seed, episodes_per_eval)
  rng = np.random.default_rng([seed, 0])
  rows, losses, start, formed_at = [], [], time.perf_counter(), None
  for step in range(1, steps + 1):
    batch = episodes.batch(rng, config.data.global_batch_size, config.data.seq_len)
    losses.append(float(_train_step(model, opt, batch)))
    if step % eval_every == 0 or step == steps:
      accuracy = {str(s): round(_accuracy(model, evals[s]), 1) for s in EVAL_SHOTS}
      rows.append({"step": step, "loss": round(float(np.mean(losses[-eval_every:])), 4),
                   "seconds": round(time.perf_counter() - start, 1), "accuracy": accuracy})
      if formed_at is None and accuracy[str(max(EVAL_SHOTS))] >= threshold:
        formed_at = step
  seconds = time.perf_counter() - start
  return {"decoder": d.to_dict(), "optim": config.optim.to_dict(),
          "rows_per_step": config.data.global_batch_size, "seq_len": config.data.seq_len,
          "steps": steps, "horizon": horizon, "keys": keys, "words": words, "ways": ways,
          "layout": layout, "image_tokens": image_tokens,
          "eval_episodes": episodes_per_eval, "threshold": threshold, "formed_at": formed_at,
          "seconds": round(seconds, 1), "steps_per_s": round(steps / seconds, 2),
          "evaluations": rows}


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m kosmos.bench.binding", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", required=True, help="config file[:arg] (its decoder, optim, "
                      "data.global_batch_size and data.seq_len are used)")
  parser.add_argument("--steps", type=int, default=600, help="training steps")
  parser.add_argument("--horizon", type=int, default=0,
                      help="length of the lr schedule (default: --steps)")
  parser.add_argument("--eval-every", type=int, default=50)
  parser.add_argument("--keys", type=int, default=40, help="key symbols (object kinds)")
  parser.add_argument("--words", type=int, default=16, help="word symbols (nonce words)")
  parser.add_argument("--ways", type=int, default=2)
  parser.add_argument("--layout", choices=LAYOUTS, default="bare",
                      help="how a key stands for an image (see above)")
  parser.add_argument("--image-tokens", type=int, default=1,
                      help="copies of the key inside <image> ... (kosmos and no-end layouts)")
  parser.add_argument("--episodes", type=int, default=200, help="eval episodes per shot count")
  parser.add_argument("--threshold", type=float, default=80.0,
                      help="4-shot accuracy (%%) that counts as formed")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", required=True, help="JSON file to write")
  args, config = report.parse_with_config(parser, argv)
  if min(args.steps, args.eval_every, args.episodes) < 1 or args.horizon < 0:
    parser.error("--steps, --eval-every and --episodes must be >= 1, --horizon >= 0")
  result = report.environment("kosmos.bench.binding", argv)
  try:
    result.update(run(config, steps=args.steps, horizon=args.horizon or args.steps,
                      eval_every=args.eval_every, keys=args.keys, words=args.words,
                      ways=args.ways, episodes_per_eval=args.episodes,
                      threshold=args.threshold, seed=args.seed, layout=args.layout,
                      image_tokens=args.image_tokens))
  except ValueError as e:
    parser.error(str(e))
  report.write(result, args.out)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
