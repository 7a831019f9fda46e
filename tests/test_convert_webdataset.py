"""`prepare.py webdataset`: real tar shards of key.{jpg,png,webp} + key.{txt,json}."""

import importlib.util
import io
import json
import os
import tarfile

import numpy as np
import pytest
from PIL import Image

from kosmos import defaults
from kosmos.data import images as pipeline_images
from kosmos.data import records

from image_files import encode, mp4, noise, png_1bit
from prepare_module import ROOT, prepare


def _image(color, fmt="JPEG", size=16):
  out = io.BytesIO()
  Image.new("RGB", (size, size), color).save(out, format=fmt)
  return out.getvalue()


def _tar(path, members, mode="w"):
  with tarfile.open(path, mode) as tar:
    for name, data in members:
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))


RED, BLUE, GREEN, GRAY = (_image((255, 0, 0)), _image((0, 0, 255), "PNG"),
                          _image((0, 255, 0), "WEBP"), _image((90, 90, 90)))


def _inputs(tmp_path):
  src = tmp_path / "shards"
  src.mkdir()
  _tar(src / "00000.tar", [
      ("000.jpg", RED), ("000.txt", b"  a red square \n"), ("000.json", b'{"url": "http://r"}'),
      ("001.png", BLUE), ("001.json", json.dumps({"caption": "blue", "url": "http://b"}).encode()),
      ("002.jpg", _image((1, 2, 3))), ("002.txt", b"   "),                 # empty_text
      ("003.jpg", b"\xff\xd8 not a jpeg"), ("003.txt", b"corrupt"),        # corrupt_image
      ("004.jpg", b""), ("004.txt", b"zero bytes"),                        # empty_image
      ("005.jpg", RED), ("005.txt", b"same image again"),                  # duplicate_image
      ("006.jpg", _image((4, 5, 6))), ("006.txt", b"caf\xe9"),             # invalid_utf8
      ("007.txt", b"caption without image"),                               # missing_image
      ("008.jpg", _image((7, 8, 9))), ("008.json", b"{broken"),           # invalid_json
      ("009.webp", _image((9, 9, 9), "WEBP")), ("009.json", b'{"alt": "x"}'),  # missing_field
      ("010.WEBP", GREEN), ("010.TXT", "grün".encode()),
      ("011.png", _image((3, 3, 3), "PNG", size=2)), ("011.txt", b"tiny"),  # image_too_small
      ("012.jpg", _image((5, 5, 5))[:-40]), ("012.txt", b"truncated"),     # corrupt_image
      ("part/013.jpeg", GRAY), ("part/013.txt", b"nested"), ("part/013.cls", b"7"),
  ])
  _tar(src / "00001.tar.gz", [("100.jpg", _image((0, 0, 0))), ("100.txt", b"from gzip")],
       mode="w:gz")
  full = io.BytesIO()
  with tarfile.open(fileobj=full, mode="w") as tar:
    for name, data in [("200.jpg", _image((20, 20, 20))), ("200.txt", b"before the cut"),
                       ("201.jpg", _image((21, 21, 21))), ("201.txt", b"lost")]:
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
  full.seek(0)
  with tarfile.open(fileobj=full) as tar:
    cut = tar.getmember("201.jpg").offset_data + 100
  (src / "00002.tar").write_bytes(full.getvalue()[:cut])  # ends inside member 201.jpg
  return src


def test_webdataset_records_and_drops(tmp_path):
  src = _inputs(tmp_path)
  out = tmp_path / "out"
  assert prepare.main(["webdataset", "--input", str(src), "--output", str(out),
                       "--min-image-size", "4"]) == 0
  got = list(records.read_dir(str(out)))
  assert [(r["id"], r["segments"][1]["text"]) for r in got] == [
      ("00000.tar/000", "a red square"), ("00000.tar/001", "blue"), ("00000.tar/010", "grün"),
      ("00000.tar/part/013", "nested"), ("00001.tar.gz/100", "from gzip"),
      ("00002.tar/200", "before the cut")]
  assert [r["segments"][0]["image"] for r in got[:4]] == [RED, BLUE, GREEN, GRAY]
  assert all(r["kind"] == "pair" and len(r["segments"]) == 2 for r in got)
  assert got[0]["meta"] == {"key": "000", "file": "00000.tar", "url": "http://r"}
  assert got[1]["meta"]["url"] == "http://b"
  manifest = records.read_manifest(str(out))
  assert manifest["dropped"] == {
      "corrupt_archive": 1, "corrupt_image": 2, "duplicate_image": 1, "empty_image": 1,
      "empty_text": 1, "image_too_small": 1, "invalid_json": 1, "invalid_utf8": 1,
      "missing_field": 1, "missing_image": 1}
  assert manifest["kinds"] == {"pair": 6}


