"""kosmos-eval end to end: a tiny random model in a workdir, COCO (Karpathy json) and VQAv2
files made here, 0/4/8-shot runs -> results + predictions files whose metrics recompute."""

import io
import json
import os

import numpy as np
import pytest
from flax import nnx
from PIL import Image

import tiny
from kosmos import defaults
from kosmos import workdir as workdir_lib
from kosmos.data import tokenizer as tokenizer_lib
from kosmos.eval import main as eval_main
from kosmos.eval import runner
from kosmos.eval import tasks as tasks_lib
from kosmos.model import multimodal

WORDS = ["a", "dog", "cat", "red", "ball", "on", "grass", "two", "birds", "sky"]


def _jpeg(rng) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(buf, "JPEG")
  return buf.getvalue()


def _sentence(rng, n=4) -> str:
  return " ".join(rng.choice(WORDS, size=n))


def _make_coco(root, rng):
  """dataset_coco.json (Karpathy layout) with 12 train and 3 test images in val2014/."""
  os.makedirs(os.path.join(root, "val2014"))
  images = []
  for i in range(15):
    name = f"COCO_val2014_{i:012d}.jpg"
    with open(os.path.join(root, "val2014", name), "wb") as f:
      f.write(_jpeg(rng))
    images.append({"filepath": "val2014", "filename": name, "cocoid": i, "imgid": i,
                   "split": "train" if i < 12 else "test",
                   "sentences": [{"raw": _sentence(rng), "tokens": []} for _ in range(3)]})
  with open(os.path.join(root, "dataset_coco.json"), "w") as f:
    json.dump({"images": images, "dataset": "coco"}, f)


