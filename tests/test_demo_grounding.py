"""The shapes world's grounding (kosmos.demo.grounding): grounded pair records whose boxes
are the drawn shapes' boxes and survive the location-token round trip with the demo's
tokenizer and config, the MDETR-layout referring eval set read by kosmos-eval's refcoco
task, the demo's referring runs, and the boxes picture."""

from __future__ import annotations

import io
import json
import math
import os

import numpy as np
import pytest
from PIL import Image

from kosmos import configs
from kosmos.data import grounding as grounding_lib
from kosmos.data import records
from kosmos.demo import grounding
from kosmos.demo import prepare as shapes
from kosmos.demo import runner as demo
from kosmos.demo import world as sw

SIZE = 32
GRID = configs.load_module(demo.CONFIG_FILE).GROUNDING_GRID


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("gworld"))
  shapes.generate(out, pairs=0, pages=0, texts=0, image_size=SIZE, coco_train=0, coco_val=0,
                  coco_test=0, vqa_train=0, vqa_val=0, binding_episodes=0, grounded=60,
                  refexp_train=3, refexp_val=12, workers=1)
  return out


def _grounded(world):
  return list(records.read_dir(os.path.join(world, "records", "grounded")))


def _pixels(data: bytes) -> np.ndarray:
  return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)


def _drawn_box(pixels: np.ndarray, scene: sw.Scene, o: sw.Obj) -> tuple[int, int, int, int]:
  """[x0, x1) x [y0, y1) of the pixels in o's cell that differ from the background."""
  bg = np.asarray(sw.background_colours(scene))  # [2, 3]
  differs = np.abs(pixels[:, :, None, :] - bg).max(-1).min(-1) > 40
  half = SIZE // 2
  row, col = divmod(o.cell, 2)
  cell = np.zeros_like(differs)
  cell[row * half:(row + 1) * half, col * half:(col + 1) * half] = True
  ys, xs = np.nonzero(differs & cell)
  return xs.min(), xs.max() + 1, ys.min(), ys.max() + 1


def test_grounded_records_box_the_drawn_shapes(world):
  recs = _grounded(world)
  assert len(recs) == 60
  kinds = set()
  for r in recs:
    assert r["kind"] == "pair" and r["id"].startswith("shapes-grounded-")
    scene = sw.Scene.from_dict(r["meta"]["scene"])
    kinds.add(len(scene.objects))
    assert len({(o.shape, o.colour) for o in scene.objects}) == len(scene.objects)
    text = r["segments"][1]["text"]
    pixels = _pixels(r["segments"][0]["image"])
    by_expression = {grounding.expression(o): o for o in scene.objects}
    spans = [text[b[0]:b[1]] for b in r["meta"]["boxes"]]
    assert sorted(spans) == sorted(by_expression)  # every object, once
    for entry, span in zip(r["meta"]["boxes"], spans):
      o = by_expression[span]
      box = [v * SIZE for v in entry[2:]]
      assert box == pytest.approx(grounding.object_box(o, SIZE), abs=1e-3)
      x0, x1, y0, y1 = _drawn_box(pixels, scene, o)
      # The box holds every drawn pixel and is tight: within half a pixel (anti-aliased
      # edges), 1.5 px at the sharp tips of triangles and stars (measured up to 1.2 px).
      slack = 1.5 if o.shape in ("triangle", "star") else 0.5
      assert math.floor(box[0]) <= x0 <= box[0] + slack
      assert math.floor(box[1]) <= y0 <= box[1] + slack
      assert box[2] - slack <= x1 <= math.ceil(box[2])
      assert box[3] - slack <= y1 <= math.ceil(box[3])
  assert kinds == {1, 2, 3}


def test_grounded_captions_round_trip_through_the_demo_tokenizer(world):
  """The demo config's location ids are the pieces `train_tokenizer(grounding_grid=8)`
  adds; rendered captions encode to them and parse back to the records' boxes on the grid."""
  from kosmos.data import tokenizer as tokenizer_lib
  config = configs.load(f"{demo.CONFIG_FILE}:{world}")
  # train_tokenizer raises unless its pieces sit at trained_ids(GROUNDING_FIRST_ID, grid).
  tokenizer_lib.train_tokenizer([os.path.join(world, "records", "grounded")], 400,
                                config.tokenizer.path, model_type="bpe", grounding_grid=GRID)
  assert dict(config.tokenizer.grounding) == grounding_lib.trained_ids(
      tokenizer_lib.GROUNDING_FIRST_ID, GRID)
  tok = tokenizer_lib.load(config.tokenizer)
  g = grounding_lib.Grounding(tok, config.tokenizer.grounding)
  assert not set(tok.encode("<phrase> a</phrase><patch_index_0003>")) & g.ids()  # plain text
  for r in _grounded(world)[:20]:
    text = r["segments"][1]["text"]
    boxes = r["meta"]["boxes"]
    tagged = grounding_lib.GROUNDING + grounding_lib.render(
        text, [(b[0], b[1], [tuple(b[2:])]) for b in boxes], GRID)
    ids = g.encode(tagged)
    assert sum(i in g.ids() for i in ids) == 1 + 6 * len(boxes)  # <grounding> + 6 per phrase
    clean, entities = grounding_lib.parse(g.decode(ids), GRID)
    assert clean == text
    assert [e.phrase for e in entities] == [text[b[0]:b[1]] for b in boxes]
    for e, b in zip(entities, boxes):
      assert e.boxes == (grounding_lib.cells_to_box(
          *grounding_lib.box_to_cells(b[2:], GRID), GRID),)


