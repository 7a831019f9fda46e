"""KOSMOS-2's grounding evaluations: RefCOCO (MDETR layout), Flickr30k Entities, REG.

Real-format files written here: MDETR's `final_refcoco_{train,val}.json` with COCO-named
images, Flickr30k Entities' Annotations/*.xml + Sentences/*.txt + split lists. Reference
logic ported into this file, cited: the Flickr30k Entities parsers
(BryanPlummer/flickr30k_entities flickr30k_entities_utils.py `get_sentence_data`, and
ashkamath/mdetr datasets/flickr_eval.py `get_annotations`, which reads every <name>) and
MDETR's any-box / merged-box scoring (datasets/flickr_eval.py `_merge_boxes`, `box_iou`).
The runner is driven by a scripted engine whose generations are fixed location tokens, so
the predicted pixel boxes and the metric are worked out by hand; one slow test runs
`kosmos-eval` end to end on a tiny random model.
"""

from __future__ import annotations

import io
import json
import os
import pickle

import numpy as np
import pytest
from PIL import Image

from kosmos import defaults
from kosmos.data import grounding
from kosmos.data import tokenizer as tokenizer_lib
from kosmos.eval import grounding as grounding_eval
from kosmos.eval import metrics
from kosmos.eval import prompts as prompts_lib
from kosmos.eval import runner
from kosmos.eval import tasks as tasks_lib
from kosmos.infer import engine as engine_lib

W, H, CROP, GRID = 64, 48, 16, 4  # resize to 21 x 16, crop x from 2 to 18


def jpeg(seed: int) -> bytes:
  out = io.BytesIO()
  pixels = np.random.default_rng(seed).integers(0, 256, (H, W, 3)).astype(np.uint8)
  Image.fromarray(pixels).save(out, format="JPEG")
  return out.getvalue()


# ----------------------------------------------------------------------------- metrics


def mdetr_box_iou(boxes1, boxes2):  # ashkamath/mdetr datasets/flickr_eval.py (numpy port)
  area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
  area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
  lt = np.maximum(boxes1[:, None, :2], boxes2[:, :2])
  rb = np.minimum(boxes1[:, None, 2:], boxes2[:, 2:])
  wh = (rb - lt).clip(min=0)
  inter = wh[:, :, 0] * wh[:, :, 1]
  return inter / (area1[:, None] + area2 - inter)


def mdetr_merge(boxes):  # ashkamath/mdetr datasets/flickr_eval.py `_merge_boxes`
  if len(boxes) == 1:
    return boxes
  b = np.asarray(boxes)
  return [[b[:, 0].min(), b[:, 1].min(), b[:, 2].max(), b[:, 3].max()]]


def test_box_accuracy_hand_computed():
  targets = [[(0, 0, 10, 10), (20, 0, 30, 10)]]
  # the first box exactly: any-box hit; against the merged (0, 0, 30, 10): IoU 1/3, a miss
  assert metrics.box_accuracy([(0, 0, 10, 10)], targets) == 1.0
  assert metrics.box_accuracy([(0, 0, 10, 10)], targets, protocol=metrics.MERGED_BOX) == 0.0
  # the enclosing box: merged hit; against either box IoU 1/3, an any-box miss
  assert metrics.box_accuracy([(0, 0, 30, 10)], targets) == 0.0
  assert metrics.box_accuracy([(0, 0, 30, 10)], targets, protocol=metrics.MERGED_BOX) == 1.0
  # IoU exactly 0.5 counts (>=); no box is a miss
  assert metrics.box_accuracy([(0, 0, 10, 10), None], [[(0, 0, 10, 5)], [(0, 0, 1, 1)]]) == 0.5
  assert metrics.score(metrics.BOX_ACCURACY, [(0, 0, 2, 2)], [[(1, 1, 3, 3)]]) == 0.0
  with pytest.raises(ValueError, match="protocol"):
    metrics.box_accuracy([(0, 0, 1, 1)], [[(0, 0, 1, 1)]], protocol="best")