def _make_vqav2(root, rng):
  """VQAv2 questions + annotations for train2014 (12) and val2014 (3)."""
  for split, count, offset in (("train2014", 12, 0), ("val2014", 3, 100)):
    os.makedirs(os.path.join(root, split))
    questions, annotations = [], []
    for i in range(count):
      image_id = offset + i
      with open(os.path.join(root, split, f"COCO_{split}_{image_id:012d}.jpg"), "wb") as f:
        f.write(_jpeg(rng))
      qid = image_id * 10
      answers = [str(rng.choice(["yes", "no", "two", "red"])) for _ in range(10)]
      questions.append({"image_id": image_id, "question": "what is it?", "question_id": qid})
      annotations.append({"question_id": qid, "image_id": image_id, "answer_type": "other",
                          "multiple_choice_answer": answers[0],
                          "answers": [{"answer": a, "answer_id": j + 1,
                                       "answer_confidence": "yes"} for j, a in enumerate(answers)]})
    with open(os.path.join(root, f"v2_OpenEnded_mscoco_{split}_questions.json"), "w") as f:
      json.dump({"data_subtype": split, "questions": questions}, f)
    with open(os.path.join(root, f"v2_mscoco_{split}_annotations.json"), "w") as f:
      json.dump({"annotations": annotations}, f)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  directory = str(tmp_path_factory.mktemp("wd"))
  config = defaults.base()
  config.model = tiny.model_config("magneto", "resampler", "xpos")
  config.model.decoder.update(vocab_size=tokenizer_lib.BYTE_VOCAB_SIZE, max_len=512)
  model = multimodal.Multimodal(config.model, rngs=nnx.Rngs(0))
  workdir_lib.save_config(config, directory)
  workdir_lib.save_params(directory, 7, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  return directory


def _check(out, task_name, shots, trials, data, workdir):
  with open(out) as f:
    result = json.load(f)
  assert result["task"] == task_name and result["step"] == 7
  assert [r["shots"] for r in result["rows"]] == shots
  pred_path = os.path.join(os.path.dirname(out), result["predictions_file"])
  with open(pred_path) as f:
    predictions = json.load(f)
  task = tasks_lib.load_task(task_name, data)
  for row in result["rows"]:
    assert set(row) >= {"shots", "metric", "values", "mean", "std", "trials", "num_queries"}
    assert row["num_queries"] == 3 and row["trials"] == trials and len(row["values"]) == trials
    per_trial = predictions[str(row["shots"])]
    assert len(per_trial) == trials
    for value, preds in zip(row["values"], per_trial):
      assert sorted(p["id"] for p in preds) == sorted(e.id for e in task.test)
      assert value == pytest.approx(runner.score_predictions(task, preds))
      assert 0.0 <= value <= (1000.0 if task.kind == "caption" else 100.0)
    assert row["mean"] == pytest.approx(np.mean(row["values"]))
    assert row["std"] == pytest.approx(np.std(row["values"]))
  with open(os.path.join(workdir, "eval", "7", f"{task_name}.json")) as f:
    assert json.load(f)["rows"] == result["rows"]
  return result, predictions


def test_coco_captioning_0_4_8_shots(workdir, tmp_path, capsys):
  data = str(tmp_path / "coco")
  _make_coco(data, np.random.default_rng(0))
  out = str(tmp_path / "res" / "coco.json")
  assert eval_main.main(["--workdir", workdir, "--task", "coco", "--data", data,
                         "--shots", "0,4,8", "--out", out, "--no-progress",
                         "--caption-tokens", "6", "--batch-size", "8"]) == 0
  result, predictions = _check(out, "coco", [0, 4, 8], 1, data, workdir)
  assert "coco (cider" in capsys.readouterr().out
  assert result["settings"]["caption_beams"] == 3
  raw = predictions["4"][0][0]["raw"]
  assert isinstance(raw, str) and len(raw.encode()) <= 6 * 4  # <= 6 byte tokens


def test_vqav2_0_4_8_shots_two_trials(workdir, tmp_path):
  data = str(tmp_path / "vqa")
  _make_vqav2(data, np.random.default_rng(1))
  out = str(tmp_path / "vqa.json")
  assert eval_main.main(["--workdir", workdir, "--task", "vqav2", "--data", data,
                         "--shots", "0,4,8", "--trials", "2", "--out", out, "--no-progress",
                         "--batch-size", "8"]) == 0
  result, predictions = _check(out, "vqav2", [0, 4, 8], 2, data, workdir)
  # Different seeds pick different demonstrations, so trial prompts differ.
  assert result["rows"][1]["demos"] == "random" and result["rows"][0]["demos"] == "text_only_random"


def test_image_folder_classification_with_rices(workdir, tmp_path):
  rng = np.random.default_rng(2)
  data = str(tmp_path / "imagenet")
  for split, count in (("train", 4), ("val", 2)):
    for name in ("cat", "dog"):
      os.makedirs(os.path.join(data, split, name))
      for i in range(count):
        with open(os.path.join(data, split, name, f"{i}.jpg"), "wb") as f:
          f.write(_jpeg(rng))
  config = workdir_lib.load_config(workdir)
  _, params = workdir_lib.restore_params(workdir)
  settings = runner.Settings(batch_size=8)
  result = runner.evaluate(config, params, "imagenet", data, [0, 2], rices=True, trials=2,
                           settings=settings, show_progress=False,
                           rices_cache_dir=str(tmp_path / "rices"))
  task = tasks_lib.load_task("imagenet", data)
  assert [r["demos"] for r in result["rows"]] == ["text_only_random", "rices"]
  assert [r["trials"] for r in result["rows"]] == [2, 1]  # RICES is deterministic: one trial
  assert os.path.exists(tmp_path / "rices" / "imagenet.own_vision.npy")
  for row in result["rows"]:
    for value, preds in zip(row["values"], result["predictions"][str(row["shots"])]):
      assert len(preds) == 4
      for p in preds:
        assert len(p["logprobs"]) == 2 and p["prediction"] == int(np.argmax(p["logprobs"]))
      assert value == pytest.approx(runner.score_predictions(task, preds))
      assert value == pytest.approx(100 * np.mean([p["prediction"] == p["label"] for p in preds]))
