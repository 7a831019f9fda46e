"""Eval tasks read from their public file formats (built here), and exact prompt rendering."""

import io
import json
import os

import pytest
from PIL import Image

from kosmos.eval import prompts
from kosmos.eval import tasks
from kosmos.eval.tasks import Example


def jpeg(path, color):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.new("RGB", (8, 8), color).save(path, format="JPEG")
  with open(path, "rb") as f:
    return f.read()


def write_json(path, obj):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(obj, f)


def write_jsonl(path, rows, extra_lines=()):
  with open(path, "w") as f:
    for r in rows:
      f.write(json.dumps(r) + "\n")
    for line in extra_lines:
      f.write(line + "\n")


def test_coco_karpathy(tmp_path):
  d = str(tmp_path)
  images = []
  for i, (split, sub) in enumerate([("train", "train2014"), ("restval", "val2014"),
                                    ("test", "val2014"), ("test", "val2014"),
                                    ("val", "val2014")]):
    fname = f"COCO_{sub}_{i:012d}.jpg"
    if i != 3:  # image 3 is missing on disk
      jpeg(os.path.join(d, sub, fname), (40 * i, 0, 0))
    images.append({"filepath": sub, "filename": fname, "split": split, "cocoid": 100 + i,
                   "imgid": i, "sentences": [{"raw": f" A red thing {i}. ", "tokens": []},
                                             {"raw": f"Second caption {i}"}]})
  write_json(os.path.join(d, "dataset_coco.json"), {"images": images, "dataset": "coco"})
  task = tasks.load_task("coco", d)
  assert (task.kind, task.metric, task.template) == ("caption", "cider", "caption")
  assert [e.id for e in task.train] == ["100"]
  assert [e.id for e in task.test] == ["102"]
  assert task.skipped == {"missing_image": 1}
  e = task.test[0]
  assert e.fields == {"caption": "A red thing 2."}
  assert e.references == ("A red thing 2.", "Second caption 2")
  assert e.images() == [open(os.path.join(d, "val2014", "COCO_val2014_000000000002.jpg"),
                             "rb").read()]
  with_restval = tasks.load_task("coco", d, train_splits=("train", "restval"))
  assert [e.id for e in with_restval.train] == ["100", "101"]


def test_flickr30k_ids_are_file_stems(tmp_path):
  d = str(tmp_path)
  jpeg(os.path.join(d, "flickr30k-images", "1000092795.jpg"), (0, 90, 0))
  jpeg(os.path.join(d, "flickr30k-images", "10002456.jpg"), (0, 0, 90))
  write_json(os.path.join(d, "dataset_flickr30k.json"), {"images": [
      {"filename": "1000092795.jpg", "split": "train", "imgid": 0,
       "sentences": [{"raw": "Two young guys with shaggy hair."}]},
      {"filename": "10002456.jpg", "split": "test", "imgid": 1,
       "sentences": [{"raw": "Several men in hard hats."}]}]})
  task = tasks.load_task("flickr30k", d)
  assert [e.id for e in task.train] == ["1000092795"]
  assert [e.id for e in task.test] == ["10002456"]
  assert task.test[0].references == ("Several men in hard hats.",)


def _vqa_files(d, subtype, qids, image_ids):
  questions = {"data_subtype": subtype, "task_type": "Open-Ended", "questions": [
      {"image_id": im, "question": f"What is {q}? ", "question_id": q}
      for q, im in zip(qids, image_ids)]}
  annotations = {"annotations": [
      {"question_id": q, "image_id": im, "answer_type": "other",
       "multiple_choice_answer": "red", "question_type": "what is",
       "answers": [{"answer": "red" if j < 7 else "maroon", "answer_confidence": "yes",
                    "answer_id": j + 1} for j in range(10)]}
      for q, im in zip(qids, image_ids)]}
  write_json(os.path.join(d, f"v2_OpenEnded_mscoco_{subtype}_questions.json"), questions)
  write_json(os.path.join(d, f"v2_mscoco_{subtype}_annotations.json"), annotations)
  for im in set(image_ids):
    jpeg(os.path.join(d, subtype, f"COCO_{subtype}_{im:012d}.jpg"), (im % 256, 10, 10))


