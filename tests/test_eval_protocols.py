"""The "openflamingo" eval protocol: prompts, demonstrations, decoding settings, scoring and
post-processing against what OpenFlamingo's eval code does (open_flamingo/eval/
evaluate.py, models/open_flamingo.py, vqa_metric.py, ok_vqa_utils.py)."""

import io
import json
import os
import types

import numpy as np
import pytest
from PIL import Image

from kosmos.eval import okvqa_stem
from kosmos.eval import prompts
from kosmos.eval import protocols
from kosmos.eval import runner
from kosmos.eval.tasks import Example, Task

OF = protocols.get_protocol("openflamingo")


# OpenFlamingo's prompt functions (models/open_flamingo.py), written out here.
def of_vqa_prompt(question, answer=None):
  return (f"<image>Question:{question} Short answer:{answer if answer is not None else ''}"
          f"{'<|endofchunk|>' if answer is not None else ''}")


def of_caption_prompt(caption=None):
  return (f"<image>Output:{caption if caption is not None else ''}"
          f"{'<|endofchunk|>' if caption is not None else ''}")


def of_imagenet_prompt(label=None):
  return (f"<image>Output:{label if label is not None else ''}"
          f"{'<|endofchunk|>' if label is not None else ''}")


def of_hateful_memes_prompt(text, label=None):
  return (f"<image>is an image with: '{text}' written on it. Is it hateful? Answer:"
          f"{label if label is not None else ''}{'<|endofchunk|>' if label is not None else ''}")


def png(color) -> bytes:
  buf = io.BytesIO()
  Image.new("RGB", (8, 8), color).save(buf, format="PNG")
  return buf.getvalue()


def render(segments) -> str:
  return "".join("<image>" if "image" in s else s["text"] for s in segments)


def of_prompt(task: Task, demos, query, text_only=False):
  tpl = prompts.get_template(protocols.template_for(OF, task))
  built = prompts.build_prompt(tpl, demos, query, candidates=task.class_names,
                               text_only_demos=text_only)
  return render(built.segments), built.candidates


def _task(name, kind, template, class_names=()):
  return Task(name=name, kind=kind, metric="x", template=template, train=[], test=[],
              class_names=class_names)


