"""POPE: the yes/no reading and metrics against hand-computed cases, and the task end to
end through kosmos-eval on POPE-format files this test writes."""

import json
import os

import pytest

import image_files
import tiny
from kosmos.data import chat
from kosmos.eval import main as eval_main
from kosmos.eval import metrics
from kosmos.eval import tasks as tasks_lib


@pytest.mark.parametrize("text, want", [
    ("Yes, there is a dog in the image.", "yes"),
    ("No, there is no dog.", "no"),
    ("There is not a dog", "no"),
    ("Yes. No dog though.", "yes"),  # only the first sentence counts
    ("no", "no"),
    ("No,", "no"),  # the comma is dropped before splitting
    ("Nope", "yes"),  # not one of the words
    ("NO", "yes"),  # case-sensitive, as POPE's script
    ("", "yes"),
    ("cannot", "yes"),
])
def test_pope_answer(text, want):
  assert metrics.pope_answer(text) == want


def test_pope_metrics_hand_computed():
  answers = ["yes", "yes", "no", "no", "yes", "no", "yes", "yes"]
  labels = ["yes", "no", "no", "yes", "yes", "no", "no", "yes"]
  # tp: 0, 4, 7 -> 3; fp: 1, 6 -> 2; tn: 2, 5 -> 2; fn: 3 -> 1.
  got = metrics.pope(answers, labels)
  assert (got["tp"], got["fp"], got["tn"], got["fn"]) == (3, 2, 2, 1)
  assert got["accuracy"] == pytest.approx(5 / 8)
  assert got["precision"] == pytest.approx(3 / 5)
  assert got["recall"] == pytest.approx(3 / 4)
  assert got["f1"] == pytest.approx(2 * (3 / 5) * (3 / 4) / (3 / 5 + 3 / 4))  # 2/3
  assert got["yes_ratio"] == pytest.approx(5 / 8)
  assert metrics.score(metrics.POPE_F1, answers, labels) == pytest.approx(100 * 2 / 3)
  # All "no": no positive prediction, precision / recall / f1 are 0 (not a division error).
  none = metrics.pope(["no"] * 4, ["yes", "no", "no", "yes"])
  assert none == {"accuracy": 0.5, "precision": 0.0, "recall": 0.0, "f1": 0.0,
                  "yes_ratio": 0.0, "tp": 0, "fp": 0, "tn": 2, "fn": 2}
  with pytest.raises(ValueError, match="'yes' or 'no'"):
    metrics.pope(["maybe"], ["yes"])


def _write_pope(root, split, rows):
  os.makedirs(os.path.join(root, "val2014"), exist_ok=True)
  for i in range(3):
    path = os.path.join(root, "val2014", f"COCO_val2014_{i:012d}.jpg")
    with open(path, "wb") as f:
      f.write(image_files.encode(image_files.noise(i), "JPEG"))
  with open(os.path.join(root, f"coco_pope_{split}.json"), "w") as f:
    for row in rows:
      f.write(json.dumps(row) + "\n")


ROWS = [{"question_id": i, "image": f"COCO_val2014_{i % 3:012d}.jpg", "image_id": i % 3,
         "text": f"Is there a {obj} in the image?", "label": label}
        for i, (obj, label) in enumerate([("dog", "yes"), ("cat", "no"), ("car", "yes"),
                                          ("bus", "no"), ("tie", "yes"), ("cup", "no")])]


def test_pope_task_loader(tmp_path):
  rows = ROWS + [{"question_id": 99, "image": "missing.jpg", "text": "Is there a x?",
                  "label": "yes"}, {"question_id": 98, "image": "COCO_val2014_000000000000.jpg",
                                    "text": "Is there a y?", "label": "maybe"}]
  _write_pope(str(tmp_path), "adversarial", rows)
  task = tasks_lib.load_task("pope", str(tmp_path), split="adversarial")
  assert task.name == "pope_adversarial" and task.metric == metrics.POPE_F1
  assert [e.id for e in task.test] == [str(i) for i in range(6)]
  assert task.test[1].fields["question"] == "Is there a cat in the image?"
  assert task.test[1].references == ("no",)
  assert dict(task.skipped) == {"missing_image": 1, "bad_pope_row": 1}
  with pytest.raises(ValueError, match="split"):
    tasks_lib.load_task("pope", str(tmp_path), split="hard")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  return tiny.byte_workdir(str(tmp_path_factory.mktemp("wd")),
                           chat_template=chat.config("llava_v1"), max_len=256, step=3)