def test_vqav2_questions_and_annotations(tmp_path):
  d = str(tmp_path)
  _vqa_files(d, "train2014", [11, 12], [1, 1])
  _vqa_files(d, "val2014", [21, 22, 23], [2, 3, 4])
  os.remove(os.path.join(d, "val2014", "COCO_val2014_000000000004.jpg"))
  task = tasks.load_task("vqav2", d)
  assert (task.kind, task.metric) == ("vqa", "vqa_accuracy")
  assert task.metric_options == {"variant": "official"}
  assert [e.id for e in task.train] == ["11", "12"]
  assert [e.id for e in task.test] == ["21", "22"]
  assert task.skipped == {"missing_image": 1}
  e = task.test[0]
  assert e.fields == {"question": "What is 21?", "answer": "red", "first_answer": "red"}
  assert e.references == ("red",) * 7 + ("maroon",) * 3
  assert e.image_paths == (os.path.join(d, "val2014", "COCO_val2014_000000000002.jpg"),)


def test_vqav2_question_types_filter_the_queries_only(tmp_path):
  d = str(tmp_path)
  _vqa_files(d, "train2014", [11, 12], [1, 1])
  _vqa_files(d, "val2014", [21, 22, 23], [2, 3, 4])
  path = os.path.join(d, "v2_mscoco_val2014_annotations.json")
  with open(path) as f:
    annotations = json.load(f)
  annotations["annotations"][1]["question_type"] = "what color is the"
  write_json(path, annotations)
  task = tasks.load_task("vqav2", d, question_types=["what color is the"])
  assert [e.id for e in task.test] == ["22"]
  assert [e.id for e in task.train] == ["11", "12"]  # demonstrations: the whole train split
  assert [e.id for e in tasks.load_task("vqav2", d, question_types="what is").test] == ["21", "23"]
  read = lambda types: [e.id for e in tasks.vqa.read_vqa(
      os.path.join(d, "v2_OpenEnded_mscoco_val2014_questions.json"), os.path.join(d, "val2014"),
      annotations_path=path, question_types=types)]
  assert read("what is") == ["21", "23"]  # one type, not the characters of a string
  assert read("what is the") == []  # "what is" is in that string, but is not that type
  with pytest.raises(ValueError, match=r"no usable questions of question_types \['how many'\]"):
    tasks.load_task("vqav2", d, question_types=["how many"])
  write_json(os.path.join(d, "q.json"), {"questions": [
      {"image_id": 2, "question": "Why?", "question_id": 70}]})
  with pytest.raises(ValueError, match="annotations file"):
    tasks.vqa.read_vqa(os.path.join(d, "q.json"), os.path.join(d, "val2014"),
                       image_pattern="COCO_val2014_{image_id:012d}.jpg", question_types=["why"])


def test_vqa_image_pattern_and_test_dev_without_annotations(tmp_path):
  d = str(tmp_path)
  write_json(os.path.join(d, "q.json"), {"questions": [
      {"image_id": 7, "question": "Why?", "question_id": 70}]})
  jpeg(os.path.join(d, "imgs", "img-0007.jpg"), (1, 2, 3))
  with pytest.raises(ValueError, match="image_pattern"):
    tasks.vqa.read_vqa(os.path.join(d, "q.json"), os.path.join(d, "imgs"))
  [e] = tasks.vqa.read_vqa(os.path.join(d, "q.json"), os.path.join(d, "imgs"),
                           image_pattern="img-{image_id:04d}.jpg")
  assert (e.id, e.references, e.fields["answer"]) == ("70", (), "")