def test_prompt_strings_equal_openflamingo_for_every_task():
  img = (png((1, 2, 3)),)
  # Captioning (evaluate_captioning): demos "prompt(caption.strip()) + \n", then query.
  caps = [Example(id=str(i), fields={"caption": c}, image_bytes=img)
          for i, c in enumerate(["a dog runs.", "two cats"])]
  q = Example(id="q", fields={"caption": "unused"}, image_bytes=img)
  expected = "".join(of_caption_prompt(d.fields["caption"].strip()) + "\n" for d in caps)
  assert of_prompt(_task("coco", "caption", "caption"), caps, q)[0] == \
      expected + of_caption_prompt()
  assert expected + of_caption_prompt() == (
      "<image>Output:a dog runs.<|endofchunk|>\n<image>Output:two cats<|endofchunk|>\n"
      "<image>Output:")
  # VQA (evaluate_vqa): demos "prompt(question, answers[0]) + \n".
  vqa = [Example(id="1", fields={"question": "What color?", "answer": "maroon",
                                 "first_answer": "red"}, image_bytes=img),
         Example(id="2", fields={"question": "How many?", "answer": "2",
                                 "first_answer": "two"}, image_bytes=img)]
  vq = Example(id="q", fields={"question": "Is it a dog?"}, image_bytes=img)
  expected = "".join(of_vqa_prompt(d.fields["question"], d.fields["first_answer"]) + "\n"
                     for d in vqa) + of_vqa_prompt("Is it a dog?")
  for name in ("vqav2", "okvqa", "vizwiz", "textvqa"):
    assert of_prompt(_task(name, "vqa", "vqa"), vqa, vq)[0] == expected
  assert expected == ("<image>Question:What color? Short answer:red<|endofchunk|>\n"
                      "<image>Question:How many? Short answer:two<|endofchunk|>\n"
                      "<image>Question:Is it a dog? Short answer:")
  # 0 shots: the same demo text without "<image>", no demo images.
  text, _ = of_prompt(_task("vqav2", "vqa", "vqa"), vqa, vq, text_only=True)
  assert text == expected.replace("<image>", "", 2)
  # HatefulMemes (evaluate_classification): demos joined with nothing in between; the
  # classes are scored right after "Answer:".
  hm_task = _task("hateful_memes", "classification", "hateful_memes", ("no", "yes"))
  memes = [Example(id="1", fields={"text": "its their character", "answer": "no"},
                   image_bytes=img),
           Example(id="2", fields={"text": "look how many people", "answer": "yes"},
                   image_bytes=img)]
  mq = Example(id="q", fields={"text": "love everyone"}, image_bytes=img)
  text, candidates = of_prompt(hm_task, memes, mq)
  assert text == "".join(of_hateful_memes_prompt(d.fields["text"], d.fields["answer"])
                         for d in memes) + of_hateful_memes_prompt("love everyone")
  assert candidates == ("no", "yes")
  # ImageNet: "<image>Output:{class}<|endofchunk|>" (OpenFlamingo's current code).
  in_task = _task("imagenet", "classification", "classification", ("tabby cat", "goldfish"))
  shots = [Example(id="1", fields={"answer": "goldfish"}, image_bytes=img)]
  text, candidates = of_prompt(in_task, shots, Example(id="q", image_bytes=img))
  assert text == of_imagenet_prompt("goldfish") + of_imagenet_prompt()
  assert candidates == ("tabby cat", "goldfish")
  # Tasks OpenFlamingo does not evaluate are refused, not silently given kosmos prompts.
  with pytest.raises(ValueError, match="no prompt for task 'rendered_sst2'"):
    protocols.template_for(OF, _task("rendered_sst2", "classification", "rendered_sst2", ("a",)))


def _vqav2_files(d):
  """VQAv2 files whose multiple_choice_answer differs from the first annotator answer."""
  for split, qids in (("train2014", [11, 12, 13]), ("val2014", [21])):
    os.makedirs(os.path.join(d, split))
    questions, annotations = [], []
    for q in qids:
      with open(os.path.join(d, split, f"COCO_{split}_{q:012d}.jpg"), "wb") as f:
        f.write(png((q * 9, 0, 0)))
      questions.append({"image_id": q, "question": f"What is {q}?", "question_id": q})
      answers = [f"first{q}"] + [f"common{q}"] * 9
      annotations.append({"question_id": q, "image_id": q, "answer_type": "other",
                          "multiple_choice_answer": f"common{q}", "question_type": "what is",
                          "answers": [{"answer": a, "answer_id": j + 1}
                                      for j, a in enumerate(answers)]})
    with open(os.path.join(d, f"v2_OpenEnded_mscoco_{split}_questions.json"), "w") as f:
      json.dump({"data_subtype": split, "questions": questions}, f)
    with open(os.path.join(d, f"v2_mscoco_{split}_annotations.json"), "w") as f:
      json.dump({"annotations": annotations}, f)


class FakeEngine:
  """Records what the runner asks for; answers every generation with `reply`."""

  image_size = 8

  def __init__(self, reply):
    self.reply = reply
    self.calls = []

  def generate(self, prompts_, **kwargs):
    self.calls.append((prompts_, kwargs))
    return [types.SimpleNamespace(text=self.reply) for _ in prompts_]


def _mean_color(encoded):
  return np.stack([np.asarray(Image.open(io.BytesIO(b)), np.float32).mean((0, 1))
                   for b in encoded])


