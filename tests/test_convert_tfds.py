"""`prepare.py tfds`: a real TFDS dataset built locally in ArrayRecord format (no download)."""

import importlib.util
import io
import os

import numpy as np
import pytest
from PIL import Image

from kosmos.data import records

tfds = pytest.importorskip("tensorflow_datasets")

from prepare_module import ROOT, prepare
NAME = "kosmos_convert_test_caps"


def _pixels(i):
  return np.full((10, 8, 3), (i * 30, 255 - i * 30, 7), np.uint8)


# (id, image index, captions); id 5 repeats id 0's image, id 3 has only blank captions.
EXAMPLES = [(0, 0, ["zero a", "zero b"]), (1, 1, ["one"]), (2, 2, ["", "two b"]),
            (3, 3, ["  "]), (4, 4, ["four a", "four b", "four c"]), (5, 0, ["five"])]


class KosmosConvertTestCaps(tfds.core.GeneratorBasedBuilder):
  """COCO-captions-like: image + Sequence({'text'}) + id."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3)),
        "captions": tfds.features.Sequence({"text": tfds.features.Text()}),
        "id": np.int64}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    for ex_id, image, captions in EXAMPLES:
      yield ex_id, {"image": _pixels(image), "captions": {"text": captions}, "id": ex_id}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("tfds"))
  KosmosConvertTestCaps(data_dir=path, file_format="array_record").download_and_prepare()
  return path


def _run(data_dir, out, *flags):
  return prepare.main(["tfds", "--input", NAME, "--data-dir", data_dir, "--output", str(out),
                       "--meta-features", "id", *flags])


def _decode(data):
  with Image.open(io.BytesIO(data)) as image:
    return image.format, np.asarray(image.convert("RGB"))


def test_tfds_first_caption(data_dir, tmp_path):
  out = tmp_path / "first"
  assert _run(data_dir, out) == 0
  got = list(records.read_dir(str(out)))
  order = [int(ex["id"]) for ex in tfds.data_source(NAME, split="train", data_dir=data_dir)]
  # One record per example in source index order, except id 3 (blank captions) and whichever
  # of ids 0 and 5 (same image) comes second.
  dup = 5 if order.index(0) < order.index(5) else 0
  expected_ids = [i for i in order if i not in (3, dup)]
  assert [r["meta"]["id"] for r in got] == expected_ids
  assert [r["id"] for r in got] == [f"{NAME}/train/{order.index(i)}" for i in expected_ids]
  first = {0: "zero a", 1: "one", 2: "two b", 4: "four a", 5: "five"}
  for r in got:
    ex_id = r["meta"]["id"]
    assert r["kind"] == "pair" and r["segments"][1] == {"text": first[ex_id]}
    fmt, pixels = _decode(r["segments"][0]["image"])
    assert fmt == "PNG" and np.array_equal(pixels, _pixels(EXAMPLES[ex_id][1]))
  assert records.read_manifest(str(out))["dropped"] == {"duplicate_image": 1, "empty_text": 2}


def test_tfds_all_captions_jpeg_and_workers(data_dir, tmp_path):
  outs = []
  for workers in (1, 2):
    out = tmp_path / f"w{workers}"
    assert _run(data_dir, out, "--captions", "all", "--image-encoding", "jpeg",
                "--examples-per-unit", "2", "--shards", "3", "--workers", str(workers)) == 0
    outs.append(list(records.read_dir(str(out))))
  assert outs[0] == outs[1]
  manifest = records.read_manifest(str(tmp_path / "w1"))
  assert len(manifest["shards"]) == 3
  got = outs[0]
  # Shards hold 2 examples each, so ids 0 and 5 are deduplicated only if they share a shard.
  by_id = {}
  for r in got:
    by_id.setdefault(r["meta"]["id"], []).append(r["segments"][1]["text"])
    assert _decode(r["segments"][0]["image"])[0] == "JPEG"
    assert r["id"].rsplit("#", 1)[1].isdigit()
  assert by_id[4] == ["four a", "four b", "four c"] and by_id[2] == ["two b"]
  assert 3 not in by_id
  assert manifest["dropped"]["empty_text"] == 2
