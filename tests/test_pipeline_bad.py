"""Bad input never stops the pipeline or costs good data; it is counted by reason and source."""

from __future__ import annotations

import io
import os
import re

import numpy as np
import pytest
from array_record.python import array_record_module
from PIL import Image

from kosmos.data import packing, records
from test_pipeline import TOK, data_config, image_bytes, make, take, write_source

GOOD = (0, 90, 180)


def jpeg(size=(16, 16)) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(np.random.default_rng(1).integers(0, 255, (size[1], size[0], 3),
                                                    dtype=np.uint8)).save(buf, "JPEG")
  return buf.getvalue()


def write_mixed_quality(directory: str) -> tuple[set[int], set[int]]:
  """A pair source and an interleaved source with every kind of bad input; returns the codes
  of records that must come through (pairs, interleaved)."""
  bomb = io.BytesIO()
  Image.new("L", (2000, 2000), 0).save(bomb, "PNG")
  bad_images = {"image_empty": b"", "image_corrupt": b"GIF89a-not-really" * 5,
                "image_truncated": jpeg((64, 64))[:len(jpeg((64, 64))) // 2], "image_too_large": bomb.getvalue()}
  pair_dir, inter_dir = os.path.join(directory, "pair"), os.path.join(directory, "inter")
  os.makedirs(pair_dir)
  os.makedirs(inter_dir)
  good_pairs, good_inter = set(), set()
  path = os.path.join(pair_dir, records.shard_name("pair", 0, 1))
  writer = array_record_module.ArrayRecordWriter(path, "group_size:1")
  code = 0
  for i in range(20):  # 20 good pairs, 4 with bad images, 2 undecodable records
    code += 1
    writer.write(records.encode({"id": str(code), "source": "p", "kind": "pair", "segments": [
        {"image": image_bytes(GOOD)}, {"text": f"[r={code}] a good pair"}]}))
    good_pairs.add(code)
    if i < 4:
      code += 1
      reason, data = list(bad_images.items())[i]
      writer.write(records.encode({"id": str(code), "source": "p", "kind": "pair", "segments": [
          {"image": data}, {"text": f"[r={code}] {reason}"}]}))
    if i < 2:
      writer.write(b"\x93not msgpack at all" if i == 0 else b"\x81\xa1x\x01")
  writer.close()
  with records.ShardWriter(os.path.join(inter_dir, records.shard_name("inter", 0, 1))) as w:
    for i in range(12):  # each has one good image; 4 also carry one bad image (kept, minus it)
      code += 1
      segments = [{"text": f"[r={code}] before"}, {"image": image_bytes(GOOD)}]
      if i < 4:
        segments += [{"text": "bad next"}, {"image": list(bad_images.values())[i]}]
      segments += [{"text": "the end"}]
      w.write({"id": str(code), "source": "i", "kind": "interleaved", "segments": segments})
      good_inter.add(code)
  return good_pairs, good_inter


@pytest.fixture(scope="module")
def bad_dirs(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("bad"))
  good_pairs, good_inter = write_mixed_quality(root)
  return ({"pair": os.path.join(root, "pair"), "interleaved": os.path.join(root, "inter")},
          good_pairs, good_inter)


def run_epochs(dirs, **overrides):
  data = data_config(dirs, max_image_pixels=1_000_000, max_bad_fraction=0.5,
                     bad_check_min_records=10, **overrides)
  it = iter(make(data))
  totals, seen = {}, set()
  for batch in take(it, 40):
    for key, value in batch["data_stats"].items():
      totals[key] = totals.get(key, 0) + value
    for b in range(batch["tokens"].shape[0]):
      for s in range(1, batch["segment_ids"][b].max() + 1):
        doc = batch["tokens"][b][batch["segment_ids"][b] == s]
        seen |= {int(c) for c in re.findall(r"\[r=(\d+)\]", TOK.decode(doc))}
        n_images = int((doc == TOK.image_start_id).sum())
        assert n_images <= 1  # bad images never leave a span behind
    used = batch["image_mask"]
    assert np.all(batch["images"][used].reshape(-1, 3).mean(0) == GOOD)
  return totals, seen


def test_bad_records_and_images_are_skipped_counted_and_cost_nothing(bad_dirs):
  dirs, good_pairs, good_inter = bad_dirs
  totals, seen = run_epochs(dirs)
  assert good_pairs | good_inter <= seen  # every good record (and repaired one) came through
  assert not seen - good_pairs - good_inter  # no bad pair leaked into the batches
  epochs_p = totals["pair/records"] / 26
  epochs_i = totals["interleaved/records"] / 12
  assert epochs_p >= 1 and epochs_i >= 1
  # counts are per epoch times the number of epochs read (records are counted when consumed)
  ratio_p = {k.split("/", 1)[1]: v / epochs_p for k, v in totals.items()
             if k.startswith("pair/") and v}
  assert set(ratio_p) == {"records", "bad_records", "record_undecodable", "pair_without_image",
                          "image_empty", "image_corrupt", "image_truncated", "image_too_large"}
  assert totals["pair/record_undecodable"] / totals["pair/records"] == pytest.approx(2 / 26,
                                                                                     abs=0.03)
  assert totals["pair/pair_without_image"] == sum(
      totals[f"pair/image_{r}"] for r in ("empty", "corrupt", "truncated", "too_large"))
  assert totals["pair/bad_records"] == (totals["pair/pair_without_image"]
                                        + totals["pair/record_undecodable"])
  inter = {k.split("/", 1)[1] for k, v in totals.items() if k.startswith("interleaved/") and v}
  assert inter == {"records", "bad_records", "image_empty", "image_corrupt", "image_truncated",
                   "image_too_large"}
  assert totals["interleaved/bad_records"] / totals["interleaved/records"] == pytest.approx(
      4 / 12, abs=0.1)


def test_bad_fraction_stop_names_the_source(bad_dirs, tmp_path):
  dirs, _, _ = bad_dirs
  write_source(str(tmp_path / "clean"), "text", 40, seed=5)
  data = data_config({"text": str(tmp_path / "clean"), "interleaved": dirs["interleaved"]},
                     max_image_pixels=1_000_000, max_bad_fraction=0.1, bad_check_min_records=10)
  it = iter(make(data))
  with pytest.raises(packing.BadDataError, match=r"data source 'interleaved': \d+ of \d+ "
                     r"records were bad .*max_bad_fraction=0.1"):
    take(it, 50)
  data.max_bad_fraction = 0.5  # the same data under a looser limit runs
  take(iter(make(data)), 50)