def test_box_accuracy_equals_mdetr_protocols():
  rng = np.random.default_rng(0)
  for merge in (False, True):
    predictions, references, hits = [], [], 0
    for _ in range(300):
      xy = rng.uniform(0, 50, (rng.integers(1, 4), 2))
      targets = np.concatenate([xy, xy + rng.uniform(1, 30, xy.shape)], axis=1)
      p = rng.uniform(0, 50, 2)
      box = np.concatenate([p, p + rng.uniform(1, 30, 2)])
      targets_list = mdetr_merge(targets.tolist()) if merge else targets.tolist()
      hits += mdetr_box_iou(box[None], np.asarray(targets_list, np.float64)).max() >= 0.5
      predictions.append(tuple(box))
      references.append([tuple(t) for t in targets])
    ours = metrics.box_accuracy(predictions, references,
                                protocol=metrics.MERGED_BOX if merge else metrics.ANY_BOX)
    assert ours == hits / 300 and 0 < hits < 300


# ----------------------------------------------------------------------------- MDETR RefCOCO


def write_refcoco(root, prefix="final") -> None:
  (root / "train2014").mkdir(parents=True)
  entries = {"train": [(0, "the left dog", (4, 8, 20, 30), 11, 501), (1, "dog on the left",
                                                                      (4, 8, 20, 30), 11, 501),
                       (2, "right cat", (30, 10, 20, 20), 12, 502)],
             "val": [(10, "the red car", (24, 12, 24, 24), 21, 601), (11, "small red car",
                                                                     (24, 12, 24, 24), 21, 601),
                     (12, "a tree", (0, 0, 64, 48), 22, 602), (13, "  ", (1, 1, 2, 2), 23, 603),
                     (14, "missing image", (1, 1, 2, 2), 24, 999)]}
  for split, rows in entries.items():
    images, annotations = [], []
    for entry_id, caption, bbox, ann_id, coco_id in rows:
      name = f"COCO_train2014_{coco_id:012d}.jpg"
      if coco_id != 999:
        (root / "train2014" / name).write_bytes(jpeg(coco_id))
      images.append({"file_name": name, "height": H, "width": W, "id": entry_id,
                     "original_id": coco_id, "caption": caption, "dataset_name": "refcoco",
                     "tokens_negative": []})
      annotations.append({"area": bbox[2] * bbox[3], "iscrowd": 0, "image_id": entry_id,
                          "category_id": 1, "id": 100 + entry_id, "bbox": list(bbox),
                          "original_id": ann_id, "tokens_positive": [[0, len(caption)]]})
    with open(root / f"{prefix}_refcoco_{split}.json", "w") as f:
      json.dump({"info": {}, "licenses": [], "images": images, "annotations": annotations,
                 "categories": [{"id": 1, "name": "thing"}]}, f)


def test_refcoco_mdetr_layout(tmp_path):
  write_refcoco(tmp_path)
  task = tasks_lib.load_task("refcoco", str(tmp_path))
  assert task.kind == tasks_lib.GROUNDING and task.template == "rec"
  assert [(e.id, e.fields["phrase"], e.boxes) for e in task.test] == [
      ("10", "the red car", ((24.0, 12.0, 48.0, 36.0),)),
      ("11", "small red car", ((24.0, 12.0, 48.0, 36.0),)), ("12", "a tree", ((0, 0, 64, 48),))]
  assert dict(task.skipped) == {"empty_expression": 1, "missing_image": 1}
  assert len(task.train) == 3
  reg = tasks_lib.load_task("refcoco_reg", str(tmp_path))
  assert reg.kind == tasks_lib.CAPTION and reg.metric == "cider" and reg.template == "reg"
  assert [(e.references, e.boxes) for e in reg.test] == [
      (("the red car", "small red car"), ((24.0, 12.0, 48.0, 36.0),)),
      (("a tree",), ((0, 0, 64, 48),))]
  assert [e.references for e in reg.train] == [("the left dog", "dog on the left"), ("right cat",)]


def test_refcoco_mdetr_released_names(tmp_path):
  """MDETR's mdetr_annotations (and its refexp_coco_format.py) name the files
  finetune_<name>_<split>.json, e.g. finetune_refcoco_testA.json; they load as final_ ones."""
  write_refcoco(tmp_path, prefix="finetune")
  (tmp_path / "finetune_refcoco_val.json").rename(tmp_path / "finetune_refcoco_testA.json")
  task = tasks_lib.load_task("refcoco", str(tmp_path), test_split="testA")
  assert [e.id for e in task.test] == ["10", "11", "12"] and len(task.train) == 3


