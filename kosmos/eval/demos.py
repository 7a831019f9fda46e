"""Demonstration selection for few-shot prompts: random (seeded per trial) and RICES.

Follows OpenFlamingo's protocol:

- Random: per trial seed, a "query set" of `pool_size` train examples (2048 by default)
  is drawn; each query gets `k` distinct demonstrations sampled from it. Here the per-query
  sampler is seeded by (trial seed, query id), so the choice does not depend on batching,
  order or the number of hosts — the same seed gives the same prompts everywhere.
- RICES (Yang et al. 2022): the `k` train examples whose image embeddings have the highest
  cosine similarity to the query's, ordered with the most similar LAST (nearest the
  query). Pool embeddings are computed in batches by a caller-supplied embedding function
  and cached as .npy (one file per dataset + embedder, with a sidecar checking the pool).
- 0-shot: `effective_shots(0) == 2`; the two demonstrations are shown text-only (the
  prompt builder drops their images), as Flamingo / OpenFlamingo do.

A query is never among its own demonstrations: candidates with the query's id or the same
image bytes (sha256, `Example.image_digest`) are skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Callable, Sequence

import numpy as np

from kosmos.eval.tasks.example import Example

EmbedFn = Callable[[list[bytes]], np.ndarray]  # B encoded images -> [B, D] float
DEFAULT_POOL_SIZE = 2048
TEXT_ONLY_ZERO_SHOT_DEMOS = 2


def effective_shots(shots: int, text_only_zero_shot: bool = True) -> int:
  """Demonstrations to select: `shots`, or 2 text-only ones for 0-shot (Flamingo)."""
  if shots < 0:
    raise ValueError(f"shots must be >= 0; got {shots}")
  return TEXT_ONLY_ZERO_SHOT_DEMOS if shots == 0 and text_only_zero_shot else shots


class _Exclusion:
  """Is a candidate the query itself (same id or same image bytes)? Candidate digests are
  cached by id (ids are unique inside the pool)."""

  def __init__(self):
    self._digests: dict[str, str | None] = {}

  def digest(self, candidate: Example) -> str | None:
    if candidate.id not in self._digests:
      self._digests[candidate.id] = candidate.image_digest()
    return self._digests[candidate.id]

  def same(self, query: Example, query_digest: str | None, candidate: Example) -> bool:
    if candidate.id == query.id:
      return True
    return query_digest is not None and self.digest(candidate) == query_digest


def _too_few(k: int, found: int, query: Example, pool: int) -> ValueError:
  return ValueError(f"only {found} of {k} demonstrations for query {query.id!r}: the pool "
                    f"of {pool} has too few examples other than the query")


class RandomDemos:
  """Random demonstrations from a seeded query set of the train split."""

  def __init__(self, pool: Sequence[Example], seed: int,
               pool_size: int = DEFAULT_POOL_SIZE):
    if not len(pool):
      raise ValueError("RandomDemos needs a non-empty demonstration pool")
    self.seed = seed
    self._pool = pool
    if pool_size >= len(pool):
      self._indices = np.arange(len(pool))
    else:
      self._indices = np.sort(np.random.default_rng(seed).choice(
          len(pool), size=pool_size, replace=False))
    self._exclusion = _Exclusion()

  @property
  def query_set(self) -> list[int]:
    """Indices into the pool that demonstrations are drawn from."""
    return self._indices.tolist()

  def select(self, query: Example, k: int) -> list[Example]:
    """k distinct demonstrations for `query`, deterministic in (seed, query.id)."""
    if k == 0:
      return []
    digest = hashlib.sha256(f"{self.seed}\0{query.id}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    query_digest = query.image_digest()
    out: list[Example] = []
    for i in rng.permutation(len(self._indices)):
      candidate = self._pool[int(self._indices[i])]
      if self._exclusion.same(query, query_digest, candidate):
        continue
      out.append(candidate)
      if len(out) == k:
        return out
    raise _too_few(k, len(out), query, len(self._indices))


def embedding_cache_path(cache_dir: str, dataset: str, embedder: str) -> str:
  """`cache_dir/<dataset>.<embedder>.npy` (names made file-safe)."""
  safe = lambda s: re.sub(r"[^A-Za-z0-9._-]+", "_", s)
  return os.path.join(cache_dir, f"{safe(dataset)}.{safe(embedder)}.npy")


def _ids_digest(pool: Sequence[Example]) -> str:
  h = hashlib.sha256()
  for e in pool:
    h.update(e.id.encode() + b"\0")
  return h.hexdigest()


def _first_image(example: Example) -> bytes:
  images = example.images()
  if not images:
    raise ValueError(f"RICES needs images; example {example.id!r} has none")
  return images[0]


def embed_examples(examples: Sequence[Example], embed_fn: EmbedFn,
                   batch_size: int) -> np.ndarray:
  """L2-normalized embeddings [N, D] float32 of each example's first image, in batches."""
  chunks = []
  for start in range(0, len(examples), batch_size):
    batch = [_first_image(e) for e in examples[start:start + batch_size]]
    emb = np.asarray(embed_fn(batch), dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] != len(batch):
      raise ValueError(f"embed_fn returned shape {emb.shape} for {len(batch)} images; "
                       "expected [B, D]")
    chunks.append(emb)
  emb = np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)
  norms = np.linalg.norm(emb, axis=-1, keepdims=True)
  return emb / np.maximum(norms, 1e-12)


