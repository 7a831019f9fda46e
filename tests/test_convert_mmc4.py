"""`prepare.py mmc4`: real MMC4 jsonl (text_list + image_info) with an image directory."""

import importlib.util
import io
import json
import os
import zipfile

from PIL import Image

from kosmos.data import records

from prepare_module import ROOT, prepare


def _image(i, fmt="JPEG"):
  out = io.BytesIO()
  Image.new("RGB", (9, 11), (i * 30 % 256, 10, 200)).save(out, format=fmt)
  return out.getvalue()


I0, I1, I2, I3, I4 = _image(0), _image(1, "PNG"), _image(2), _image(3), _image(4, "WEBP")


def _info(name, index, sim=0.3):
  return {"image_name": name, "raw_url": f"http://x/{name}", "matched_text_index": index,
          "matched_sim": sim}


def _write(tmp_path):
  images = tmp_path / "images"
  images.mkdir()
  for name, data in (("i0.jpg", I0), ("i1.png", I1), ("i2.jpg", I2), ("i3.jpg", I3),
                     ("i4.webp", I4), ("bad.jpg", b"not an image"), ("zero.jpg", b"")):
    (images / name).write_bytes(data)
  docs = [
      {"url": "http://doc/0", "text_list": ["S0.", "S1.", "S2."],
       "image_info": [_info("i0.jpg", 1), _info("i1.png", 1, 0.25), _info("i2.jpg", 2, 0.1)]},
      {"url": "http://doc/1", "text_list": ["Only", "two"],
       "image_info": [_info("gone.jpg", 0), _info("i3.jpg", 1)]},
      {"text_list": ["x"], "image_info": [_info("i4.webp", 5), _info("bad.jpg", 0)]},
      {"image_info": []},
      {"text_list": ["dup"], "image_info": [_info("i0.jpg", 0), _info("zero.jpg", 0)]},
  ]
  lines = [json.dumps(d).encode() for d in docs] + [b'{"text_list": ["caf\xe9"]}', b"{oops"]
  (tmp_path / "docs_shard_0_v2.jsonl").write_bytes(b"\n".join(lines) + b"\n")
  return images


def test_mmc4_before_and_after(tmp_path):
  images = _write(tmp_path)
  src = str(tmp_path / "docs_shard_0_v2.jsonl")
  out = tmp_path / "before"
  assert prepare.main(["mmc4", "--input", src, "--output", str(out), "--image-dir",
                       str(images), "--min-sim", "0.2"]) == 0
  got = list(records.read_dir(str(out)))
  assert [(r["id"], r["kind"], r["segments"]) for r in got] == [
      ("docs_shard_0_v2.jsonl:1", "interleaved",
       [{"text": "S0."}, {"image": I0}, {"image": I1}, {"text": "S1. S2."}]),
      ("docs_shard_0_v2.jsonl:2", "interleaved",
       [{"text": "Only"}, {"image": I3}, {"text": "two"}]),
  ]
  assert got[0]["meta"] == {"file": "docs_shard_0_v2.jsonl", "url": "http://doc/0"}
  assert records.read_manifest(str(out))["dropped"] == {
      "bad_position": 1, "corrupt_image": 1, "duplicate_image": 1, "empty_image": 1,
      "invalid_json": 1, "invalid_utf8": 1, "low_similarity": 1, "missing_field": 1,
      "missing_image": 1, "no_images": 2}
  after = tmp_path / "after"
  assert prepare.main(["mmc4", "--input", src, "--output", str(after), "--image-dir",
                       str(images), "--image-position", "after"]) == 0
  got = list(records.read_dir(str(after)))
  assert [r["segments"] for r in got[:2]] == [
      [{"text": "S0. S1."}, {"image": I0}, {"image": I1}, {"text": "S2."}, {"image": I2}],
      [{"text": "Only two"}, {"image": I3}]]


def test_mmc4_zip_shards_and_workers(tmp_path):
  images = _write(tmp_path)
  src = tmp_path / "zips"
  src.mkdir()
  for i in range(3):
    with zipfile.ZipFile(src / f"docs_shard_{i}_v2.jsonl.zip", "w") as z:
      z.writestr(f"docs_shard_{i}_v2.jsonl", json.dumps(
          {"text_list": [f"doc {i}", "end"],
           "image_info": [_info(f"i{i}.{'png' if i == 1 else 'jpg'}", 1)]}) + "\n")
  outs = []
  for workers in (1, 2):
    out = tmp_path / f"w{workers}"
    assert prepare.main(["mmc4", "--input", str(src), "--output", str(out), "--shards", "2",
                         "--image-dir", str(images), "--workers", str(workers)]) == 0
    outs.append([(r["id"], r["segments"]) for r in records.read_dir(str(out))])
  assert outs[0] == outs[1] == [
      (f"docs_shard_{i}_v2.jsonl.zip:docs_shard_{i}_v2.jsonl:1",
       [{"text": f"doc {i}"}, {"image": img}, {"text": "end"}])
      for i, img in enumerate((I0, I1, I2))]