class Unpickled:
  def __reduce__(self):  # unpickling this would create the sentinel file
    return (open, (SENTINEL[0], "w"))


SENTINEL = [""]


def test_refer_pickles_are_refused_never_unpickled(tmp_path):
  SENTINEL[0] = str(tmp_path / "unpickled")
  (tmp_path / "refcoco").mkdir()
  with open(tmp_path / "refcoco" / "refs(unc).p", "wb") as f:
    pickle.dump(Unpickled(), f)
  with pytest.raises(FileNotFoundError, match=r"refs\(unc\)\.p.*finetune_\{name\}_\{split\}\.json"):
    tasks_lib.load_task("refcoco", str(tmp_path))
  from kosmos.eval.tasks import refexp
  with pytest.raises(ValueError, match="never unpickles"):
    refexp.read_entries(str(tmp_path / "refcoco" / "refs(unc).p"), str(tmp_path), {})
  assert not os.path.exists(SENTINEL[0])


# ----------------------------------------------------------------------------- Flickr30k Entities

SENTENCES = [
    "[/EN#18/people A child] in [/EN#19/clothing a pink dress] is climbing up "
    "[/EN#20/other a set of stairs] in [/EN#21/scene an entry way] .",
    "[/EN#18/people A little girl] in [/EN#19/clothing a pink dress] going into "
    "[/EN#22/notvisible a wooden cabin] .",
]
XML = """<annotation>
  <filename>{id}.jpg</filename>
  <size><width>64</width><height>48</height><depth>3</depth></size>
  <object><name>18</name><bndbox><xmin>4</xmin><ymin>4</ymin><xmax>20</xmax><ymax>40</ymax></bndbox></object>
  <object><name>19</name><name>18</name><bndbox><xmin>6</xmin><ymin>20</ymin><xmax>18</xmax><ymax>40</ymax></bndbox></object>
  <object><name>20</name><bndbox><xmin>30</xmin><ymin>0</ymin><xmax>60</xmax><ymax>24</ymax></bndbox></object>
  <object><name>20</name><bndbox><xmin>40</xmin><ymin>24</ymin><xmax>62</xmax><ymax>46</ymax></bndbox></object>
  <object><name>21</name><nobndbox>0</nobndbox><scene>1</scene></object>
  <object><name>22</name><nobndbox>1</nobndbox><scene>0</scene></object>
</annotation>
"""


def bryan_sentences(text):  # BryanPlummer/flickr30k_entities flickr30k_entities_utils.py
  out = []
  for sentence in text.split("\n"):
    if not sentence:
      continue
    first_word, phrases, phrase_id, phrase_type, words, current, add = [], [], [], [], [], [], False
    for token in sentence.split():
      if add:
        if token[-1] == "]":
          add = False
          token = token[:-1]
          current.append(token)
          phrases.append(" ".join(current))
          current = []
        else:
          current.append(token)
        words.append(token)
      elif token[0] == "[":
        add = True
        first_word.append(len(words))
        parts = token.split("/")
        phrase_id.append(parts[1][3:])
        phrase_type.append(parts[2:])
      else:
        words.append(token)
    out.append({"sentence": " ".join(words), "phrases": [
        {"first_word_index": i, "phrase": p, "phrase_id": d, "phrase_type": t}
        for i, p, d, t in zip(first_word, phrases, phrase_id, phrase_type)]})
  return out


def write_flickr(root) -> None:
  for d in ("Sentences", "Annotations", "flickr30k-images"):
    (root / d).mkdir(parents=True)
  for image_id in ("1000", "2000", "3000"):
    (root / "Sentences" / f"{image_id}.txt").write_text("\n".join(SENTENCES) + "\n")
    (root / "Annotations" / f"{image_id}.xml").write_text(XML.format(id=image_id))
    if image_id != "3000":
      (root / "flickr30k-images" / f"{image_id}.jpg").write_bytes(jpeg(int(image_id)))
  (root / "train.txt").write_text("2000\n")
  (root / "test.txt").write_text("1000\n3000\n")