def test_refexp_eval_set_loads_as_refcoco(world):
  from kosmos.eval import tasks
  data = os.path.join(world, "eval", "refexp")
  task = tasks.load_task("refcoco", data)
  assert task.kind == tasks.GROUNDING and task.template == "rec" and not task.skipped
  with open(os.path.join(data, "final_refcoco_val.json")) as f:
    val = json.load(f)
  images = {e["original_id"] for e in val["images"]}
  assert len(images) == 12
  scenes = {e["original_id"]: sw.Scene.from_dict(e["scene"]) for e in val["images"]}
  assert len(task.test) == sum(len(s.objects) for s in scenes.values())
  train_images = {e.image_paths[0] for e in task.train}
  assert len(train_images) == 3 and not train_images & {e.image_paths[0] for e in task.test}
  for example, entry in zip(task.test, val["images"]):
    scene = scenes[entry["original_id"]]
    matches = [o for o in scene.objects if grounding.expression(o) == example.fields["phrase"]]
    assert len(matches) == 1  # the expression names one object of its image
    assert example.boxes[0] == pytest.approx(grounding.object_box(matches[0], SIZE), abs=2e-3)
    with open(example.image_paths[0], "rb") as f:
      assert Image.open(f).size == (SIZE, SIZE)
  # Eval images are kept out of the grounded training records (by pixels).
  with open(os.path.join(world, "world.json")) as f:
    assert json.load(f)["eval"]["refexp"]["expressions"]["val"] == len(task.test)
  digests = {shapes.pixel_digest(Image.open(io.BytesIO(r["segments"][0]["image"])).convert("RGB"))
             for r in _grounded(world)}
  for path in {e.image_paths[0] for e in task.test}:
    scene = scenes[int(os.path.basename(path)[-16:-4])]
    assert shapes.pixel_digest(sw.render_scene(scene, SIZE)) not in digests


def test_demo_runs_and_config():
  plan = demo.Plan(pairs=1, pages=1, texts=1, steps=1, coco_queries=1, vqa_queries=1,
                   colour_queries=1, binding_episodes=1, induction_episodes=1, grounded=10,
                   refexp_queries=5)
  runs = {r.name: r for r in demo.eval_runs(plan)}
  assert (runs["refcoco"].task, runs["refcoco"].blank, runs["refcoco_blank"].blank) == (
      "refcoco", False, True)
  assert runs["refcoco"].queries == runs["refcoco_blank"].queries == 5
  assert "grounded" in demo.load_config("/data", plan).data.sources
  plain = demo.Plan(pairs=1, pages=1, texts=1, steps=1, coco_queries=1, vqa_queries=1,
                    colour_queries=1, binding_episodes=1, induction_episodes=1)
  assert "refcoco" not in {r.name for r in demo.eval_runs(plain)}
  assert "grounded" not in demo.load_config("/data", plain).data.sources


def test_boxes_picture(world, tmp_path):
  from kosmos.eval import tasks
  data = os.path.join(world, "eval", "refexp")
  task = tasks.load_task("refcoco", data)
  predictions = [{"id": e.id, "prediction": [v + 2 for v in e.boxes[0]] if k % 3 else None,
                  "boxes": [list(e.boxes[0])]} for k, e in enumerate(task.test)]
  path = str(tmp_path / "boxes.png")
  assert grounding.boxes_picture(data, predictions, path) == 8
  pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)

  def count(rgb):
    return int((np.abs(pixels - np.asarray(rgb)).max(-1) < 30).sum())

  assert count((0, 255, 255)) > 100 and count((255, 0, 255)) > 100  # true and predicted boxes
  with pytest.raises(ValueError, match="none of 1 predictions"):
    grounding.boxes_picture(data, [{"id": "nope", "prediction": None, "boxes": []}], path)


def test_report_rows_and_verdict():
  from kosmos.demo import report

  def result(mean):
    return {"rows": [{"shots": 0, "mean": mean, "num_queries": 200}]}

  table = report.results_table({"refcoco": result(15.0), "refcoco_blank": result(12.5)})
  assert table[2:] == ["| referring (acc@IoU0.5) | real | 15.0 |",
                       "| referring (acc@IoU0.5) | blank (gray) | 12.5 |"]
  # 2 SE of a difference of two accuracies near 14 % over 200 queries: 6.9 points.
  assert "NOT shown" in report.grounding_evidence(result(15.0), result(12.5))
  assert "+-6.9" in report.grounding_evidence(result(15.0), result(12.5))
  assert "locate the objects" in report.grounding_evidence(result(45.0), result(12.5))