def test_vizwiz_and_textvqa_layouts(tmp_path):
  d = str(tmp_path)
  for split in ("train", "val"):
    name = f"VizWiz_{split}_00000000.jpg"
    jpeg(os.path.join(d, "vizwiz", split, name), (9, 9, 9))
    write_json(os.path.join(d, "vizwiz", f"{split}.json"), [
        {"image": name, "question": "What is this?", "answerable": 1, "answer_type": "other",
         "answers": [{"answer": "soup", "answer_confidence": "yes"}] * 10}])
  task = tasks.load_task("vizwiz", os.path.join(d, "vizwiz"))
  assert task.metric_options == {"variant": "openflamingo"}
  assert task.test[0].id == "VizWiz_val_00000000.jpg"
  assert task.test[0].references == ("soup",) * 10
  tv = os.path.join(d, "textvqa")
  jpeg(os.path.join(tv, "train_images", "abc123.jpg"), (5, 5, 5))
  for split in ("train", "val"):
    write_json(os.path.join(tv, f"TextVQA_0.5.1_{split}.json"), {"dataset_name": "textvqa",
        "data": [{"question_id": 5 if split == "train" else 6, "image_id": "abc123",
                  "question": "what brand?", "answers": ["nokia"] * 9 + ["NOKIA"]}]})
  task = tasks.load_task("textvqa", tv)
  assert [e.id for e in task.test] == ["6"]
  assert task.test[0].references[-1] == "NOKIA"
  assert task.test[0].image_paths == (os.path.join(tv, "train_images", "abc123.jpg"),)


def test_hateful_memes(tmp_path):
  d = str(tmp_path)
  rows = []
  for i, label in enumerate([0, 1, 1, 0]):
    jpeg(os.path.join(d, "img", f"{i:05d}.png"), (i, i, i))
    rows.append({"id": i, "img": f"img/{i:05d}.png", "label": label, "text": f"meme {i}"})
  write_jsonl(os.path.join(d, "train.jsonl"), rows[:2])
  write_jsonl(os.path.join(d, "dev_seen.jsonl"), rows[2:] + [
      {"id": 9, "img": "img/gone.png", "label": 0, "text": "x"}], extra_lines=["{bad"])
  task = tasks.load_task("hateful_memes", d)
  assert (task.metric, task.class_names) == ("roc_auc", ("no", "yes"))
  assert [(e.id, e.label, e.fields["answer"]) for e in task.test] == [("2", 1, "yes"),
                                                                      ("3", 0, "no")]
  assert task.test[0].fields["text"] == "meme 2"
  assert task.skipped == {"missing_image": 1, "bad_json_line": 1}


def test_image_folders_imagenet_and_rendered_sst2(tmp_path):
  d = str(tmp_path)
  for split in ("train", "val"):
    for j, cls in enumerate(["n01440764", "n01443537"]):
      jpeg(os.path.join(d, split, cls, f"{split}_{j}.JPEG"), (j, 0, 0))
  open(os.path.join(d, "val", "n01440764", "README.txt"), "w").close()
  names = {"n01440764": "tench", "n01443537": "goldfish"}
  task = tasks.load_task("imagenet", d, class_names=names)
  assert (task.metric, task.class_names) == ("accuracy", ("tench", "goldfish"))
  assert [(e.id, e.label, e.fields["answer"]) for e in task.test] == [
      ("n01440764/val_0.JPEG", 0, "tench"), ("n01443537/val_1.JPEG", 1, "goldfish")]
  assert task.skipped == {"not_an_image_file": 1}
  with pytest.raises(ValueError, match="lacks display names"):
    tasks.load_task("imagenet", d, class_names={"n01440764": "tench"})
  s = os.path.join(d, "sst2")
  for split in ("train", "test"):
    for cls in ("negative", "positive"):
      jpeg(os.path.join(s, split, cls, "0.png"), (0, 0, 0))
  task = tasks.load_task("rendered_sst2", s)
  assert (task.class_names, task.template) == (("negative", "positive"), "rendered_sst2")


