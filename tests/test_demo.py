"""`make demo` end to end: prepare -> train -> few-shot eval -> HF export -> report.

Fast tests: the binding and induction tasks, the colour runs, the image ablation, the
prompt options and the init scale on a tiny world. `test_demo_short` runs `python -m
kosmos.demo --short` at seeds 0 and 1: every stage's outputs (report, pictures), the HF
export answering as the JAX model does, the loss falling, VQA colour questions above the
image-ablated model, 0-shot binding at chance, and task induction at 4 shots above 0 shots
beyond 2 standard errors. The full plan (`make demo`, marked slow) asserts that the images
are used: captioning CIDEr and colour accuracy above the same model with gray images, and
induction far above 0 shots and above gray images. Binding is not asserted at demo scale:
4-shot binding stays at chance in the demo's budget (docs/performance.md, "Demo"; the
copy circuit is studied with `python -m kosmos.bench.binding`). The full plan also reports
referring accuracy with real and gray images and OUT/boxes.png; grounding is not asserted at
demo scale either: the demo model does not learn to localise in 700 steps
(docs/performance.md, "Demo grounding")."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from kosmos.demo import runner as demo


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  """A tiny shapes world: only the eval sets matter here."""
  from kosmos.demo import prepare as shapes
  out = str(tmp_path_factory.mktemp("world"))
  shapes.generate(out, pairs=0, pages=0, texts=0, image_size=32, coco_train=4, coco_val=0,
                  coco_test=4, vqa_train=3, vqa_val=3, binding_episodes=6, induction_episodes=6)
  return out


def test_binding_task_demos_are_the_episode_support(world):
  from kosmos.eval import demos as demos_lib, prompts, tasks
  task = tasks.load_task("binding", os.path.join(world, "eval", "binding"))
  assert (task.kind, task.metric, len(task.test), task.train) == ("multiple_choice", "accuracy", 6, [])
  rows = [json.loads(l) for l in open(os.path.join(world, "eval", "binding", "episodes.jsonl"))]
  for query, row in zip(task.test, rows):
    assert query.choices == tuple(row["choices"]) and query.label == row["label"]
    for k in (1, 2, 4):
      demos = task.demos_for(query, k)
      assert [d.fields["answer"] for d in demos] == [s["label"] for s in row["support"][:2 * k]]
      assert sorted(d.fields["answer"] for d in demos) == sorted(query.choices * k)
    with pytest.raises(ValueError, match="5 shots"):
      task.demos_for(query, 5)
  query = task.test[1]
  template = prompts.get_template(task.template, task.template_overrides)
  built = prompts.build_prompt(template, task.demos_for(query, 1), query,
                               candidates=task.candidates(query))
  words = [s["label"] for s in rows[1]["support"][:2]]
  assert [s.get("text") for s in built.segments] == [
      None, f"This is a {words[0]}.", None, f"This is a {words[1]}.", None, "This is a"]
  assert built.candidates == tuple(" " + c for c in query.choices)
  # The demo's options: the world's own page format, "[image] dax." (kosmos.demo.PROMPTS).
  options = prompts.get_template(task.template, demo.PROMPTS["binding"])
  built = prompts.build_prompt(options, task.demos_for(query, 1), query,
                               candidates=task.candidates(query))
  assert [s.get("text") for s in built.segments] == [None, f"{words[0]}.", None, f"{words[1]}.",
                                                     None]
  assert built.candidates == query.choices
  zero = prompts.build_prompt(template, task.demos_for(query, demos_lib.effective_shots(0)),
                              query, candidates=task.candidates(query), text_only_demos=True)
  assert zero.num_images == 1  # 0 shots: the words without their images


def test_induction_task_demos_are_the_first_k_supports(world):
  from kosmos.eval import demos as demos_lib, prompts, tasks
  task = tasks.load_task("induction", os.path.join(world, "eval", "induction"))
  assert (task.name, task.kind, len(task.test)) == ("induction", "multiple_choice", 6)
  assert not task.text_only_zero_shot  # text-only demos would name the label type
  assert demos_lib.effective_shots(0, task.text_only_zero_shot) == 0
  rows = [json.loads(l) for l in open(os.path.join(world, "eval", "induction", "episodes.jsonl"))]
  for query, row in zip(task.test, rows):
    assert query.choices == tuple(row["choices"]) and query.label == row["label"]
    for k in (0, 1, 2, 4, 8):
      assert [d.fields["answer"] for d in task.demos_for(query, k)] == [
          s["label"] for s in row["support"][:k]]
    with pytest.raises(ValueError, match="9 shots"):
      task.demos_for(query, 9)
  query = task.test[2]
  options = prompts.get_template(task.template, demo.PROMPTS["induction"])
  built = prompts.build_prompt(options, task.demos_for(query, 2), query,
                               candidates=task.candidates(query))
  labels = [s["label"] for s in rows[2]["support"][:2]]
  assert [s.get("text") for s in built.segments] == [None, f"{labels[0]}.", None,
                                                     f"{labels[1]}.", None]
  assert built.candidates == query.choices


def test_text_only_demos_switch():
  from kosmos.eval import main as eval_main
  base = ["--workdir", "w", "--task", "coco", "--data", "d", "--out", "o.json"]
  assert eval_main.build_parser().parse_args(base).text_only_demos
  assert not eval_main.build_parser().parse_args(base + ["--no-text-only-demos"]).text_only_demos


def test_binding_task_skips_bad_rows(world, tmp_path):
  from kosmos.eval import tasks
  src = os.path.join(world, "eval", "binding")
  lines = open(os.path.join(src, "episodes.jsonl")).read().splitlines()
  missing = json.loads(lines[1])
  missing["query"]["image"] = "images/nope.png"
  bad_label = json.loads(lines[2])
  bad_label["label"] = 7
  os.symlink(os.path.join(src, "images"), tmp_path / "images")
  with open(tmp_path / "episodes.jsonl", "w") as f:
    f.write("\n".join([lines[0], json.dumps(missing), json.dumps(bad_label), "{not json"]) + "\n")
  task = tasks.load_task("binding", str(tmp_path))
  assert [q.id for q in task.test] == [json.loads(lines[0])["id"]]
  assert task.skipped == {"missing_image": 1, "bad_episode_row": 1, "bad_json_line": 1}


def test_blank_images_and_template_options(world):
  import numpy as np
  from kosmos.eval import prompts, runner, tasks
  task = tasks.load_task("coco", os.path.join(world, "eval", "coco"),
                         **demo.PROMPTS["coco"])
  template = prompts.get_template(task.template, task.template_overrides)
  assert template == prompts.Template(prompt="", target="{caption}", separator=".")
  built = prompts.build_prompt(template, task.train[:2], task.test[0])
  assert [s.get("text") for s in built.segments] == [
      None, task.train[0].fields["caption"] + ".", None, task.train[1].fields["caption"] + ".", None]
  blanked = runner.blank(built, 32)
  assert [s.get("text") for s in blanked.segments] == [s.get("text") for s in built.segments]
  for s in blanked.segments:
    if "image" in s:
      assert s["image"].shape == (32, 32, 3) and s["image"].dtype == np.uint8
      assert (s["image"] == runner.BLANK_GRAY).all()


def test_colour_runs_ask_only_colour_questions(world):
  from kosmos.eval import tasks
  [options] = [r.options for r in demo.eval_runs(demo.FULL) if r.name == "vqav2_colour"]
  data = os.path.join(world, "eval", "vqa")
  colour = tasks.load_task("vqav2", data, **options)
  everything = tasks.load_task("vqav2", data)
  assert colour.test and all(e.fields["question"].startswith("what colour") for e in colour.test)
  assert {e.id for e in everything.test if e.fields["question"].startswith("what colour")} == {
      e.id for e in colour.test}
  assert len(colour.train) == len(everything.train)


def _check_outputs(out: str, summary: dict) -> None:
  report = open(os.path.join(out, "report.md"), encoding="utf-8").read()
  assert "![training loss](loss.png)" in report
  with open(os.path.join(out, "loss.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  for picture in ("shots.png", "examples.png"):
    assert f"]({picture})" in report
    with open(os.path.join(out, picture), "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert "kosmos.bench.binding" in report  # the binding row says where binding is studied
  assert [r.name for r in demo.eval_runs(demo.SHORT)] == [
      "coco", "coco_blank", "vqav2", "vqav2_blank", "vqav2_colour", "vqav2_colour_blank",
      "induction", "induction_blank", "binding"]
  for name in (r.name for r in demo.eval_runs(demo.SHORT)):
    with open(os.path.join(out, "eval", f"{name}.json")) as f:
      saved = json.load(f)
    assert saved["rows"] == summary["results"][name]["rows"]
    assert saved["blank_images"] == name.endswith("_blank")
    assert saved["rows"][0]["shots"] == 0 and saved["rows"][0]["demos"] == "none"
  export = summary["export"]
  assert export["class"] == "Kosmos2ForConditionalGeneration"
  assert export["tokens_equal"], (export["jax_tokens"], export["hf_tokens"])
  assert {"config.json", "model.safetensors"} <= set(export["files"])
  # The demo's tokenizer is SentencePiece BPE, which transformers' tokenizer files do not
  # reproduce id for id (kosmos.interop.hf_tokenizer): the export writes none and says so.
  assert "tokenizer_config.json" not in export["files"]
  if "refcoco" in summary["results"]:  # the full plan's grounding (tests/test_demo_grounding.py)
    assert "](boxes.png)" in report and "referring (acc@IoU0.5)" in report
    with open(os.path.join(out, "boxes.png"), "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def _by_shots(result: dict, key: str = "mean") -> dict[int, float]:
  return {r["shots"]: r[key] for r in result["rows"]}


def _mean_gap(real: dict[int, float], blank: dict[int, float]) -> float:
  return sum(real[s] - blank[s] for s in real) / len(real)


def _two_se(p: float, q: float, n: int) -> float:
  """2 standard errors (points) of the difference of accuracies p, q (x100), n each."""
  a, b = p / 100, q / 100
  return 200 * ((a * (1 - a) + b * (1 - b)) / n) ** 0.5


@pytest.mark.parametrize("seed", [0, 1])
def test_demo_short(tmp_path, seed):
  """The short plan: the whole pipeline, the loss falls, the images are used (colour
  questions above the same model with gray images), 0-shot binding at chance, 4-shot
  task induction above 0 shots beyond 2 standard errors. Measured: docs/performance.md,
  "Demo, ninth session". 4-shot binding does not beat 0 shots at demo scale, so it is not
  asserted."""
  out = str(tmp_path / "demo")
  # As a user runs it, in its own process: the suite's 8 fake devices (conftest) would
  # split the 16-row batch 8 ways, 23 % slower than the demo's own 2 (kosmos.demo.runner).
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  done = subprocess.run([sys.executable, "-m", "kosmos.demo", "--short", "--seed", str(seed),
                         "--out", out], env=env, capture_output=True, text=True, check=False)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  with open(os.path.join(out, "summary.json"), encoding="utf-8") as f:
    summary = json.load(f)
  assert summary["plan"] == json.loads(json.dumps(dataclasses.asdict(
      dataclasses.replace(demo.SHORT, seed=seed))))
  _check_outputs(out, summary)
  losses = summary["losses"]
  assert losses[-1] < 0.25 * losses[0], losses  # measured 4.47 -> 0.69 in 250 steps (seed 0)
  results = summary["results"]
  colour, gray = _by_shots(results["vqav2_colour"]), _by_shots(results["vqav2_colour_blank"])
  assert _mean_gap(colour, gray) > 5.0, (colour, gray)
  assert all(colour[s] > gray[s] for s in colour), (colour, gray)
  binding = _by_shots(results["binding"])
  assert 35.0 <= binding[0] <= 65.0, binding  # 100 episodes, labels balanced
  induction = _by_shots(results["induction"])
  n = results["induction"]["rows"][0]["num_queries"]
  assert n >= 60, n
  assert induction[4] - induction[0] > _two_se(induction[4], induction[0], n), induction


@pytest.fixture(scope="module")
def full(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("demo_full"))
  summary = demo.run(out, demo.FULL)
  _check_outputs(out, summary)
  return summary


@pytest.mark.slow
def test_demo_full_images_are_used(full):
  losses = full["losses"]
  assert losses[-1] < 0.2 * losses[0], losses
  results = full["results"]
  # Means over 0/1/2/4 shots. Measured in three 700-step runs (seeds and worlds,
  # docs/performance.md, Demo): colour gaps 6.5-18.7 points, CIDEr gaps 19.4-29.1.
  real = _by_shots(results["vqav2_colour"])
  blank = _by_shots(results["vqav2_colour_blank"])
  assert _mean_gap(real, blank) > 5.0, (real, blank)
  captions, gray = _by_shots(results["coco"]), _by_shots(results["coco_blank"])
  assert _mean_gap(captions, gray) > 15.0, (captions, gray)
  assert all(captions[s] > gray[s] for s in captions), (captions, gray)


@pytest.mark.slow
def test_demo_full_task_induction(full):
  """The issue's done-when: 4-shot induction >= 25 points above 0 shots and above the
  gray-image control at 4 shots."""
  real = _by_shots(full["results"]["induction"])
  gray = _by_shots(full["results"]["induction_blank"])
  assert real[4] >= real[0] + 25.0, real
  assert real[4] > gray[4], (real, gray)


@pytest.mark.parametrize("gpt_init", [False, True])
def test_demo_init_lets_content_through(gpt_init):
  """At init, next to the sinusoidal positions the decoder adds (norm sqrt(d/2)): the
  sqrt(d)-scaled token embeddings, and the image-dependent part of the image tokens (how
  much they vary between images). configs/demo.py's init (torchscale's embedding std
  d**-0.5, connector projection 0.5) makes tokens O(1) next to the positions and images a
  fair fraction; GPT-style 0.02 for both leaves tokens at a third of the positions and
  images at ~1 % (measured 1.40 / 0.23 against 0.32 / 0.009), and then the images go
  unused for the first few hundred steps (docs/performance.md, Demo)."""
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx
  from kosmos import configs
  from kosmos.demo import world as sw
  from kosmos.model import multimodal
  config = configs.load(f"{demo.CONFIG_FILE}:/nonexistent")
  if gpt_init:
    config.model.decoder.embed_init_std = config.model.connector.init_std = 0.02
  model = multimodal.Multimodal(config.model, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(0)
  images = np.stack([np.asarray(sw.render_scene(sw.sample_scene(rng), 32)) for _ in range(32)])
  v = config.model.vision
  x = (images / 255.0 - np.asarray(v.pixel_mean)) / np.asarray(v.pixel_std)
  embeds = np.asarray(model.embed_images(jnp.asarray(x, jnp.float32)[None]))[0]  # [32, n, d]
  tokens = np.asarray(model.decoder.embed(jnp.arange(256)))  # [256, d], before the scale
  d = config.model.decoder.d_model
  scale, positions = model.decoder.embed_scale, np.sqrt(d / 2)
  token_ratio = scale * np.linalg.norm(tokens, axis=-1).mean() / positions
  image_ratio = scale * np.linalg.norm(embeds.std(0), axis=-1).mean() / positions
  if gpt_init:
    assert token_ratio < 0.5 and image_ratio < 0.02, (token_ratio, image_ratio)
  else:
    assert 1.0 < token_ratio < 2.0 and 0.1 < image_ratio < 1.0, (token_ratio, image_ratio)


@pytest.mark.parametrize("at_4, verdict", [(64.2, "within the noise (2 SE = 12.2"),
                                           (40.0, "lower beyond the noise"), (70.0, None)])
def test_report_says_when_demonstrations_lower_colour_accuracy(at_4, verdict):
  from kosmos.demo import report

  def result(means, n=120):
    return {"rows": [{"shots": s, "mean": m, "num_queries": n} for s, m in means.items()]}

  res = {name: result({0: 50.0, 4: 50.0}) for name in ("coco", "coco_blank", "vqav2",
                                                        "vqav2_blank", "vqav2_colour_blank")}
  res["vqav2_colour"] = result({0: 68.3, 4: at_4})
  res["binding"] = result({0: 50.0, 4: 50.0}, n=200)
  lines = report.evidence({"results": res, "losses": [4.0, 0.5], "log_every": 25})
  colour = [l for l in lines if "Colour questions with demonstrations" in l]
  if verdict:
    assert len(colour) == 1 and verdict in colour[0], lines
  else:
    assert not colour, lines