def test_flickr_entities_layout(tmp_path):
  from kosmos.eval.tasks import flickr_entities
  write_flickr(tmp_path)
  path = tmp_path / "Sentences" / "1000.txt"
  assert flickr_entities.read_sentences(str(path)) == bryan_sentences(path.read_text())
  assert flickr_entities.read_boxes(str(tmp_path / "Annotations" / "1000.xml")) == {
      "18": [(4, 4, 20, 40), (6, 20, 18, 40)], "19": [(6, 20, 18, 40)],
      "20": [(30, 0, 60, 24), (40, 24, 62, 46)]}
  task = tasks_lib.load_task("flickr30k_entities", str(tmp_path))
  assert [(e.id, e.fields["prefix"], e.fields["phrase"], len(e.boxes)) for e in task.test] == [
      ("1000_0_0", "", "A child", 2), ("1000_0_1", " A child in", "a pink dress", 1),
      ("1000_0_2", " A child in a pink dress is climbing up", "a set of stairs", 2),
      ("1000_1_0", "", "A little girl", 2), ("1000_1_1", " A little girl in", "a pink dress", 1)]
  # scene and not-visible phrases have no box (both sentences, train and test); one image absent
  assert dict(task.skipped) == {"phrase_without_box": 4, "missing_image": 1}
  assert task.extra_metrics == {"merged_box": {"protocol": "merged_box"}}
  prompt = prompts_lib.build_prompt(prompts_lib.get_template(task.template),
                                    [], task.test[2]).segments[-1]["text"]
  assert prompt == ("<grounding> A child in a pink dress is climbing up<phrase> a set of "
                    "stairs</phrase>")


# ----------------------------------------------------------------------------- runner


class ScriptedEngine:
  """The parts of `Engine` the runner uses; generations are given, looked up by query text."""

  def __init__(self, answers: dict[str, str]):
    config = defaults.tokenizer()
    config.grounding.update(grounding.trained_ids(300, GRID))
    self.grounding = grounding.Grounding(tokenizer_lib.ByteTokenizer(config), config.grounding)
    self.image_size, self.answers, self.prompts = CROP, answers, []

  def generate(self, prompts, **_):
    self.prompts += prompts
    answers = [self.answers.get(p[-1]["text"], " no box") for p in prompts]
    return [engine_lib.Generation(text=grounding.parse(a)[0], tokens=[], logprob=0.0, score=0.0,
                                  tagged=a) for a in answers]


def cells(a: int, b: int) -> str:
  return grounding.object_text([(a, b)])


def test_rec_scoring_through_the_runner(tmp_path):
  write_refcoco(tmp_path)
  task = tasks_lib.load_task("refcoco", str(tmp_path))
  # crop of 64 x 48 at 16: resized to 21 x 16, x' = (21 x / 64 - 2) / 16, y' = y / 48.
  # The red car (24, 12, 48, 36) is answered with cells 4 and 15 (cols 0-3, rows 1-3: centre
  # to centre (0.125, 0.375, 0.875, 0.875)) -> pixels x (0.125 * 16 + 2) / 21 * 64 = 12.19,
  # (0.875 * 16 + 2) / 21 * 64 = 48.76, y 18, 42: IoU 24*18 / (576 + 36.57*24 - 24*18) =
  # 0.42, a miss. The tree (the whole image) is answered with cells 0 and 15.
  prompt = "<grounding><phrase> {}</phrase>"
  engine = ScriptedEngine({prompt.format("the red car"): cells(4, 15),
                           prompt.format("a tree"): cells(0, 15) + " trailing text"})
  preds = runner.run_trial(engine, task, task.test, [[task.train[0]]] * 3, text_only=False,
                           settings=runner.Settings())
  car, _, tree = preds
  np.testing.assert_allclose(car["prediction"], [4 / 21 * 64, 18, 16 / 21 * 64, 42])
  np.testing.assert_allclose(tree["prediction"], [4 / 21 * 64, 6, 16 / 21 * 64, 42])
  assert preds[1]["prediction"] is None and car["boxes"] == [[24, 12, 48, 36]]
  # tree: IoU (48.76 - 12.19) * 36 / (64 * 48) = 0.43, also a miss; the car's box itself hits
  assert runner.score_predictions(task, preds) == 0.0
  assert runner.score_predictions(task, [dict(car, prediction=[24, 12, 48, 36])] + preds[1:]) == (
      pytest.approx(100 / 3))
  # the one-shot demo carries its box: the left dog (4, 8, 24, 38) -> cells 0 and 13
  demo = engine.prompts[0][1]["text"]
  assert demo.startswith("<grounding><phrase> the left dog</phrase><object><patch_index_0000>"
                         "<patch_index_0013></object>\n")
  ious = [grounding.iou(p["prediction"], p["boxes"][0]) for p in (car, tree)]
  np.testing.assert_allclose(ious, [24 * 18 / (576 + (16 - 4) / 21 * 64 * 24 - 24 * 18),
                                    (12 / 21 * 64) * 36 / (64 * 48)], rtol=1e-6)