def test_text_multiple_choice(tmp_path):
  d = str(tmp_path)
  write_jsonl(os.path.join(d, "train.jsonl"), [
      {"question": "2+2?", "choices": ["3", "4"], "label": 1}])
  write_jsonl(os.path.join(d, "test.jsonl"), [
      {"context": "Sky color?", "choices": ["blue", "green", "red"], "label": 0},
      {"question": "bad", "choices": ["a"], "label": 0}])
  task = tasks.load_task("text_mc", d)
  [e] = task.test
  assert (e.id, e.label, e.choices, e.images()) == ("test-1", 0, ("blue", "green", "red"), [])
  assert task.candidates(e) == ("blue", "green", "red")
  assert task.skipped == {"bad_multiple_choice_row": 1}


def test_tfds_data_source(tmp_path):
  tf = pytest.importorskip("tensorflow")
  tfds = pytest.importorskip("tensorflow_datasets")
  import numpy as np
  imgs = np.stack([np.full((8, 8, 3), 30 * i, np.uint8) for i in range(3)])

  def ds(n):
    return tf.data.Dataset.from_tensor_slices({
        "image": imgs[:n], "captions": {"text": [[b"a gray square", b"gray"]] * n},
        "label": np.arange(n) % 2, "id": [b"x%d" % i for i in range(n)]})
  builder = tfds.dataset_builders.TfDataBuilder(
      name="tinycap", config="default", version="1.0.0", data_dir=str(tmp_path),
      split_datasets={"train": ds(3), "test": ds(2)}, file_format="array_record",
      features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(shape=(8, 8, 3)),
          "captions": {"text": tfds.features.Sequence(tfds.features.Text())},
          "label": tfds.features.ClassLabel(names=["neg", "pos"]),
          "id": tfds.features.Text()}))
  builder.download_and_prepare()
  task = tasks.load_task("tfds", str(tmp_path), dataset="tinycap", kind="caption",
                         id_key="id", references_key="captions/text", label_key="label")
  assert (len(task.train), len(task.test), task.class_names) == (3, 2, ("neg", "pos"))
  [e] = [e for e in task.test if e.id == "x1"]  # TFDS shuffles records when writing
  assert (e.references, e.label) == (("a gray square", "gray"), 1)
  assert e.fields == {"caption": "a gray square", "answer": "a gray square",
                      "first_answer": "a gray square"}
  pixels = np.asarray(Image.open(io.BytesIO(e.images()[0])))
  np.testing.assert_array_equal(pixels, imgs[1])  # PNG: lossless


def test_sample_eval_set_is_seeded():
  examples = [Example(id=str(i)) for i in range(50)]
  a = tasks.sample_eval_set(examples, 10, seed=3)
  assert [e.id for e in a] == [e.id for e in tasks.sample_eval_set(examples, 10, seed=3)]
  assert len({e.id for e in a}) == 10
  assert [e.id for e in tasks.sample_eval_set(examples, 0, seed=3)] == [str(i) for i in range(50)]


# ---------------------------------------------------------------- prompts

def _ex(i, **fields):
  return Example(id=str(i), fields=fields, image_bytes=(f"img{i}".encode(),))


CAPTION_DEMOS = [_ex(i, caption=f"a cat number {i}.") for i in range(4)]


def test_caption_prompts_exact():
  t = prompts.get_template("caption")
  q = _ex(9, caption="hidden reference")
  p0 = prompts.build_prompt(t, CAPTION_DEMOS[:2], q, text_only_demos=True)
  assert p0.segments == [
      {"text": "An image of a cat number 0.\nAn image of a cat number 1.\n"},
      {"image": b"img9"}, {"text": "An image of"}]
  assert (p0.candidates, p0.num_images) == ((), 1)
  p2 = prompts.build_prompt(t, CAPTION_DEMOS[:2], q)
  assert p2.segments == [
      {"image": b"img0"}, {"text": "An image of a cat number 0.\n"},
      {"image": b"img1"}, {"text": "An image of a cat number 1.\n"},
      {"image": b"img9"}, {"text": "An image of"}]
  p4 = prompts.build_prompt(t, CAPTION_DEMOS, q)
  assert p4.segments == [s for i in range(4) for s in (
      {"image": f"img{i}".encode()}, {"text": f"An image of a cat number {i}.\n"})] + [
      {"image": b"img9"}, {"text": "An image of"}]


