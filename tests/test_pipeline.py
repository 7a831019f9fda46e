"""The Grain pipeline's batch contract, packing invariants and mixing proportions.

Records are real ArrayRecord shards (kosmos.data.records.ShardWriter) with real PNG/JPEG
images; the byte tokenizer (config.tokenizer.path = "") keeps text decodable in asserts.
Each interleaved image is a solid colour whose code also appears as text "[c=CODE]" just
before it, so the k-th image of a row can be matched to the k-th image span.
"""

from __future__ import annotations

import dataclasses
import io
import os
import re

import grain
import numpy as np
import pytest
from PIL import Image

from kosmos import defaults
from kosmos.data import packing, pipeline, records
from kosmos.data import tokenizer as tokenizer_lib

N = 4  # tokens per image
S = 8  # image size
TOK = tokenizer_lib.ByteTokenizer()


def code_color(code: int) -> tuple[int, int, int]:
  return (code % 7) * 36, (code // 7 % 7) * 36, (code // 49 % 7) * 36


def image_bytes(color, size=(12, 10), fmt="PNG") -> bytes:
  buf = io.BytesIO()
  Image.new("RGB", size, color).save(buf, fmt)
  return buf.getvalue()


def write_source(directory: str, kind: str, n: int, seed: int, shards: int = 2,
                 text_len=(3, 60)) -> list[dict]:
  """Writes n records of one kind; returns them."""
  rng = np.random.default_rng(seed)
  os.makedirs(directory, exist_ok=True)
  out = []
  for i in range(n):
    words = " ".join(f"w{rng.integers(0, 50)}" for _ in range(int(rng.integers(*text_len))))
    code = seed * 1000 + i
    if kind == "text":
      segments = [{"text": f"[r={code}] {words}"}]
    elif kind == "pair":
      segments = [{"text": f"[r={code}] {words[:40]}"},
                  {"image": image_bytes(code_color(code), fmt="JPEG")}]
    else:
      segments = [{"text": f"[r={code}] "}]
      for j in range(int(rng.integers(1, 4))):
        c = (code * 4 + j) % 343
        segments += [{"text": f"{words[:30]} [c={c}]"}, {"image": image_bytes(code_color(c))}]
    out.append({"id": str(code), "source": kind, "kind": kind, "segments": segments})
  per = -(-n // shards)
  for s in range(shards):
    path = os.path.join(directory, records.shard_name(kind, s, shards))
    with records.ShardWriter(path) as w:
      for record in out[s * per:(s + 1) * per]:
        w.write(record)
  return out


WEIGHTS = {"text": 0.5, "pair": 0.5, "interleaved": 0.2}  # KOSMOS-1 token shares


@pytest.fixture(scope="module")
def source_dirs(tmp_path_factory):
  root = tmp_path_factory.mktemp("records")
  for seed, (kind, n) in enumerate([("text", 120), ("pair", 120), ("interleaved", 60)]):
    write_source(str(root / kind), kind, n, seed + 1)
  return {kind: str(root / kind) for kind in WEIGHTS}


def data_config(dirs, **overrides):
  data = defaults.data()
  data.seq_len = 128
  data.global_batch_size = 4
  data.max_images_per_row = 4
  data.sources = {k: {"path": dirs[k], "kind": k, "weight": WEIGHTS[k]} for k in dirs}
  data.update(overrides)
  return data


def make(data, **kw):
  return pipeline.make_dataset(data, defaults.tokenizer(), image_size=S, tokens_per_image=N, **kw)


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


def test_batch_contract(source_dirs):
  batch = next(iter(make(data_config(source_dirs))))
  B, L, M = 4, 128, 4
  expected = {"tokens": ((B, L), np.int32), "targets": ((B, L), np.int32),
              "loss_mask": ((B, L), np.float32), "segment_ids": ((B, L), np.int32),
              "positions": ((B, L), np.int32), "kind_ids": ((B, L), np.int8),
              "images": ((B, M, S, S, 3), np.uint8), "image_mask": ((B, M), np.bool_)}
  stats = batch.pop("data_stats")
  assert set(batch) == set(expected)
  for key, (shape, dtype) in expected.items():
    assert batch[key].shape == shape and batch[key].dtype == dtype, key
  assert set(stats) == {f"{k}/{c}" for k in WEIGHTS for c in packing.STATS}
  assert sum(stats[f"{k}/records"] for k in WEIGHTS) > 0


def check_row(row: dict, n_images_expected=None):
  """Every packing invariant of one row; returns [(segment, span code or None, image)]."""
  tokens, targets, mask = row["tokens"], row["targets"], row["loss_mask"]
  seg, pos = row["segment_ids"], row["positions"]
  L = len(tokens)
  used = int((seg > 0).sum())
  assert np.all(seg[:used] > 0) and np.all(seg[used:] == 0), "padding only at the end"
  assert np.all(np.diff(seg[:used]) >= 0) and np.all(np.diff(seg[:used]) <= 1)
  assert seg[0] == 1 or used == 0
  assert np.all(tokens[used:] == 0) and np.all(targets[used:] == 0) and np.all(mask[used:] == 0)
  assert np.all(row["kind_ids"][used:] == 0) and np.all(row["kind_ids"][:used] > 0)
  spans = []
  for s in range(1, seg.max() + 1):
    idx = np.flatnonzero(seg == s)
    doc = tokens[idx]
    np.testing.assert_array_equal(pos[idx], np.arange(len(idx)))
    np.testing.assert_array_equal(targets[idx][:-1], doc[1:])
    assert targets[idx][-1] == 0 and mask[idx][-1] == 0
    slot_target = np.isin(doc[1:], [TOK.image_slot_id, TOK.vector_slot_id])
    np.testing.assert_array_equal(mask[idx][:-1], np.where(slot_target, 0.0, 1.0))
    # image spans are whole: <image> N slots </image>
    starts = np.flatnonzero(doc == TOK.image_start_id)
    assert len(starts) == int((doc == TOK.image_end_id).sum())
    assert int((doc == TOK.image_slot_id).sum()) == N * len(starts)
    for st in starts:
      assert st + N + 1 < len(doc)
      assert np.all(doc[st + 1:st + 1 + N] == TOK.image_slot_id)
      assert doc[st + N + 1] == TOK.image_end_id
      text = TOK.decode(doc[:st])
      codes = re.findall(r"\[c=(\d+)\]", text)
      spans.append(int(codes[-1]) if codes and text.rstrip().endswith("]") else None)
  k = len(spans)
  assert row["image_mask"].sum() == k and np.all(row["image_mask"][:k])
  assert np.all(row["images"][k:] == 0)
  return spans


def test_packing_invariants_and_image_order(source_dirs):
  it = iter(make(data_config(source_dirs)))
  matched = 0
  for batch in take(it, 30):
    for b in range(batch["tokens"].shape[0]):
      row = {k: v[b] for k, v in batch.items() if k != "data_stats"}
      for k, code in enumerate(check_row(row)):
        if code is not None:  # interleaved: the colour of image k encodes its text's code
          np.testing.assert_allclose(row["images"][k].reshape(-1, 3).mean(0), code_color(code),
                                     atol=0.5)
          matched += 1
  assert matched > 20


def test_pair_is_image_then_caption(source_dirs):
  data = data_config({"pair": source_dirs["pair"]})
  batch = next(iter(make(data)))
  row = batch["tokens"][0]
  seg = batch["segment_ids"][0]
  doc = row[seg == 1]
  assert list(doc[:2]) == [TOK.bos_id, TOK.image_start_id]
  assert doc[N + 2] == TOK.image_end_id and TOK.decode(doc[N + 3:]).startswith("[r=")
  assert doc[-1] == TOK.eos_id
  code = int(re.match(r"\[r=(\d+)\]", TOK.decode(doc[N + 3:])).group(1))
  np.testing.assert_allclose(batch["images"][0, 0].reshape(-1, 3).mean(0), code_color(code),
                             atol=3)  # JPEG


def test_pipeline_without_image_boundaries(source_dirs):
  """A tokenizer with no <image> / </image> (LLaVA): a pair is <s>, N slots, its caption."""
  tokenizer = defaults.tokenizer()
  tokenizer.update(image_start_id=-1, image_end_id=-1)
  batch = next(iter(pipeline.make_dataset(data_config(source_dirs), tokenizer, image_size=S,
                                          tokens_per_image=N)))
  assert not np.isin(batch["tokens"], [TOK.image_start_id, TOK.image_end_id]).any()
  slots = batch["tokens"] == TOK.image_slot_id
  assert slots.sum() == N * batch["image_mask"].sum() > 0
  pair = {"pair": source_dirs["pair"]}
  batch = next(iter(pipeline.make_dataset(data_config(pair), tokenizer, image_size=S,
                                          tokens_per_image=N)))
  doc = batch["tokens"][0][batch["segment_ids"][0] == 1]
  assert doc[0] == TOK.bos_id and (doc[1:N + 1] == TOK.image_slot_id).all()
  assert TOK.decode(doc[N + 1:]).startswith("[r=")


def test_mixing_matches_token_weights(source_dirs):
  it = iter(make(data_config(source_dirs, global_batch_size=2)))
  counts = np.zeros(4)
  effs = []
  for batch in take(it, 200):
    counts += np.bincount(batch["kind_ids"].ravel(), minlength=4)
    effs.append(pipeline.packing_efficiency(batch))
  share = counts[1:] / counts[1:].sum()
  want = np.array([WEIGHTS["text"], WEIGHTS["pair"], WEIGHTS["interleaved"]]) / 1.2
  np.testing.assert_allclose(share, want, atol=0.02)
  assert np.mean(effs) > 0.9


def _docs(lengths, image_at=(), n=N):
  """Synthetic docs with distinct token values (so pieces can be traced back)."""
  out, value = [], 100
  for i, length in enumerate(lengths):
    tokens = list(range(value, value + length))
    value += length
    n_img = 0
    for at in image_at[i] if i < len(image_at) else ():
      tokens[at:at] = [TOK.image_start_id] + [TOK.image_slot_id] * n + [TOK.image_end_id]
      n_img += 1
    out.append(dict(tokens=np.array(tokens, np.int32),
                    images=np.full((n_img, S, S, 3), i, np.uint8),
                    vectors=np.zeros((0, 0), np.float32), kind=packing.KIND_IDS["interleaved"],
                    stats=np.zeros((1, len(packing.STATS)), np.int64)))
  return out


def test_packer_splits_long_docs_outside_image_spans_and_drops_nothing():
  docs = _docs([300, 40, 70, 9, 150], image_at=[(10, 60, 100, 150), (), (30,), (), (5,)])
  spec = packing.PackSpec(seq_len=64, max_images=2, image_size=S, bins=3, min_piece=8)
  ds = packing.PackIterDataset(grain.MapDataset.source(docs).to_iter_dataset(), spec)
  rows = list(ds)
  pieces = []
  for row in rows:
    check_row(row)
    for s in range(1, row["segment_ids"].max() + 1):
      pieces.append(row["tokens"][row["segment_ids"] == s])
  got = np.concatenate(pieces)
  want = np.concatenate([d["tokens"] for d in docs])
  # every token delivered exactly once, text tokens in order within each original doc
  assert sorted(got[got >= 100].tolist()) == sorted(want[want >= 100].tolist())
  assert int((got == TOK.image_start_id).sum()) == 6
  for d in docs:
    text = d["tokens"][d["tokens"] >= 100]
    seen = got[np.isin(got, text)]
    np.testing.assert_array_equal(seen, text)
  # image k of a row is its k-th span: images carry their doc index as pixel value
  for row in rows:
    owner = []
    for s in range(1, row["segment_ids"].max() + 1):
      doc = row["tokens"][row["segment_ids"] == s]
      for st in np.flatnonzero(doc == TOK.image_start_id):
        nxt = doc[st + N + 2:][doc[st + N + 2:] >= 100]
        prv = doc[:st][doc[:st] >= 100]
        ref = prv[-1] if len(prv) else nxt[0]
        owner.append(next(i for i, d in enumerate(docs) if ref in d["tokens"]))
    np.testing.assert_array_equal(row["images"][:len(owner), 0, 0, 0], owner)
  assert np.mean([(r["segment_ids"] > 0).mean() for r in rows]) > 0.8


@pytest.mark.parametrize("start,end", [(-1, -1), (TOK.image_start_id, -1)])
def test_packer_finds_spans_without_boundary_tokens(start, end):
  """LLaVA's layout (slots alone) and one without </image>: the spans are the slots in runs
  of N (two adjacent images make one run of 2N), never cut, counted as images."""
  span = [start] * (start >= 0) + [TOK.image_slot_id] * N + [end] * (end >= 0)
  docs = _docs([300, 40, 70, 150])
  for doc, at in zip(docs, [(10, 10, 60, 150), (), (30,), (5,)]):
    tokens = doc["tokens"].tolist()
    for a in sorted(at, reverse=True):
      tokens[a:a] = span
    doc.update(tokens=np.array(tokens, np.int32), images=np.zeros((len(at), S, S, 3), np.uint8))
  spec = packing.PackSpec(seq_len=64, max_images=2, image_size=S, bins=3, min_piece=8,
                          image_start_id=start, image_end_id=end, tokens_per_image=N)
  rows = list(packing.PackIterDataset(grain.MapDataset.source(docs).to_iter_dataset(), spec))
  images = 0
  for row in rows:
    k = 0
    for s in range(1, row["segment_ids"].max() + 1):
      doc = row["tokens"][row["segment_ids"] == s]
      slots = np.flatnonzero(doc == TOK.image_slot_id)
      runs = slots.reshape(-1, N)  # fails unless whole spans
      assert (np.diff(runs, axis=1) == 1).all()
      if start >= 0:
        assert (doc[runs[:, 0] - 1] == start).all()
      k += len(runs)
    assert row["image_mask"].sum() == k
    images += k
  got = np.concatenate([r["tokens"][r["segment_ids"] > 0] for r in rows])
  want = np.concatenate([d["tokens"] for d in docs])
  assert images == 6 and sorted(got[got >= 100].tolist()) == sorted(want[want >= 100].tolist())
  with pytest.raises(ValueError, match="tokens_per_image"):
    list(packing.PackIterDataset(grain.MapDataset.source(docs).to_iter_dataset(),
                                 dataclasses.replace(spec, tokens_per_image=0)))


def test_process_shards_are_disjoint(source_dirs):
  data = data_config({"text": source_dirs["text"]}, global_batch_size=2)
  seen = []
  for p in range(2):
    it = iter(make(data, process_index=p, process_count=2))
    codes = set()
    for batch in take(it, 12):
      for row in batch["tokens"]:
        codes |= set(re.findall(r"\[r=(\d+)\]", TOK.decode(row)))
    seen.append(codes)
  assert seen[0] and seen[1] and not seen[0] & seen[1]


def test_config_errors_name_the_value(source_dirs):
  with pytest.raises(ValueError, match="global_batch_size=4 does not divide"):
    make(data_config(source_dirs), process_index=0, process_count=3)
  with pytest.raises(ValueError, match="kind='video'"):
    data = data_config(source_dirs)
    data.sources.text.kind = "video"
    make(data)
  with pytest.raises(ValueError, match="seq_len=7"):
    make(data_config(source_dirs, seq_len=7))


def test_vectors_fill_vector_slots_in_order(tmp_path):
  directory = tmp_path / "vec"
  os.makedirs(directory)
  with records.ShardWriter(str(directory / records.shard_name("v", 0, 1))) as w:
    for i in range(10):
      w.write({"id": str(i), "source": "v", "kind": "interleaved", "segments": [
          {"text": f"[r={i}] state"}, {"vector": [i, 1.0, 2.0]}, {"text": "then"},
          {"vector": [i, 3.0, 4.0]}, {"image": image_bytes((9, 9, 9))}, {"text": "end"}]})
  data = data_config({"interleaved": str(directory)}, max_vectors_per_row=4, vector_dim=3)
  batch = next(iter(make(data)))
  assert batch["vectors"].shape == (4, 4, 3) and batch["vectors"].dtype == np.float32
  assert batch["vector_mask"].shape == (4, 4) and batch["vector_mask"].dtype == np.bool_
  for b in range(4):
    row = {k: v[b] for k, v in batch.items() if k != "data_stats"}
    check_row(row)
    slots = np.flatnonzero(row["tokens"] == TOK.vector_slot_id)
    k = len(slots)
    assert k <= 4 and row["vector_mask"].sum() == k and np.all(row["vector_mask"][:k])
    for j, at in enumerate(slots):  # the record code precedes each of its vectors
      seg = row["segment_ids"][at]
      before = row["tokens"][:at][row["segment_ids"][:at] == seg]
      codes = re.findall(r"\[r=(\d+)\]", TOK.decode(before))
      if codes:
        assert row["vectors"][j, 0] == int(codes[-1])
      assert row["vectors"][j, 1] in (1.0, 3.0)