def test_flickr_any_and_merged_box_through_the_runner(tmp_path):
  write_flickr(tmp_path)
  task = tasks_lib.load_task("flickr30k_entities", str(tmp_path))
  # "a set of stairs" has boxes (30, 0, 60, 24) and (40, 24, 62, 46), merged (30, 0, 62, 46).
  # Answered with cells 2 .. 15 (cols 2-3, rows 0-3): crop (0.625, 0.125, 0.875, 0.875) ->
  # pixels x (10 + 2) / 21 * 64 = 36.6, (14 + 2) / 21 * 64 = 48.8, y 6, 42: a miss under
  # both protocols (MDETR's own IoU below).
  stairs = "<grounding> A child in a pink dress is climbing up<phrase> a set of stairs</phrase>"
  dress = "<grounding> A child in<phrase> a pink dress</phrase>"
  engine = ScriptedEngine({stairs: cells(2, 15), dress: cells(0, 0)})
  preds = runner.run_trial(engine, task, task.test, [[] for _ in task.test], text_only=True,
                           settings=runner.Settings())
  by_id = {p["id"]: p for p in preds}
  np.testing.assert_allclose(by_id["1000_0_2"]["prediction"],
                             [12 / 21 * 64, 6, 16 / 21 * 64, 42])
  # cell 0 alone covers the cell: crop (0, 0, .25, .25) -> x 2/21*64 = 6.1, 6/21*64 = 18.3, y 0, 12
  np.testing.assert_allclose(by_id["1000_0_1"]["prediction"], [2 / 21 * 64, 0, 6 / 21 * 64, 12])
  pred = by_id["1000_0_2"]["prediction"]
  any_iou = max(mdetr_box_iou(np.asarray([pred]), np.asarray(by_id["1000_0_2"]["boxes"]))[0])
  merged = mdetr_merge(by_id["1000_0_2"]["boxes"])
  merged_iou = mdetr_box_iou(np.asarray([pred]), np.asarray(merged))
  assert (any_iou >= 0.5, merged_iou[0, 0] >= 0.5) == (False, False)
  # a prediction equal to the merged box: merged-box hit, any-box miss (IoU 0.49 and 0.34)
  by_id["1000_0_2"]["prediction"] = [30, 0, 62, 46]
  n = len(preds)
  assert runner.score_predictions(task, preds) == 0.0
  assert runner.score_predictions(task, preds, task.extra_metrics["merged_box"]) == 100 / n


def test_reg_prompts_show_the_region(tmp_path):
  write_refcoco(tmp_path)
  task = tasks_lib.load_task("refcoco_reg", str(tmp_path))
  engine = ScriptedEngine({})
  built = grounding_eval.with_objects(task.test, CROP, GRID, {})
  prompt = prompts_lib.build_prompt(prompts_lib.get_template(task.template),
                                    grounding_eval.with_objects(task.train[:1], CROP, GRID, {}),
                                    built[0])
  texts = [s["text"] for s in prompt.segments if "text" in s]
  # the car (cells 5, 11) after the demo dog (cells 0, 13) with its expression
  assert texts == ["<grounding><phrase> It</phrase>" + cells(0, 13) + " is the left dog\n",
                   "<grounding><phrase> It</phrase>" + cells(5, 11) + " is"]
  assert engine.grounding.grid == GRID