def test_pope_through_kosmos_eval_chat(workdir, tmp_path):
  """POPE as chat models are evaluated: each question one user turn of the workdir's
  LLaVA v1 template (the plain prompt path is the VQA tasks' own)."""
  data = str(tmp_path / "pope")
  _write_pope(data, "random", ROWS)
  out = str(tmp_path / "pope.json")
  assert eval_main.main(["--workdir", workdir, "--task", "pope", "--data", data, "--shots", "0",
                         "--out", out, "--no-progress", "--vqa-tokens", "4", "--chat"]) == 0
  with open(out) as f:
    result = json.load(f)
  with open(os.path.join(os.path.dirname(out), result["predictions_file"])) as f:
    predictions = json.load(f)["0"][0]
  assert result["task"] == "pope_random" and result["metric"] == metrics.POPE_F1
  assert sorted(p["id"] for p in predictions) == [str(i) for i in range(6)]
  answers = [p["prediction"] for p in predictions]
  assert answers == [metrics.pope_answer(p["raw"]) for p in predictions]
  labels = [p["references"][0] for p in predictions]
  figures = metrics.pope(answers, labels)
  row = result["rows"][0]
  assert row["values"] == [pytest.approx(100 * figures["f1"])]
  assert row["details"][0] == pytest.approx(
      {k: v if k in ("tp", "fp", "tn", "fn") else 100 * v for k, v in figures.items()})
  assert result["chat_template"]["name"] == "llava_v1"


class _RecordingEngine:
  """Records the prompts `run_trial` generates for and answers `answer` to each."""
  image_size, grounding = 32, None

  def __init__(self, answer="No."):
    self.prompts = []
    self.answer = answer

  def generate(self, prompts, **kwargs):
    from kosmos.infer import engine as engine_lib
    self.prompts += [list(p) for p in prompts]
    return [engine_lib.Generation(text=self.answer, tokens=[], logprob=0.0, score=0.0)
            for _ in prompts]


@pytest.mark.parametrize("raw, plain, chatted", [
    # A base model's continuation runs on into a question and answer of its own: only the
    # text before the next marker is its answer to POPE's question.
    (" yes Question: Is there a cat in the image? Answer: no", "yes", "no"),
    (" yes\nIs there a cat? no", "yes", "no"),
    (" no Question: Is there a cat in the image? Answer: yes", "no", "no"),
    ("Yes, there is a dog in the image.", "yes", "yes"),
])
def test_pope_reads_a_plain_prompt_answer_before_its_run_on(tmp_path, raw, plain, chatted):
  """Without --chat the answer is cut at the next "Question"/"Answer" marker or newline
  before POPE's rule; with --chat POPE's rule reads the whole assistant turn, as its
  evaluate.py does."""
  from kosmos.eval import runner
  _write_pope(str(tmp_path), "random", ROWS[:1])
  task = tasks_lib.load_task("pope", str(tmp_path))
  engine = _RecordingEngine(raw)
  [pred] = runner.run_trial(engine, task, task.test, [[]], text_only=False,
                            settings=runner.Settings())
  assert (pred["prediction"], pred["raw"]) == (plain, raw)
  assert engine.prompts[0][-1]["text"] == "Question: Is there a dog in the image? Answer:"
  [pred] = runner.run_trial(engine, task, task.test, [[]], text_only=False,
                            settings=runner.Settings(), chat_template=chat.get("llava_v1"))
  assert pred["prediction"] == chatted


def test_chat_query_is_the_question_not_the_vqa_prompt(tmp_path):
  """With --chat, the user's message is POPE's question; the chat template adds the roles
  (no "Question: ... Answer:" inside "USER: ... ASSISTANT:"). A `prompt` option still wins."""
  from kosmos.eval import runner
  _write_pope(str(tmp_path), "random", ROWS[:1])
  task = tasks_lib.load_task("pope", str(tmp_path))
  template = chat.get("llava_v1")
  engine = _RecordingEngine()
  preds = runner.run_trial(engine, task, task.test, [[]], text_only=True,
                           settings=runner.Settings(), chat_template=template)
  assert preds[0]["prediction"] == "no"
  texts = [s["text"] for s in engine.prompts[0] if "text" in s]
  assert texts == [template.system + " USER: ", "\nIs there a dog in the image? ASSISTANT:"]
  kosmos = chat.get("kosmos")
  runner.run_trial(engine, task, task.test, [[]], text_only=True, settings=runner.Settings(),
                   chat_template=kosmos)
  assert [s["text"] for s in engine.prompts[1] if "text" in s] == [
      "Question: ", "Is there a dog in the image? Answer:"]
  task.template_overrides["prompt"] = "{question} Reply yes or no."
  runner.run_trial(engine, task, task.test, [[]], text_only=True, settings=runner.Settings(),
                   chat_template=template)
  assert engine.prompts[2][-1]["text"] == ("\nIs there a dog in the image? Reply yes or no. "
                                           "ASSISTANT:")
