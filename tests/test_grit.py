"""`prepare.py grit` on real GRIT-layout parquet and jsonl, and the pipeline's grounded captions.

The files follow GRIT-20M's published rows (zzliang/GRIT on the Hugging Face hub): caption,
width, height, `noun_chunks` / `ref_exps` as [start, end, x1, y1, x2, y2, score] normalised.
Checks the records' `meta.boxes`, the drop counts per bad-box reason, and that the pipeline
moves boxes onto the resized, centre-cropped image, drops the cropped-out ones (counted) and
renders the rest as the location tokens worked out by hand here.
"""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from kosmos import defaults
from kosmos.data import grounding
from kosmos.data import packing
from kosmos.data import pipeline
from kosmos.data import records

from prepare_module import prepare

CAPTION = "a cat sleeping on a red sofa near the window"  # [0, 5) [18, 28) [38, 44)


def png(width: int, height: int, shade: int) -> bytes:
  out = io.BytesIO()
  Image.new("RGB", (width, height), (shade, 80, 160)).save(out, format="PNG")
  return out.getvalue()


ROWS = [  # (caption, noun_chunks, ref_exps)
    (CAPTION,
     [[0, 5, 0.1, 0.2, 0.5, 0.9, 0.8], [18, 28, 0.3, 0.5, 1.0, 1.0, 0.7],
      [0, 5, 0.6, 0.1, 0.7, 0.3, 0.5]],  # a second box of "a cat"
     [[0, 28, 0.1, 0.2, 1.0, 1.0, 0.6],  # overlaps both chunks: dropped
      [38, 44, 0.0, 0.0, 0.2, 0.2, 0.6]]),
    ("two dogs", [[-1, 3, 0.1, 0.1, 0.2, 0.2, 0.5],  # span outside the caption
                  [0, 20, 0.1, 0.1, 0.2, 0.2, 0.5],  # span outside the caption
                  [0, 3, -0.1, 0.1, 0.2, 0.2, 0.5],  # negative
                  [0, 3, 0.5, 0.1, 0.2, 0.2, 0.5],  # x2 < x1
                  [0, 3, 0.1, 0.3, 0.2, 0.3, 0.5],  # empty
                  [0, 3, 0.1, 0.1, 1.2, 0.2, 0.5],  # outside the image
                  [0, 3, 0.1, 0.1], "junk", [0, 3, "a", 0, 1, 1, 0.5],  # malformed
                  [4, 8, 0.0, 0.5, 0.5, 1.0, 0.9]], None),
    ("   ", [], []),  # empty caption
]


def write_parquet(path) -> list[bytes]:
  images = [png(64, 32, 10), png(40, 40, 20), png(8, 8, 30)]
  table = pa.table({
      "caption": [r[0] for r in ROWS], "image": pa.array(images, pa.binary()),
      "width": [64, 40, 8], "height": [32, 40, 8], "url": ["http://x/0", "http://x/1", None],
      "noun_chunks": pa.array([r[1] for r in ROWS[:1]] + [None] + [[]],
                              pa.list_(pa.list_(pa.float64()))),
      "ref_exps": pa.array([r[2] for r in ROWS[:1]] + [None, []],
                           pa.list_(pa.list_(pa.float64())))})
  pq.write_table(table, path, row_group_size=2)
  return images


def test_grit_parquet_and_jsonl(tmp_path):
  src = tmp_path / "grit"
  src.mkdir()
  images = write_parquet(src / "part-0.parquet")
  (src / "img").mkdir()
  (src / "img" / "dogs.png").write_bytes(png(30, 60, 40))
  (src / "img" / "odd.png").write_bytes(png(20, 20, 50))
  lines = [json.dumps({"caption": ROWS[1][0], "image": "img/dogs.png", "width": 30,
                       "height": 60, "noun_chunks": ROWS[1][1], "ref_exps": None}),
           "{not json", json.dumps({"caption": "lost", "image": "img/absent.png"}),
           # box lists that are not lists: counted, the pair kept without boxes
           json.dumps({"caption": "odd", "image": "img/odd.png", "noun_chunks": 5,
                       "ref_exps": {"0": [0, 3, 0.1, 0.1, 0.5, 0.5, 0.9]}})]
  (src / "part-1.jsonl").write_text("\n".join(lines) + "\n")
  out = tmp_path / "out"
  assert prepare.main(["grit", "--input", str(src), "--output", str(out)]) == 0
  got = list(records.read_dir(str(out)))
  assert [r["id"] for r in got] == ["part-0.parquet:0", "part-0.parquet:1", "part-1.jsonl:1",
                                    "part-1.jsonl:4"]
  first, plain, dogs, odd = got
  assert odd["meta"]["boxes"] == [] and odd["segments"][1] == {"text": "odd"}
  assert first["segments"] == [{"image": images[0]}, {"text": CAPTION}]
  assert first["meta"]["boxes"] == [[0, 5, 0.1, 0.2, 0.5, 0.9], [0, 5, 0.6, 0.1, 0.7, 0.3],
                                    [18, 28, 0.3, 0.5, 1.0, 1.0], [38, 44, 0.0, 0.0, 0.2, 0.2]]
  assert first["meta"]["url"] == "http://x/0" and first["meta"]["width"] == 64
  assert plain["meta"]["boxes"] == [] and plain["segments"][1]["text"] == "two dogs"
  assert dogs["meta"]["boxes"] == [[4, 8, 0.0, 0.5, 0.5, 1.0]]
  assert dogs["segments"][0]["image"] == (src / "img" / "dogs.png").read_bytes()
  dropped = records.read_manifest(str(out))["dropped"]
  assert dropped == {"box_overlapping_span": 1, "box_span_outside_caption": 2, "box_negative": 1,
                     "box_inverted": 1, "box_empty": 1, "box_outside_image": 1,
                     "box_malformed": 5, "empty_text": 1, "invalid_json": 1, "missing_image": 1}