def test_first_answer_demos_settings_postprocessing_and_metric(tmp_path):
  d = str(tmp_path)
  _vqav2_files(d)
  engine = FakeEngine(" The Red. Question: what")
  result = runner.evaluate(None, None, "vqav2", d, [2], protocol="openflamingo",
                           engine=engine, show_progress=False)
  [(built, kwargs)] = engine.calls
  text = render(built[0])
  # Demonstrations show the FIRST annotator answer, never multiple_choice_answer.
  assert "Short answer:first1" in text and "common" not in text
  assert text.count("<|endofchunk|>\n") == 2 and text.endswith(
      "<image>Question:What is 21? Short answer:")
  assert (kwargs["num_beams"], kwargs["max_new_tokens"], kwargs["length_penalty"]) == (3, 5, 0.0)
  assert kwargs["stop_strings"] == ("<|endofchunk|>",)
  [pred] = result["predictions"]["2"][0]
  assert pred["prediction"] == " The Red. "  # OpenFlamingo's cut: markers, then ", "
  assert result["protocol"] == "openflamingo" and result["metric_options"] == {
      "variant": "openflamingo"}
  # "the red." normalizes to "red"; no reference is "red" -> 0; "common21" 9 of 10 -> 100.
  assert result["rows"][0]["values"] == [0.0]
  engine.reply = "Common21, first21"
  result = runner.evaluate(None, None, "vqav2", d, [2], protocol="openflamingo",
                           engine=engine, show_progress=False)
  assert result["rows"][0]["values"] == [100.0]
  # The kosmos protocol: multiple_choice_answer demos, greedy, the official metric.
  engine.calls.clear()
  result = runner.evaluate(None, None, "vqav2", d, [2], engine=engine, show_progress=False)
  [(built, kwargs)] = engine.calls
  text = render(built[0])
  assert text.count("Answer: common1") == 2 and "first" not in text and kwargs["num_beams"] == 1
  assert result["metric_options"] == {"variant": "official"}
  # An explicit vqa_metric task option wins over the protocol's.
  result = runner.evaluate(None, None, "vqav2", d, [2], protocol="openflamingo",
                           engine=engine, show_progress=False,
                           task_options={"vqa_metric": "official_2016"})
  assert result["metric_options"] == {"variant": "official_2016"}


def test_textvqa_generates_10_tokens():
  assert runner.settings_for("openflamingo", "textvqa").vqa_tokens == 10
  assert runner.settings_for("openflamingo", "vqav2").vqa_tokens == 5
  assert runner.settings_for("openflamingo", "coco").caption_beams == 3
  s = runner.settings_for("openflamingo", "textvqa", vqa_tokens=7, vqa_beams=None)
  assert (s.vqa_tokens, s.vqa_beams) == (7, 3)  # explicit flags win, None = protocol's
  assert runner.settings_for("kosmos", "textvqa") == runner.Settings()


def test_zero_shot_rices_uses_the_2_nearest_demos_text_only(tmp_path):
  d = str(tmp_path)
  _vqav2_files(d)  # train images red = 99, 108, 117; the query's 189
  engine = FakeEngine("x")
  result = runner.evaluate(None, None, "vqav2", d, [0, 1], protocol="openflamingo",
                           rices=True, rices_embed_fn=_mean_color, rices_embedder="color",
                           engine=engine, show_progress=False, trials=3)
  zero, one = (render(c[0][0]) for c in engine.calls)
  # Mean color is (r, 0, 0) for every image: all cosine similarities tie at 1, so RICES
  # keeps pool order (stable sort) and puts the most similar last.
  assert zero == ("Question:What is 12? Short answer:first12<|endofchunk|>\n"
                  "Question:What is 11? Short answer:first11<|endofchunk|>\n"
                  "<image>Question:What is 21? Short answer:")
  assert one.startswith("<image>Question:What is 11?") and one.count("<image>") == 2
  assert [r["demos"] for r in result["rows"]] == ["text_only_rices", "rices"]
  assert [r["trials"] for r in result["rows"]] == [1, 1]
  assert result["rices_embedder"] == "color"
  # The kosmos protocol keeps 2 random text-only demos at 0 shots.
  result = runner.evaluate(None, None, "vqav2", d, [0], protocol="kosmos", rices=True,
                           rices_embed_fn=_mean_color, engine=engine, show_progress=False)
  assert result["rows"][0]["demos"] == "text_only_random"


