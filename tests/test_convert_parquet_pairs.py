"""`prepare.py parquet-pairs`: real parquet files (binary and HF struct image columns)."""

import importlib.util
import io
import os

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from kosmos.data import records

from prepare_module import ROOT, prepare


def _image(i, fmt="JPEG"):
  out = io.BytesIO()
  Image.new("RGB", (12, 10), (i * 20 % 256, 100, 200)).save(out, format=fmt)
  return out.getvalue()


def _laion(path):
  images = [_image(0), _image(1, "PNG"), None, b"garbage", b"", _image(0), _image(2),
            _image(3), _image(4, "WEBP")]
  texts = ["zero", "one", "null image", "corrupt", "zero bytes", "duplicate of zero", None,
           "   ", "four"]
  table = pa.table({"jpg": pa.array(images, pa.binary()), "TEXT": pa.array(texts, pa.string()),
                    "url": [f"http://x/{i}" for i in range(9)],
                    "similarity": [0.1 * i for i in range(9)]})
  pq.write_table(table, path, row_group_size=4)
  return images


def _hf(path):
  images = [{"bytes": _image(10), "path": "a.jpg"}, {"bytes": None, "path": "b.jpg"},
            {"bytes": _image(11, "PNG"), "path": None}]
  table = pa.table({"image": pa.array(images, pa.struct([("bytes", pa.binary()),
                                                         ("path", pa.string())])),
                    "caption": ["hf zero", "hf missing bytes", "hf two"]})
  pq.write_table(table, path)


def test_parquet_pairs_binary_column(tmp_path):
  src = tmp_path / "laion"
  src.mkdir()
  images = _laion(src / "part-0.parquet")
  pq.write_table(pa.table({"other": [1, 2]}), src / "part-1.parquet")  # lacks the columns
  out = tmp_path / "out"
  assert prepare.main(["parquet-pairs", "--input", str(src), "--output", str(out),
                       "--image-column", "jpg", "--text-column", "text",
                       "--meta-columns", "url,similarity,absent", "--batch-size", "2"]) == 0
  got = list(records.read_dir(str(out)))
  assert [(r["id"], r["segments"][1]["text"]) for r in got] == [
      ("part-0.parquet:0", "zero"), ("part-0.parquet:1", "one"), ("part-0.parquet:8", "four")]
  assert [r["segments"][0]["image"] for r in got] == [images[0], images[1], images[8]]
  assert got[2]["meta"] == {"file": "part-0.parquet", "row": 8, "url": "http://x/8",
                            "similarity": 0.8}
  manifest = records.read_manifest(str(out))
  assert manifest["dropped"] == {"corrupt_image": 1, "duplicate_image": 1, "empty_image": 1,
                                 "empty_text": 1, "missing_column": 2, "missing_field": 1,
                                 "missing_image": 1}
  assert manifest["kinds"] == {"pair": 3}


def test_parquet_pairs_struct_column_and_row_group_shards(tmp_path):
  src = tmp_path / "mix"
  src.mkdir()
  _hf(src / "hf.parquet")
  _laion(src / "laion.parquet")
  outs = []
  for workers in (1, 2):
    out = tmp_path / f"w{workers}"
    # laion.parquet has 3 row groups, hf.parquet 1: 4 units over 4 shards.
    code = prepare.main(["parquet-pairs", "--input", str(src / "hf.parquet"),
                         "--output", str(out), "--shards", "4", "--workers", str(workers)])
    assert code == 0
    outs.append(out)
  got = list(records.read_dir(str(outs[0])))
  assert [(r["id"], r["segments"]) for r in got] == [
      ("hf.parquet:0", [{"image": _image(10)}, {"text": "hf zero"}]),
      ("hf.parquet:2", [{"image": _image(11, "PNG")}, {"text": "hf two"}])]
  assert records.read_manifest(str(outs[0]))["dropped"] == {"missing_image": 1}
  # Several row groups of one file are split over shards; output is independent of workers.
  for workers in (1, 2):
    out = tmp_path / f"rg{workers}"
    assert prepare.main(["parquet-pairs", "--input", str(src / "laion.parquet"),
                         "--output", str(out), "--shards", "3", "--workers", str(workers),
                         "--image-column", "jpg", "--text-column", "TEXT"]) == 0
  one, two = (records.read_manifest(str(tmp_path / f"rg{w}")) for w in (1, 2))
  assert len(one["shards"]) == 3 and one["shards"] == two["shards"]
  # Duplicates are found within a shard: row 5 repeats row 0's image, but rows 0-3 and 4-7
  # are different row groups, hence different shards, so row 5 is kept here.
  assert [r["id"] for r in records.read_dir(str(tmp_path / "rg1"))] == [
      "laion.parquet:0", "laion.parquet:1", "laion.parquet:5", "laion.parquet:8"]
  assert "duplicate_image" not in one["dropped"]
