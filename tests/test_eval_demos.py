"""Demonstration selection: seeded random, RICES with a cached stand-in embedder, exclusion."""

import io
import os

import numpy as np
import pytest
from PIL import Image

from kosmos.eval import demos
from kosmos.eval import prompts
from kosmos.eval.tasks import Example


def png(color):
  buf = io.BytesIO()
  Image.new("RGB", (4, 4), color).save(buf, format="PNG")
  return buf.getvalue()


def example(i, color, **fields):
  return Example(id=str(i), fields={"caption": f"c{i}", **fields}, image_bytes=(png(color),))


class MeanColor:
  """Deterministic stand-in image embedder: the mean RGB of the decoded image. Counts calls."""

  def __init__(self):
    self.calls = []

  def __call__(self, images):
    self.calls.append(len(images))
    return np.stack([np.asarray(Image.open(io.BytesIO(b)), np.float32).mean(axis=(0, 1))
                     for b in images])


def test_effective_shots():
  assert demos.effective_shots(0) == 2
  assert demos.effective_shots(0, text_only_zero_shot=False) == 0
  assert demos.effective_shots(4) == 4
  with pytest.raises(ValueError, match="shots must be"):
    demos.effective_shots(-1)


def _pool(n):
  return [example(i, (i, 2 * i % 256, 7)) for i in range(n)]


def test_random_demos_are_deterministic_distinct_and_order_independent():
  pool = _pool(40)
  queries = [example(f"q{i}", (200, 200, i)) for i in range(6)]
  a = demos.RandomDemos(pool, seed=42, pool_size=20)
  b = demos.RandomDemos(pool, seed=42, pool_size=20)
  first = {q.id: [d.id for d in a.select(q, 4)] for q in queries}
  again = {q.id: [d.id for d in b.select(q, 4)] for q in reversed(queries)}
  assert first == again
  assert a.query_set == b.query_set and len(a.query_set) == 20
  allowed = {pool[i].id for i in a.query_set}
  for ids in first.values():
    assert len(set(ids)) == 4 and set(ids) <= allowed
  assert len({tuple(v) for v in first.values()}) > 1  # queries get different demos
  other = demos.RandomDemos(pool, seed=43, pool_size=20)
  assert {q.id: [d.id for d in other.select(q, 4)] for q in queries} != first
  assert a.select(queries[0], 0) == []


def test_random_demos_exclude_the_query_by_id_and_by_image():
  query = example(3, (50, 60, 70))
  same_image = Example(id="copy-of-3", fields={"caption": "x"}, image_bytes=query.image_bytes)
  pool = [example(0, (1, 1, 1)), example(1, (2, 2, 2)), query, same_image]
  for seed in range(10):
    chosen = demos.RandomDemos(pool, seed=seed).select(query, 2)
    assert sorted(d.id for d in chosen) == ["0", "1"]
  with pytest.raises(ValueError, match="only 2 of 3 demonstrations"):
    demos.RandomDemos(pool, seed=0).select(query, 3)


def test_random_demos_for_text_only_examples():
  pool = [Example(id=str(i), fields={"question": f"q{i}", "answer": "a"}) for i in range(5)]
  chosen = demos.RandomDemos(pool, seed=1).select(pool[0], 4)
  assert sorted(d.id for d in chosen) == ["1", "2", "3", "4"]


COLORS = {"red": (255, 0, 0), "orange": (200, 60, 0), "olive": (120, 120, 0),
          "green": (0, 255, 0), "blue": (0, 0, 255), "teal": (0, 120, 120)}


def test_rices_nearest_last_batched_and_cached(tmp_path):
  pool = [example(name, rgb) for name, rgb in COLORS.items()]
  query = example("q", (250, 5, 5))
  embed = MeanColor()
  cache = demos.embedding_cache_path(str(tmp_path / "rices"), "coco/train", "mean color")
  assert cache == str(tmp_path / "rices" / "coco_train.mean_color.npy")
  rices = demos.Rices(pool, embed, cache_path=cache, batch_size=4)
  assert embed.calls == [4, 2]  # the pool, in batches of <= 4
  np.testing.assert_allclose(np.linalg.norm(rices.features, axis=1), 1.0, rtol=1e-6)
  [chosen] = rices.select([query], 3)
  assert [d.id for d in chosen] == ["olive", "orange", "red"]  # most similar last
  # Green and blue tie for this query: the lower pool index ranks higher (nearer the end).
  assert [d.id for d in rices.select([query], 6)[0]] == [
      "blue", "green", "teal", "olive", "orange", "red"]
  # Brute-force check of a tie-free ranking with float64 cosine similarity.
  q = np.array([250, 5, 8], np.float64)
  cos = {n: q @ np.array(c) / np.linalg.norm(q) / np.linalg.norm(c) for n, c in COLORS.items()}
  assert [d.id for d in rices.select([example("q2", (250, 5, 8))], 6)[0]] == \
      sorted(cos, key=cos.get)
  # A second instance loads the cache: no pool embedding calls, only the query.
  embed2 = MeanColor()
  rices2 = demos.Rices(pool, embed2, cache_path=cache, batch_size=4)
  assert os.path.exists(cache) and embed2.calls == []
  np.testing.assert_array_equal(rices2.features, rices.features)
  assert [d.id for d in rices2.select([query, example("g", (0, 250, 9))], 2)[1]] == \
      ["teal", "green"]
  assert embed2.calls == [2]
  with pytest.raises(ValueError, match="made for another pool"):
    demos.Rices(pool[:5], MeanColor(), cache_path=cache)


def test_rices_excludes_query_by_id_and_image():
  pool = [example(name, rgb) for name, rgb in COLORS.items()]
  query = example("red", (255, 0, 0))  # same id and same image as pool's "red"
  copy = Example(id="red-copy", fields={"caption": "x"}, image_bytes=query.image_bytes)
  rices = demos.Rices(pool + [copy], MeanColor(), batch_size=8)
  [chosen] = rices.select([query], 2)
  assert [d.id for d in chosen] == ["olive", "orange"]


def test_zero_shot_uses_two_text_only_demos():
  pool = _pool(10)
  query = example("q", (9, 9, 9))
  chosen = demos.RandomDemos(pool, seed=0).select(query, demos.effective_shots(0))
  p = prompts.build_prompt(prompts.get_template("caption"), chosen, query,
                           text_only_demos=True)
  assert p.num_images == 1
  assert p.segments == [
      {"text": "".join(f"An image of c{d.id}\n" for d in chosen)},
      {"image": query.image_bytes[0]}, {"text": "An image of"}]