def test_reg_scoring_through_the_runner(tmp_path):
  write_refcoco(tmp_path)
  task = tasks_lib.load_task("refcoco_reg", str(tmp_path))
  car = "<grounding><phrase> It</phrase>" + cells(5, 11) + " is"
  tree = "<grounding><phrase> It</phrase>" + cells(0, 15) + " is"
  engine = ScriptedEngine({car: " the red car\nIt is", tree: " a red car"})
  preds = runner.run_trial(engine, task, task.test, [[], []], text_only=True,
                           settings=runner.Settings())
  assert [(p["prediction"], p["references"]) for p in preds] == [
      ("the red car", ["the red car", "small red car"]), ("a red car", ["a tree"])]
  both = runner.score_predictions(task, preds)
  assert both == pytest.approx(metrics.score(
      metrics.CIDER, {"21": "the red car", "22": "a red car"}, {"21": ["the red car",
                                                                  "small red car"],
                                                           "22": ["a tree"]}))
  assert both > runner.score_predictions(task, [dict(preds[0], prediction="a tree"), preds[1]])


def test_grounding_tasks_need_location_tokens(tmp_path):
  write_refcoco(tmp_path)
  task = tasks_lib.load_task("refcoco", str(tmp_path))
  engine = ScriptedEngine({})
  engine.grounding = None
  with pytest.raises(ValueError, match="location tokens"):
    runner.run_trial(engine, task, task.test, [[]] * 3, text_only=True,
                     settings=runner.Settings())


# ----------------------------------------------------------------------------- kosmos-eval