def test_rices_orders_by_similarity_with_an_external_embedder(tmp_path):
  d = str(tmp_path)
  _vqav2_files(d)
  embed = lambda encoded: np.concatenate([_mean_color(encoded)[:, :1], np.full(
      (len(encoded), 1), 100.0, np.float32)], axis=1)  # (r, 100): angle grows with r
  engine = FakeEngine("x")
  runner.evaluate(None, None, "vqav2", d, [2], protocol="openflamingo", rices=True,
                  rices_embed_fn=embed, engine=engine, show_progress=False)
  text = render(engine.calls[0][0][0])
  # query r=189: nearest 117 (q13), then 108 (q12); most similar last.
  assert text.index("What is 12?") < text.index("What is 13?") and "What is 11?" not in text


def test_okvqa_predictions_are_stemmed_and_captions_cut_as_openflamingo():
  okvqa = _task("okvqa", "vqa", "vqa")
  post = protocols.postprocess_fn(OF, okvqa)
  assert post(" riding horses Question: x") == "ride horse"
  assert post("skiing, surfing") == "ski"
  assert protocols.postprocess_fn(OF, _task("vqav2", "vqa", "vqa"))("riding horses") == \
      "riding horses"
  assert protocols.postprocess_fn(protocols.get_protocol("kosmos"), okvqa)("horses.") == "horses"
  cap = protocols.postprocess_fn(OF, _task("coco", "caption", "caption"))
  assert cap(' a "red" bus\nOutput: x') == " a red bus\n"
  # The stemmer's rules on OK-VQA-style answers (OpenFlamingo's manual table first).
  cases = {"riding": "ride", "jeans": "jean", "clothes": "cloth", "leaves": "leaf",
           "bananas": "banana", "knives": "knife", "buses": "bus", "cities": "city",
           "children": "child", "running": "run", "making": "make", "eating": "eat",
           "king": "king", "something": "something", "yes": "yes", "grass": "grass",
           "tomatoes": "tomato", "the man's hat.": "the man 's hat .", "cannot": "can not"}
  assert {k: okvqa_stem.stem(k) for k in cases} == cases


def test_per_token_mean_class_scores_on_a_tiny_model(tmp_path):
  from flax import nnx  # pylint: disable=import-outside-toplevel
  import tiny  # pylint: disable=import-outside-toplevel
  from kosmos import defaults  # pylint: disable=import-outside-toplevel
  from kosmos.data import tokenizer as tokenizer_lib  # pylint: disable=import-outside-toplevel
  from kosmos.infer import engine as engine_lib  # pylint: disable=import-outside-toplevel
  from kosmos.model import multimodal  # pylint: disable=import-outside-toplevel
  config = defaults.base()
  config.model = tiny.model_config("magneto", "resampler", "xpos")
  config.model.decoder.update(vocab_size=tokenizer_lib.BYTE_VOCAB_SIZE, max_len=256)
  engine = engine_lib.Engine(multimodal.Multimodal(config.model, rngs=nnx.Rngs(0)), config)
  img = (png((200, 10, 10)),)
  task = Task(name="imagenet", kind="classification", metric="accuracy",
              template="classification", train=[], test=[],
              class_names=("a", "zebra finch", "ox"))
  protocols.apply(OF, task)
  demos = [[Example(id="d", fields={"answer": "ox"}, image_bytes=img)]]
  queries = [Example(id="q", fields={}, label=1, image_bytes=img)]
  runs = {}
  for name in ("kosmos", "openflamingo"):
    [runs[name]] = runner.run_trial(engine, task, queries, demos, text_only=False,
                                    settings=runner.Settings(), protocol=name)
  summed, mean = np.asarray(runs["kosmos"]["logprobs"]), np.asarray(
      runs["openflamingo"]["logprobs"])
  lengths = np.asarray([len(c.encode()) for c in task.class_names])  # byte tokens
  np.testing.assert_allclose(mean * lengths, summed, rtol=1e-5)
  assert (mean != summed).any() and np.all(summed < 0)
  assert runs["openflamingo"]["prediction"] == int(np.argmax(mean))
  assert runs["kosmos"]["prediction"] == int(np.argmax(summed))
