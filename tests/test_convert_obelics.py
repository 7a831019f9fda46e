"""`prepare.py obelics`: real OBELICS-layout parquet, images by URL in a dir or inline bytes."""

import hashlib
import importlib.util
import io
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from kosmos.data import records

from prepare_module import ROOT, prepare


def _image(i, fmt="JPEG"):
  out = io.BytesIO()
  Image.new("RGB", (10, 10), (i * 25 % 256, 50, 90)).save(out, format=fmt)
  return out.getvalue()


URL = {i: f"https://site{i}.example/path/to/img{i}.jpg?x=1" for i in range(10)}
CAT, SHA1, SHA256, STEM, OK4, OK5, A, B, C = (_image(i) for i in range(9))


def _image_dir(tmp_path):
  d = tmp_path / "images"
  d.mkdir()
  (d / "cat.jpg").write_bytes(CAT)  # basename of the URL
  (d / (hashlib.sha1(URL[1].encode()).hexdigest() + ".PNG")).write_bytes(SHA1)
  (d / (hashlib.sha256(URL[2].encode()).hexdigest() + ".webp")).write_bytes(SHA256)
  (d / "photo.jpeg").write_bytes(STEM)  # URL .../photo?size=2 -> stem + any extension
  (d / "bad.jpg").write_bytes(b"\xff\xd8\xff garbage")
  for name, data in (("ok4.jpg", OK4), ("ok5.jpg", OK5), ("a.jpg", A), ("b.jpg", B),
                     ("c.jpg", C)):
    (d / name).write_bytes(data)
  return d


def _docs():
  rows = [
      (["Intro", None, "Middle", None, "End"],
       [None, "http://h/cat.jpg", None, URL[1], None]),
      ([None, "text only"], ["http://h/missing.jpg", None]),            # no_images
      (["   ", None], [None, URL[2]]),                                 # empty_text
      (["a", "b"], [None]),                                            # misaligned_row
      (["A", None, "B", None, None],
       [None, "http://h/bad.jpg", None, "http://h/cat.jpg", "http://h/ok4.jpg"]),
      (["x", None, None], [None, None, "http://h/photo?size=2"]),      # bad_position
      (["many", None, None, None], [None, "h/a.jpg", "h/b.jpg", "h/c.jpg"]),
      (None, ["http://h/ok5.jpg"]),                                    # missing_field
  ]
  return pa.table({
      "texts": pa.array([r[0] for r in rows], pa.list_(pa.string())),
      "images": pa.array([r[1] for r in rows], pa.list_(pa.string())),
      "general_metadata": [json.dumps({"url": f"http://doc/{i}"}) for i in range(len(rows))],
  })


def test_obelics_image_dir(tmp_path):
  images = _image_dir(tmp_path)
  pq.write_table(_docs(), tmp_path / "obelics.parquet", row_group_size=3)
  out = tmp_path / "out"
  assert prepare.main(["obelics", "--input", str(tmp_path / "obelics.parquet"),
                       "--output", str(out), "--image-dir", str(images),
                       "--max-images-per-doc", "2"]) == 0
  got = list(records.read_dir(str(out)))
  assert [(r["id"], r["kind"], r["segments"]) for r in got] == [
      ("obelics.parquet:0", "interleaved",
       [{"text": "Intro"}, {"image": CAT}, {"text": "Middle"}, {"image": SHA1}, {"text": "End"}]),
      ("obelics.parquet:4", "interleaved", [{"text": "A\n\nB"}, {"image": OK4}]),
      ("obelics.parquet:5", "interleaved", [{"text": "x"}, {"image": STEM}]),
      ("obelics.parquet:6", "interleaved", [{"text": "many"}, {"image": A}, {"image": B}]),
  ]
  assert got[0]["meta"] == {"file": "obelics.parquet", "row": 0,
                            "general_metadata": '{"url": "http://doc/0"}'}
  assert records.read_manifest(str(out))["dropped"] == {
      "bad_position": 1, "corrupt_image": 1, "duplicate_image": 1, "empty_text": 1,
      "misaligned_row": 1, "missing_field": 1, "missing_image": 1, "no_images": 1,
      "too_many_images": 1}
  # --keep-text-only keeps the image-less document as kind=text; 'drop' drops row 6.
  out2 = tmp_path / "out2"
  assert prepare.main(["obelics", "--input", str(tmp_path / "obelics.parquet"),
                       "--output", str(out2), "--image-dir", str(images), "--keep-text-only",
                       "--max-images-per-doc", "2", "--too-many-images", "drop"]) == 0
  got2 = {r["id"]: r for r in records.read_dir(str(out2))}
  assert got2["obelics.parquet:1"]["kind"] == "text"
  assert got2["obelics.parquet:1"]["segments"] == [{"text": "text only"}]
  assert "obelics.parquet:6" not in got2
  assert records.read_manifest(str(out2))["dropped"]["too_many_images"] == 1


def test_obelics_inline_bytes_and_workers(tmp_path):
  binary_struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
  table = pa.table({
      "texts": pa.array([["t0", None], [None, "t1", None]], pa.list_(pa.string())),
      "images": pa.array([[None, "u0"], ["u1", None, "u2"]], pa.list_(pa.string())),
      "image_bytes": pa.array([[None, {"bytes": A, "path": None}],
                               [{"bytes": B, "path": None}, None, {"bytes": b"", "path": None}]],
                              pa.list_(binary_struct)),
  })
  src = tmp_path / "src"
  src.mkdir()
  for i in range(3):
    pq.write_table(table, src / f"f{i}.parquet")
  outs = []
  for workers in (1, 2):
    out = tmp_path / f"w{workers}"
    assert prepare.main(["obelics", "--input", str(src), "--output", str(out), "--shards", "3",
                         "--image-bytes-column", "image_bytes", "--workers", str(workers)]) == 0
    outs.append([(r["id"], r["segments"]) for r in records.read_dir(str(out))])
  assert outs[0] == outs[1]
  # Each file is its own shard, so images repeat across files but not within one.
  assert outs[0] == [x for i in range(3) for x in [
      (f"f{i}.parquet:0", [{"text": "t0"}, {"image": A}]),
      (f"f{i}.parquet:1", [{"image": B}, {"text": "t1"}])]]
  assert records.read_manifest(str(tmp_path / "w2"))["dropped"] == {"empty_image": 3}