@pytest.mark.slow
def test_kosmos_eval_end_to_end_on_a_tiny_grounding_model(tmp_path):
  """`kosmos-eval` on the three layouts with a tiny random model that has location tokens
  (byte tokenizer, 4 x 4 grid): rows, extra merged-box rows and the saved predictions agree."""
  from flax import nnx
  import tiny
  from kosmos import workdir as workdir_lib
  from kosmos.eval import main as eval_main
  from kosmos.model import multimodal
  wd = str(tmp_path / "wd")
  config = defaults.base()
  config.model = tiny.model_config("magneto", "resampler", "xpos")
  config.tokenizer.grounding.update(grounding.trained_ids(tokenizer_lib.BYTE_VOCAB_SIZE, GRID))
  config.model.decoder.update(vocab_size=tokenizer_lib.BYTE_VOCAB_SIZE + 6 + GRID * GRID,
                              max_len=256)
  model = multimodal.Multimodal(config.model, rngs=nnx.Rngs(0))
  workdir_lib.save_config(config, wd)
  workdir_lib.save_params(wd, 3, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  write_refcoco(tmp_path / "refcoco")
  write_flickr(tmp_path / "flickr")
  for task, data, shots in (("refcoco", "refcoco", "0,2"), ("flickr30k_entities", "flickr", "0"),
                            ("refcoco_reg", "refcoco", "1")):
    out = str(tmp_path / f"{task}.json")
    assert eval_main.main(["--workdir", wd, "--task", task, "--data", str(tmp_path / data),
                           "--shots", shots, "--out", out, "--no-progress",
                           "--caption-tokens", "4", "--caption-beams", "1"]) == 0
    result = json.load(open(out))
    predictions = json.load(open(str(tmp_path / f"{task}.predictions.json")))
    loaded = tasks_lib.load_task(task, str(tmp_path / data))
    for row in result["rows"]:
      preds = predictions[str(row["shots"])][0]
      assert sorted(p["id"] for p in preds) == sorted(e.id for e in loaded.test)
      assert row["values"][0] == pytest.approx(runner.score_predictions(loaded, preds))
      if task == "flickr30k_entities":
        assert row["details"][0]["merged_box"] == pytest.approx(
            runner.score_predictions(loaded, preds, {"protocol": "merged_box"}))
      if loaded.kind == tasks_lib.GROUNDING:
        for p in preds:  # a box is the first one linked to the phrase, back in pixels
          query = next(e for e in loaded.test if e.id == p["id"])
          want = grounding_eval.predicted_box(
              prompts_lib.build_prompt(prompts_lib.get_template(loaded.template), [],
                                       query).segments[-1]["text"], p["raw"],
              query.fields["phrase"], (W, H), CROP, GRID)
          assert p["prediction"] == (list(want) if want else None)


def test_flickr_entities_bad_annotation_files_are_counted(tmp_path):
  """A truncated xml, a box with an empty coordinate, a missing Sentences file: the image is
  skipped and counted (`bad_annotation`), the rest of the split loads."""
  write_flickr(tmp_path)
  for image_id in ("4000", "5000", "6000"):
    (tmp_path / "flickr30k-images" / f"{image_id}.jpg").write_bytes(jpeg(int(image_id)))
    (tmp_path / "Sentences" / f"{image_id}.txt").write_text("\n".join(SENTENCES) + "\n")
  xml = XML.format(id="4000")
  (tmp_path / "Annotations" / "4000.xml").write_text(xml[:len(xml) // 2])
  (tmp_path / "Annotations" / "5000.xml").write_text(
      xml.replace("<xmin>4</xmin>", "<xmin></xmin>"))
  (tmp_path / "Annotations" / "6000.xml").write_text(xml)
  (tmp_path / "Sentences" / "6000.txt").unlink()
  (tmp_path / "test.txt").write_text("1000\n4000\n5000\n6000\n")
  assert "<xmin>4</xmin>" in xml
  task = tasks_lib.load_task("flickr30k_entities", str(tmp_path))
  assert {e.id.split("_")[0] for e in task.test} == {"1000"} and len(task.test) == 5
  assert task.skipped["bad_annotation"] == 3


# ----------------------------------------------------------------------------- EXIF


@pytest.mark.parametrize("orientation", range(1, 9))
def test_boxes_turn_with_the_exif_orientation(orientation):
  """A red box drawn on the stored pixels of a JPEG tagged with an EXIF orientation: after
  `images.decode` (turned upright by Pillow's exif_transpose, resized, centre-cropped) the
  red is where `crop_boxes` puts the box, and `predicted_box` maps a box generated there
  back onto the stored pixels (the frame of the dataset's boxes)."""
  from kosmos.data import images as images_lib
  width, height, crop = 96, 64, 32  # upright: 48 x 32 or 32 x 48, the long side cropped
  box = (20, 4, 50, 20)  # stored pixels, inside the crop whichever way the image turns
  pixels = np.full((height, width, 3), 255, np.uint8)
  pixels[box[1]:box[3], box[0]:box[2]] = (220, 0, 0)
  exif = Image.Exif()
  exif[0x0112] = orientation
  out = io.BytesIO()
  Image.fromarray(pixels).save(out, format="JPEG", quality=95, exif=exif)
  data = out.getvalue()
  example = tasks_lib.Example(id="q", fields={"phrase": "it"}, references=(),
                              image_bytes=(data,), boxes=(box,))
  size = grounding_eval.image_size(example)
  assert size == (width, height, orientation)
  shown = images_lib.decode(data, crop).astype(int)
  red = (shown[..., 0] > 150) & (shown[..., 1] < 100) & (shown[..., 2] < 100)
  ys, xs = np.nonzero(red)
  seen = (xs.min() / crop, ys.min() / crop, (xs.max() + 1) / crop, (ys.max() + 1) / crop)
  [placed] = grounding_eval.crop_boxes([box], size, crop)
  assert placed == pytest.approx(seen, abs=1.5 / crop), (placed, seen)
  # A generated box on the crop (1-px cells) comes back on the stored pixels, 2 px a cell.
  tagged = grounding_eval.object_text([box], size, crop, grid=crop)
  back = grounding_eval.predicted_box("<grounding><phrase> it</phrase>", tagged, "it", size,
                                      crop, crop)
  assert back == pytest.approx(box, abs=2.01), back
  for b in (placed, (0.1, 0.2, 0.5, 0.9)):
    assert images_lib.orient_box(images_lib.orient_box(b, orientation), orientation,
                                 inverse=True) == pytest.approx(b)
