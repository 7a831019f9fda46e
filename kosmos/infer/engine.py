"""Text in, text out: prompts -> batches -> jitted generation / scoring -> strings.

`Engine(model, config, mesh=...)` tokenizes prompts (`kosmos.infer.prompt`), groups them
into length-sorted batches with fixed padded shapes (prompt length rounded up to
`length_multiple`, rows to `batch_size`, so few compiles serve a whole eval), places them
over the mesh's (data, fsdp) axes, runs `generate.decode` / `beam.search` /
`score.score`, and decodes the output. Stop strings are applied after decoding: the text is
cut at the first occurrence of any of them.

Grounding (`config.tokenizer.grounding`, KOSMOS-2 location tokens): prompt text is encoded
with `kosmos.data.grounding.Grounding.encode` (`<grounding>`, `<phrase>`, cells as their
ids) and each generation also carries `tagged`, its text with the tags kept, for
`grounding.parse` (phrases and boxes); `text` drops them, as without grounding.

Multi-process: every process calls `generate` / `score` with ITS OWN prompts (any number,
even none), batches are assembled from process-local rows, and each process gets back the
results for its own prompts. Before the first batch the processes agree (one all-gather) on
the padded length, images per row and number of batches, so every host compiles and runs
the same programs the same number of times, and a too-long prompt on any host stops all
of them with the same error instead of leaving the others waiting in a collective.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator, Sequence

import jax
import ml_collections
import numpy as np
from flax import nnx

from kosmos import sharding
from kosmos.data import grounding
from kosmos.data import tokenizer as tokenizer_lib
from kosmos.infer import beam
from kosmos.infer import generate as generate_lib
from kosmos.infer import prompt as prompt_lib
from kosmos.infer import score as score_lib
from kosmos.model import multimodal


@dataclasses.dataclass
class Generation:
  """text: decoded (stop id dropped, cut at a stop string); tokens: generated ids up to and
  including a stop id; logprob: their summed log-probability; score: beam score (length-
  normalised) or logprob."""
  text: str
  tokens: list[int]
  logprob: float
  score: float
  # with grounding: the text with location tags, spaced to follow the prompt's text
  # (`grounding.parse(prompt_text + tagged)` gives the phrases and boxes)
  tagged: str = ""


def cut_at_stop_strings(text: str, stop_strings: Sequence[str]) -> str:
  """`text` up to the earliest occurrence of any non-empty stop string."""
  cut = len(text)
  for stop in stop_strings:
    if stop:
      found = text.find(stop)
      if found >= 0:
        cut = min(cut, found)
  return text[:cut]


def default_banned_ids(tok: tokenizer_lib.Tokenizer) -> tuple[int, ...]:
  """Ids a text continuation never contains: pad, bos and the image/vector placeholders."""
  ids = (tok.pad_id, tok.bos_id, tok.image_start_id, tok.image_end_id, tok.image_slot_id,
         tok.vector_slot_id)
  return tuple(sorted({i for i in ids if 0 <= i < tok.vocab_size}))  # -1 = absent; slots may lie past the vocab


class Engine:
  """Generation and scoring for one model; see the module docstring."""

  def __init__(self, model: multimodal.Multimodal, config: ml_collections.ConfigDict, *,
               mesh: jax.sharding.Mesh | None = None,
               tokenizer: tokenizer_lib.Tokenizer | None = None, length_multiple: int = 32):
    self.config = config
    self.tok = tokenizer or tokenizer_lib.load(config.tokenizer)
    grounding.check_vocab(config.tokenizer, config.model.decoder.vocab_size)
    self.grounding = grounding.load(self.tok, config.tokenizer)
    self.graphdef, self.state = nnx.split(model)
    self.decode_fn = generate_lib.jit(generate_lib.decode)(self.graphdef)
    self.beam_fn = generate_lib.jit(beam.search)(self.graphdef)
    self.score_fn = generate_lib.jit(score_lib.score)(self.graphdef)
    self.stream_start_fn = generate_lib.jit(generate_lib.stream_start)(self.graphdef)
    self.stream_step_fn = generate_lib.jit(generate_lib.stream_step,
                                           donate_argnums=(2,))(self.graphdef)
    self.mesh = mesh
    self.rules = tuple((name, tuple(t) if isinstance(t, list) else t)
                       for name, t in config.get("sharding_rules", ()))
    self.image_size = config.model.vision.image_size
    self.tokens_per_image = multimodal.tokens_per_image(config.model)
    self.length_multiple = length_multiple
    self.max_len = int(config.model.decoder.max_len)
    if mesh is not None:
      shards = mesh.shape["data"] * mesh.shape["fsdp"]
      self.row_multiple = max(1, shards // jax.process_count())
    else:
      self.row_multiple = 1

  # --------------------------------------------------------------------------- helpers

  def encode(self, segments: Sequence[dict[str, Any]]) -> prompt_lib.Encoded:
    return prompt_lib.encode(segments, self.tok, image_size=self.image_size,
                             tokens_per_image=self.tokens_per_image,
                             encode_text=self.grounding.encode if self.grounding else None)

  def _options(self, **kw) -> generate_lib.Options:
    kw.setdefault("stop_ids", (self.tok.eos_id,))
    kw.setdefault("banned_ids", default_banned_ids(self.tok))
    return generate_lib.Options(pad_id=self.tok.pad_id, mesh=self.mesh, rules=self.rules, **kw)

  def _put(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    if self.mesh is None:
      return {k: jax.numpy.asarray(v) for k, v in batch.items()}
    return {k: jax.make_array_from_process_local_data(
        sharding.batch_sharding(self.mesh, v.ndim), v) for k, v in batch.items()}

  def _get(self, tree: dict[str, jax.Array]) -> dict[str, np.ndarray]:
    if self.mesh is None or jax.process_count() == 1:
      return {k: np.asarray(v) for k, v in tree.items()}
    out = {}
    for k, v in tree.items():  # this process's rows of a globally sharded array
      shards = sorted(v.addressable_shards, key=lambda s: s.index[0].start or 0)
      seen, rows = set(), []
      for s in shards:
        start = s.index[0].start or 0
        if start not in seen:
          seen.add(start)
          rows.append(np.asarray(s.data))
      out[k] = np.concatenate(rows)
    return out

  def _multi_process(self) -> bool:
    return self.mesh is not None and jax.process_count() > 1

  def _shapes(self, encoded: Sequence[prompt_lib.Encoded], batch_size: int, length: int,
              num_images: int, extra_tokens: int) -> tuple[int, int, int]:
    """(length, num_images, batches) for this call: `length` when fixed (0: per batch) and
    `num_images` when fixed (-1: the most in a prompt), agreed by all processes when there
    are several (then one length for every batch); raises the same error on every host
    when a prompt does not fit."""
    longest = max((len(e.tokens) for e in encoded), default=1)
    most = max((len(e.images) for e in encoded), default=0)
    batches = -(-len(encoded) // batch_size)
    if self._multi_process():
      from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
      agreed = multihost_utils.process_allgather(np.asarray([longest, most, batches], np.int64))
      longest, most, batches = (int(v) for v in np.asarray(agreed).reshape(-1, 3).max(axis=0))
      length = length or self._padded(longest, extra_tokens)
    if longest + extra_tokens > self.max_len:
      raise ValueError(f"a prompt of {longest} tokens + {extra_tokens} new tokens exceeds "
                       f"model.decoder.max_len={self.max_len}; use fewer shots or a shorter prompt")
    if length and longest > length:
      raise ValueError(f"a prompt of {longest} tokens does not fit the fixed length {length}")
    if num_images >= 0 and most > num_images:
      raise ValueError(f"a prompt has {most} images, more than the fixed {num_images} per row")
    return length, most if num_images < 0 else num_images, batches

  def _padded(self, longest: int, extra_tokens: int) -> int:
    """The padded length for prompts of up to `longest` tokens: a multiple of
    `length_multiple`, but never past max_len - extra_tokens."""
    return min(prompt_lib.round_up(longest, self.length_multiple), self.max_len - extra_tokens)

  def _chunks(self, encoded: Sequence[prompt_lib.Encoded], batch_size: int, length: int = 0,
              num_images: int = -1, extra_tokens: int = 0):
    """(indices, padded batch) groups of prompts of similar length. `length` / `num_images`
    fix P / M for every batch; `extra_tokens` must fit after P (new tokens). With several
    processes, hosts with fewer batches run padding-only ones (empty indices)."""
    batch_size = prompt_lib.round_up(max(1, batch_size), self.row_multiple)
    length, num_images, batches = self._shapes(encoded, batch_size, length, num_images,
                                               extra_tokens)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].tokens))
    filler = prompt_lib.Encoded([self.tok.pad_id], [])
    for n in range(batches):
      idx = order[n * batch_size:(n + 1) * batch_size]
      group = [encoded[i] for i in idx] or [filler]
      padded = length or self._padded(max(len(e.tokens) for e in group), extra_tokens)
      batch = prompt_lib.collate(group, image_size=self.image_size, pad_id=self.tok.pad_id,
                                 length=padded, num_images=num_images, batch_size=batch_size)
      yield idx, batch

  # --------------------------------------------------------------------------- generate

  def generate(self, prompts: Sequence[Sequence[dict[str, Any]]], *, max_new_tokens: int = 20,
               num_beams: int = 1, length_penalty: float = 0.0, temperature: float = 0.0,
               top_k: int = 0, top_p: float = 1.0, seed: int = 0,
               stop_strings: Sequence[str] = (), batch_size: int = 8,
               progress: Callable[[int], Any] | None = None, length: int = 0,
               num_images: int = -1) -> list[Generation]:
    """Continues each prompt (segment list); `progress(n)` is called after each batch.
    `length`/`num_images` fix the padded prompt length / images per row (0/-1: per batch)."""
    if temperature <= 0.0 or top_k == 1:  # greedy: one compiled loop for all spellings
      temperature, top_k, top_p = 0.0, 0, 1.0
    if num_beams == 1:
      length_penalty = 0.0
    options = self._options(max_new_tokens=max_new_tokens, num_beams=num_beams,
                            length_penalty=length_penalty, temperature=temperature,
                            top_k=top_k, top_p=top_p)
    encoded = [self.encode(p) for p in prompts]
    results: list[Generation | None] = [None] * len(encoded)
    rng = jax.random.PRNGKey(seed)
    for chunk, (idx, batch) in enumerate(self._chunks(encoded, batch_size, length, num_images,
                                                      extra_tokens=max_new_tokens)):
      device_batch = self._put(batch)
      if num_beams > 1:
        out = self._get(self.beam_fn(self.state, device_batch, options=options))
        tokens, counts = out["tokens"][:, 0], out["num_tokens"][:, 0]
        logprob, score = out["logprob"][:, 0], out["scores"][:, 0]
      else:
        out = self._get(self.decode_fn(self.state, device_batch, jax.random.fold_in(rng, chunk),
                                       options=options))
        tokens, counts, logprob = out["tokens"], out["num_tokens"], out["logprob"]
        score = logprob
      for row, i in enumerate(idx):
        ids = [int(t) for t in tokens[row, :counts[row]]]
        text_ids = [t for t in ids if t not in options.stop_ids]
        text = cut_at_stop_strings(self.tok.decode(text_ids), stop_strings)
        tagged = (cut_at_stop_strings(self.grounding.decode(text_ids, continuation=True),
                                      stop_strings)
                  if self.grounding else "")
        results[i] = Generation(text=text, tokens=ids, logprob=float(logprob[row]),
                                score=float(score[row]), tagged=tagged)
      if progress is not None:
        progress(len(idx))
    return results  # type: ignore[return-value]

  def stream(self, prompt: prompt_lib.Encoded, *, max_new_tokens: int = 20,
             temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
             seed: int = 0) -> Iterator[int]:
    """Yields the continuation of one encoded prompt token by token, up to and including a
    stop id: the tokens `generate` returns for it with the same options and seed (one
    process; the prompt padded as `generate` pads it)."""
    if self._multi_process():
      raise ValueError("Engine.stream runs in one process")
    if temperature <= 0.0 or top_k == 1:
      temperature, top_k, top_p = 0.0, 0, 1.0
    options = self._options(max_new_tokens=max_new_tokens, temperature=temperature,
                            top_k=top_k, top_p=top_p)
    (_, batch), = self._chunks([prompt], self.row_multiple, extra_tokens=max_new_tokens)
    logits, cache = self.stream_start_fn(self.state, self._put(batch), options=options)
    lengths = self._put({"lengths": batch["lengths"]})["lengths"]
    rng = jax.random.fold_in(jax.random.PRNGKey(seed), 0)  # `generate`'s first chunk
    for i in range(max_new_tokens):
      rng, sub = jax.random.split(rng)
      token, logits, cache = self.stream_step_fn(self.state, logits, cache, lengths + i, sub,
                                                 options=options)
      token = int(np.asarray(token)[0])
      yield token
      if token in options.stop_ids:
        return

  # --------------------------------------------------------------------------- score

  def score(self, prompts: Sequence[Sequence[dict[str, Any]]],
            candidates: Sequence[Sequence[str]], *, batch_size: int = 8,
            progress: Callable[[int], Any] | None = None, length: int = 0,
            num_images: int = -1) -> list[list[tuple[float, float]]]:
    """(sum, mean) log-probability of each candidate continuation of each prompt.

    A candidate is tokenized in context: the ids that `encode(last text + candidate)` adds
    after `encode(last text)` when the prompt ends with text and that prefix tokenizes the
    same (SentencePiece with a dummy prefix turns a lone " yes" into ["▁", "▁yes"], but
    "Answer: yes" into [..., "▁yes"]); else `encode(candidate)` (no bos/eos). Include its
    leading space. Every (prompt, candidate) pair is a row.
    """
    if len(prompts) != len(candidates):
      raise ValueError(f"{len(prompts)} prompts but {len(candidates)} candidate lists")
    rows, owners = [], []
    for p, (segments, cands) in enumerate(zip(prompts, candidates)):
      base = self.encode(segments)
      last = segments[-1].get("text", "") if segments else ""
      last_ids = self.tok.encode(last) if last else []
      for c, text in enumerate(cands):
        ids = self.tok.encode(text)
        if last:
          joined = self.tok.encode(last + text)
          if joined[:len(last_ids)] == last_ids and len(joined) > len(last_ids):
            ids = joined[len(last_ids):]
        if not ids:
          raise ValueError(f"prompt {p}: candidate {c} {text!r} has no tokens")
        rows.append(prompt_lib.Encoded(base.tokens + ids, base.images))
        owners.append((p, c, len(base.tokens)))
    out: list[list[tuple[float, float]]] = [[(0.0, 0.0)] * len(c) for c in candidates]
    options = self._options()
    for idx, batch in self._chunks(rows, batch_size, length, num_images):
      starts = np.ones((batch["tokens"].shape[0],), np.int32)
      for row, i in enumerate(idx):
        starts[row] = owners[i][2]
      batch["starts"] = starts
      result = self._get(self.score_fn(self.state, self._put(batch), options=options))
      for row, i in enumerate(idx):
        p, c, _ = owners[i]
        total, count = float(result["logprob"][row]), int(result["num_tokens"][row])
        out[p][c] = (total, total / count)
      if progress is not None:
        progress(len(idx))
    return out