def grounded_spec() -> pipeline.DocSpec:
  tok = defaults.tokenizer()
  tok.grounding.update(grounding.trained_ids(300, 32))
  return pipeline.DocSpec(tokenizer=tok.to_dict(), source_index=0, num_sources=1, image_size=16,
                          tokens_per_image=2, max_images_per_doc=1, max_image_pixels=1 << 20,
                          vector_dim=0)


def record(boxes) -> bytes:
  return records.encode({"id": "0", "source": "grit", "kind": "pair",
                         "segments": [{"image": png(64, 32, 10)}, {"text": CAPTION}],
                         "meta": {"boxes": boxes}})


def test_pipeline_renders_boxes_on_the_cropped_image():
  convert = pipeline.RecordToDoc(grounded_spec())
  g = convert.grounding
  # 64 x 32 -> 32 x 16, crop x from 8 to 24: x' = (32 x - 8) / 16
  boxes = [[0, 5, 0.4, 0.1, 0.6, 0.9],  # -> (0.3, 0.1, 0.7, 0.9): cells 3*32+9, 28*32+22
           [0, 5, 0.0, 0.0, 0.2, 0.5],  # entirely left of the crop
           [18, 28, 0.2, 0.0, 0.4, 0.5],  # -> (-0.1, 0, 0.3, 0.5): 3/4 visible, clipped: 0, 15*32+9
           [38, 44, 0.7, 0.5, 0.9, 1.0]]  # -> (0.9, .5, 1.3, 1): a quarter visible, dropped
  doc = convert.map(record(boxes))
  stats = dict(zip(packing.STATS, doc["stats"][0]))
  assert (stats["boxes"], stats["boxes_cropped_out"], stats["boxes_bad"]) == (2, 2, 0)
  text = g.decode(doc["tokens"])
  # the first phrase is word-initial, as the eval prompts "<grounding><phrase> {phrase}"
  assert text == ("<grounding><phrase> a cat</phrase><object><patch_index_0105><patch_index_0918>"
                  "</object> sleeping on<phrase> a red sofa</phrase><object><patch_index_0000>"
                  "<patch_index_0489></object> near the window")
  assert doc["tokens"][0] == 1 and list(doc["tokens"][1:5]) == [4, 6, 6, 5]  # <s> image span


def test_pipeline_bad_or_absent_boxes_leave_the_caption_plain():
  convert = pipeline.RecordToDoc(grounded_spec())
  plain = convert.tok.encode(CAPTION)
  for boxes, bad in (([[0, 5, 0.1, 0.1, 0.5, "x"]], 1), ([[0, 9, 0.4, 0.1, 0.6, 0.9],
                                                          [3, 12, 0.4, 0.1, 0.6, 0.9]], 1),
                     ([], 0)):
    doc = convert.map(record(boxes))
    assert list(doc["tokens"][5:-1]) == plain
    assert dict(zip(packing.STATS, doc["stats"][0]))["boxes_bad"] == bad
  off = pipeline.RecordToDoc(pipeline.DocSpec(**{**grounded_spec().__dict__,
                                                 "tokenizer": defaults.tokenizer().to_dict()}))
  assert list(off.map(record([[0, 5, 0.4, 0.1, 0.6, 0.9]]))["tokens"][5:-1]) == plain


def test_pipeline_pairs_with_null_or_odd_meta():
  """`meta` is free-form: a pair whose meta is null or not an object trains as a plain pair
  (it raised AttributeError in every pipeline once boxes were read from meta)."""
  convert = pipeline.RecordToDoc(grounded_spec())
  plain = convert.tok.encode(CAPTION)
  for meta in (None, ["boxes"], "x"):
    data = records.encode({"id": "0", "source": "grit", "kind": "pair",
                           "segments": [{"image": png(64, 32, 10)}, {"text": CAPTION}],
                           "meta": meta})
    assert list(convert.map(data)["tokens"][5:-1]) == plain