def test_webdataset_json_captions_and_workers(tmp_path):
  src = tmp_path / "s"
  src.mkdir()
  for t in range(3):
    members = []
    for i in range(3):
      members += [(f"{t}{i}.json", json.dumps({"meta": {"alt": f"alt {t}{i}"}}).encode()),
                  (f"{t}{i}.jpg", _image((t * 40, i * 40, 7)))]
    _tar(src / f"{t:05d}.tar", members)
  outs = []
  for workers in (1, 2):
    out = tmp_path / f"w{workers}"
    assert prepare.main(["webdataset", "--input", str(src / "*.tar"), "--output", str(out),
                         "--shards", "3", "--caption-field", "meta/alt", "--text-from", "json",
                         "--workers", str(workers)]) == 0
    outs.append(out)
  got = [list(records.read_dir(str(out))) for out in outs]
  assert got[0] == got[1]
  assert [(r["id"], r["segments"][1]["text"]) for r in got[0]] == [
      (f"{t:05d}.tar/{t}{i}", f"alt {t}{i}") for t in range(3) for i in range(3)]
  assert [r["segments"][0]["image"] for r in got[0]] == [
      _image((t * 40, i * 40, 7)) for t in range(3) for i in range(3)]
  assert records.read_manifest(str(outs[1]))["shards"] == records.read_manifest(
      str(outs[0]))["shards"]


def _convert(tmp_path, members, *flags):
  src = tmp_path / "shards"
  src.mkdir(parents=True)
  _tar(src / "00000.tar", members)
  out = tmp_path / "out"
  assert prepare.main(["webdataset", "--input", str(src), "--output", str(out), *flags]) == 0
  return list(records.read_dir(str(out))), records.read_manifest(str(out))


def test_webdataset_keeps_phone_jpegs_with_data_after_the_image(tmp_path):
  motion, padded, video = encode(noise(1)), encode(noise(2)), mp4(200_000)
  mpo = encode(noise(3), "MPO", save_all=True, append_images=[Image.fromarray(noise(5))])
  cut = encode(noise(6)) + video
  got, manifest = _convert(tmp_path, [
      ("000.jpg", motion + video), ("000.txt", b"motion photo"),
      ("001.jpg", mpo), ("001.txt", b"multi-picture"),
      ("002.jpg", padded + b"\x00" * 8192), ("002.txt", b"zero padding"),
      ("003.jpg", cut[:len(cut) - len(video) - 300]), ("003.txt", b"truncated"),
      ("004.jpg", encode(noise(7))), ("004.txt", b"plain"),
  ])
  assert [r["segments"][1]["text"] for r in got] == ["motion photo", "multi-picture",
                                                     "zero padding", "plain"]
  stored = [r["segments"][0]["image"] for r in got]
  assert stored[0] == motion and stored[2] == padded  # the bytes after the end are cut off
  assert mpo.startswith(stored[1]) and len(stored[1]) < len(mpo)
  for image, original in zip(stored, (motion + video, mpo, padded + b"\x00" * 8192)):
    np.testing.assert_array_equal(pipeline_images.decode(image, 32),
                                  pipeline_images.decode(original, 32))
  assert manifest["dropped"] == {"corrupt_image": 1}


def test_webdataset_gif_members_count_as_unsupported_format(tmp_path):
  gif, jpg = encode(noise(7), "GIF"), encode(noise(8))
  got, manifest = _convert(tmp_path, [
      ("000.gif", gif), ("000.txt", b"a gif only"),
      ("001.gif", gif), ("001.jpg", jpg), ("001.txt", b"gif and jpg"),
      ("002.txt", b"no image at all"),
  ])
  assert [(r["id"], r["segments"][0]["image"]) for r in got] == [("00000.tar/001", jpg)]
  # data/README.md: `unsupported_image_format` (not JPEG/PNG/WebP, e.g. GIF, SVG)
  assert manifest["dropped"] == {"unsupported_image_format": 1, "missing_image": 1}


def test_webdataset_drops_images_the_pipeline_would_skip(tmp_path):
  over, at, small = png_1bit(8001, 8000), png_1bit(8000, 8000), encode(noise(9))
  members = [("000.png", over), ("000.txt", b"above the limit"),
             ("001.png", at), ("001.txt", b"at the limit"), ("002.jpg", small), ("002.txt", b"s")]
  got, manifest = _convert(tmp_path, members)
  assert [r["segments"][0]["image"] for r in got] == [at, small]
  assert manifest["dropped"] == {"image_too_large": 1}
  assert manifest["arguments"]["max_image_pixels"] == defaults.data().max_image_pixels
  with pytest.raises(pipeline_images.ImageError, match="8001x8000"):
    pipeline_images.decode(over, 16, defaults.data().max_image_pixels)
  got, manifest = _convert(tmp_path / "lower", members, "--max-image-pixels", str(40 * 56))
  assert [r["segments"][0]["image"] for r in got] == [small]
  assert manifest["dropped"] == {"image_too_large": 2}