class Rices:
  """Retrieval-based in-context example selection by image-embedding cosine similarity."""

  def __init__(self, pool: Sequence[Example], embed_fn: EmbedFn, *,
               cache_path: str | None = None, batch_size: int = 64):
    """Args:
      pool: the demonstration pool (train split).
      embed_fn: encoded images (list of B bytes) -> [B, D] embeddings.
      cache_path: .npy file of the pool embeddings (see `embedding_cache_path`); loaded
        if present and made for this pool, else computed and written.
      batch_size: images per `embed_fn` call.
    """
    if not len(pool):
      raise ValueError("Rices needs a non-empty demonstration pool")
    self._pool = pool
    self._embed_fn = embed_fn
    self._batch_size = batch_size
    self._exclusion = _Exclusion()
    self.features = self._load_or_compute(cache_path)  # [P, D] float32, unit rows

  def _load_or_compute(self, cache_path: str | None) -> np.ndarray:
    ids = _ids_digest(self._pool)
    if cache_path and os.path.exists(cache_path):
      with open(cache_path + ".json", encoding="utf-8") as f:
        meta = json.load(f)
      if meta.get("count") != len(self._pool) or meta.get("ids_sha256") != ids:
        raise ValueError(f"RICES cache {cache_path} was made for another pool ({meta.get('count')} "
                         f"examples) than this one ({len(self._pool)}); delete it to recompute")
      return np.load(cache_path)
    features = embed_examples(self._pool, self._embed_fn, self._batch_size)
    if cache_path:
      os.makedirs(os.path.dirname(os.path.abspath(cache_path)), exist_ok=True)
      tmp = cache_path + ".tmp.npy"
      np.save(tmp, features)
      with open(cache_path + ".json", "w", encoding="utf-8") as f:
        json.dump({"count": len(self._pool), "ids_sha256": ids, "dim": int(features.shape[1])}, f)
      os.replace(tmp, cache_path)
    return features

  def select(self, queries: Sequence[Example], k: int) -> list[list[Example]]:
    """For each query, its k most similar pool examples, most similar LAST."""
    if k == 0:
      return [[] for _ in queries]
    query_features = embed_examples(queries, self._embed_fn, self._batch_size)
    sims = query_features @ self.features.T  # [Q, P]
    out = []
    for query, row in zip(queries, sims):
      query_digest = query.image_digest()
      chosen: list[Example] = []
      for j in np.argsort(-row, kind="stable"):  # ties: lower pool index first
        candidate = self._pool[int(j)]
        if self._exclusion.same(query, query_digest, candidate):
          continue
        chosen.append(candidate)
        if len(chosen) == k:
          break
      if len(chosen) < k:
        raise _too_few(k, len(chosen), query, len(self._pool))
      out.append(chosen[::-1])
    return out