def test_vqa_prompts_exact():
  t = prompts.get_template("vqa")
  demos = [_ex(i, question=f"How many {i}?", answer=str(i)) for i in range(4)]
  q = _ex(9, question="What color is the bus?", answer="red")
  assert prompts.build_prompt(t, demos[:2], q, text_only_demos=True).segments == [
      {"text": "Question: How many 0? Answer: 0\nQuestion: How many 1? Answer: 1\n"},
      {"image": b"img9"}, {"text": "Question: What color is the bus? Answer:"}]
  assert prompts.build_prompt(t, demos[:2], q).segments == [
      {"image": b"img0"}, {"text": "Question: How many 0? Answer: 0\n"},
      {"image": b"img1"}, {"text": "Question: How many 1? Answer: 1\n"},
      {"image": b"img9"}, {"text": "Question: What color is the bus? Answer:"}]
  p4 = prompts.build_prompt(t, demos, q)
  assert p4.num_images == 5
  assert p4.segments[6:] == [{"image": b"img3"}, {"text": "Question: How many 3? Answer: 3\n"},
                             {"image": b"img9"},
                             {"text": "Question: What color is the bus? Answer:"}]


def test_classification_and_hateful_memes_prompts_with_candidates():
  t = prompts.get_template("classification")
  demos = [_ex(0, answer="tench"), _ex(1, answer="goldfish")]
  p = prompts.build_prompt(t, demos, _ex(9, answer="tench"), candidates=("tench", "goldfish"))
  assert p.segments == [{"image": b"img0"}, {"text": "This is an image of tench\n"},
                        {"image": b"img1"}, {"text": "This is an image of goldfish\n"},
                        {"image": b"img9"}, {"text": "This is an image of"}]
  assert p.candidates == (" tench", " goldfish")
  hm = prompts.get_template("hateful_memes")
  p = prompts.build_prompt(hm, [_ex(0, text="love wins", answer="no")],
                           _ex(9, text="you're all idiots", answer="yes"),
                           candidates=("no", "yes"), text_only_demos=True)
  assert p.segments == [
      {"text": 'is an image with written: "love wins" on it. Is it hateful? Answer: no\n'},
      {"image": b"img9"},
      {"text": 'is an image with written: "you\'re all idiots" on it. Is it hateful? Answer:'}]
  assert p.candidates == (" no", " yes")


def test_text_only_multiple_choice_prompt_and_overrides():
  t = prompts.get_template("multiple_choice")
  demo = Example(id="d", fields={"question": "2+2?", "answer": "4"})
  q = Example(id="q", fields={"question": "Sky?", "answer": "blue"}, choices=("blue", "red"))
  p = prompts.build_prompt(t, [demo], q, candidates=q.choices)
  assert p.segments == [{"text": "2+2?\nAnswer: 4\n\nSky?\nAnswer:"}]
  assert p.candidates == (" blue", " red")
  t2 = prompts.get_template("caption", {"prompt": "A photo of", "separator": " "})
  assert prompts.build_prompt(t2, CAPTION_DEMOS[:1], _ex(9), text_only_demos=True).segments \
      == [{"text": "A photo of a cat number 0. "}, {"image": b"img9"}, {"text": "A photo of"}]
  with pytest.raises(ValueError, match="not among prompt"):
    prompts.get_template("caption", {"prefix": "x"})
  with pytest.raises(KeyError, match="needs fields"):
    prompts.build_prompt(prompts.get_template("vqa"), [], _ex(9, caption="x"))
