"""`make demo`: the whole stack on a laptop, in minutes on 2 CPU cores.

    python -m kosmos.demo --out demo_out           # full: 700 steps, 498 s on 2 cores (measured)
    python -m kosmos.demo --out demo_out --short   # 250 steps, 146-196 s alone (tests/test_demo.py)

Stages, each the real code path a user would run by hand:

  1. prepare   `python data/prepare.py shapes` (kosmos.demo.prepare.generate) with
               pages of up to 9 images and (full plan) grounded pairs, then a BPE
               SentencePiece model on the world's text, 512 pieces + 70 location pieces
               (`python data/prepare.py tokenizer --grounding-grid 8`)
  2. train     `kosmos-train --config configs/demo.py:DATA` (trainer.train_and_evaluate),
               pair + interleaved + text (+ grounded pair) records mixed
  3. eval      `kosmos-eval` (kosmos.eval.runner.evaluate, one Engine shared by all runs)
               at 0/1/2/4 shots: COCO-layout captioning (CIDEr), VQAv2-layout VQA
               (accuracy) on all questions and on the colour questions only (the answer
               is only in the pixels), task induction at 0/1/2/4/8 shots (accuracy; the
               label type is only shown by the demonstrations), each also with every
               image blanked to gray (image ablation), and fast-binding classification
               (accuracy; 0 shots is chance); full plan: referring expressions in
               RefCOCO's layout (accuracy at IoU >= 0.5, kosmos.demo.grounding), with real
               and with gray images, 0 shots
  4. export    `kosmos-export --format hf`, then the directory is loaded with transformers'
               Kosmos2ForConditionalGeneration and must answer a VQA prompt as the JAX
               model does (greedy tokens equal)
  5. report    OUT/report.md + OUT/loss.png (kosmos.demo.report), OUT/examples.png and
               OUT/shots.png (kosmos.demo.pictures), OUT/boxes.png (kosmos.demo.grounding)

The eval prompts use the world's own text formats (the model never saw "An image of"):
captions follow the image directly and end with ".", VQA is "Question: q Answer: a."
and binding and induction supports are "<label>." (see `PROMPTS`). 0 shots is the query
alone (`kosmos-eval --no-text-only-demos`): the Flamingo protocol's two text-only
demonstrations are a text the world never shows (captions without their images) and cost
0-shot captioning 15-17 CIDEr (docs/performance.md, "Demo, ninth session"). The console shows a
progress narrative; library logs go to OUT/logs/.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import sys
import time
from typing import Any, Callable

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# The step runs data-parallel over 2 host CPU devices (the demo config's mesh is data=-1):
# 0.324 s per step against 0.367 s on one device and 0.399 s on 8, on 2 cores
# (kosmos.bench.train_step, docs/performance.md "Demo, tenth session"). Only when jax is
# not imported yet and XLA_FLAGS does not set the count already.
HOST_DEVICES = 2
if ("jax" not in sys.modules
    and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", "")):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={HOST_DEVICES}").strip()

from kosmos import configs  # pylint: disable=wrong-import-position

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG_FILE = os.path.join(_ROOT, "configs", "demo.py")
SHOTS = (0, 1, 2, 4)
# Task options for kosmos-eval: the shapes world's formats (see the module docstring).
PROMPTS = {
    "coco": {"prompt": "", "target": "{caption}", "separator": "."},
    "vqav2": {"separator": "."},
    "binding": {"prompt": "", "target": "{answer}", "separator": "."},
    "induction": {"prompt": "", "target": "{answer}", "separator": "."},
}
# The VQAv2 "question_type" of the world's colour questions: their answer is only in the
# pixels, so the colour runs (kosmos-eval --task-option question_types=...) measure image use.
COLOUR_TYPES = ("what colour is the",)
REFEXP_TRAIN = 20  # referring eval images of split train (demonstrations when shots > 0)


@dataclasses.dataclass(frozen=True)
class Plan:
  """Sizes of one demo run."""
  pairs: int
  pages: int
  texts: int
  steps: int
  coco_queries: int
  vqa_queries: int  # all question types
  colour_queries: int  # colour questions only (COLOUR_TYPES)
  binding_episodes: int
  induction_episodes: int
  coco_shots: tuple[int, ...] = SHOTS
  vqa_shots: tuple[int, ...] = SHOTS
  binding_shots: tuple[int, ...] = SHOTS
  induction_shots: tuple[int, ...] = (0, 1, 2, 4, 8)
  grounded: int = 0  # grounded pair records (kosmos.demo.grounding); 0 = no grounding
  refexp_queries: int = 0  # referring expressions asked (refcoco layout), real and gray
  refexp_shots: tuple[int, ...] = (0,)
  eval_batch: int = 16
  seed: int = 0  # the world's seed (prepare) and the training seeds (init, data order)


FULL = Plan(pairs=20000, pages=8000, texts=2000, steps=700, coco_queries=100, vqa_queries=300,
            colour_queries=120, binding_episodes=200, induction_episodes=240, grounded=4000,
            refexp_queries=200)
SHORT = Plan(pairs=4000, pages=2000, texts=1000, steps=250, coco_queries=24, vqa_queries=48,
             colour_queries=100, binding_episodes=100, induction_episodes=96, coco_shots=(0, 4),
             vqa_shots=(0, 4), binding_shots=(0, 4), induction_shots=(0, 4))


class Narrator:
  """Prints "[ mm:ss] message" lines to the console: a duplicate of the file descriptor that
  stdout had when it was made, so stages whose output goes to a log file do not hide it."""

  def __init__(self, stream=None):
    self.stream = stream or os.fdopen(os.dup(sys.__stdout__.fileno()), "w", buffering=1)
    self.start = time.time()

  def elapsed(self) -> float:
    return time.time() - self.start

  def __call__(self, message: str) -> None:
    m, s = divmod(int(self.elapsed()), 60)
    print(f"[{m:2d}:{s:02d}] {message}", file=self.stream, flush=True)


@contextlib.contextmanager
def _logged(path: str):
  """Everything a stage writes to stdout/stderr (Python, absl, XLA/TF C++ logs) goes to
  `path`: file descriptors 1 and 2 are pointed at it for the duration."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  sys.stdout.flush()
  sys.stderr.flush()
  saved = [os.dup(1), os.dup(2)]
  with open(path, "ab") as f:
    os.dup2(f.fileno(), 1)
    os.dup2(f.fileno(), 2)
    try:
      yield
    finally:
      sys.stdout.flush()
      sys.stderr.flush()
      for fd, copy in zip((1, 2), saved):
        os.dup2(copy, fd)
        os.close(copy)


# ---------------------------------------------------------------------------- stages


def prepare(data_dir: str, plan: Plan, say: Narrator) -> dict[str, Any]:
  from kosmos.data import tokenizer as tokenizer_lib  # pylint: disable=import-outside-toplevel
  from kosmos.demo import prepare as shapes  # pylint: disable=import-outside-toplevel
  module = configs.load_module(CONFIG_FILE)
  max_images = module.MAX_IMAGES
  t = time.time()
  world = shapes.generate(data_dir, workers=2, seed=plan.seed, pairs=plan.pairs, pages=plan.pages,
                          texts=plan.texts, image_size=32, max_images_per_page=max_images,
                          binding_episodes=plan.binding_episodes,
                          induction_episodes=plan.induction_episodes, grounded=plan.grounded,
                          refexp_train=REFEXP_TRAIN if plan.refexp_queries else 0,
                          refexp_val=plan.refexp_queries)
  grounded = (f", {plan.grounded} grounded pairs" if plan.grounded else "")
  say(f"prepare: shapes world -> {data_dir}: {plan.pairs} pairs, {plan.pages} pages "
      f"(<= {max_images} images), {plan.texts} texts{grounded} + COCO/VQAv2/binding/induction"
      f"{'/refexp' if plan.refexp_queries else ''} eval sets ({time.time() - t:.0f} s)")
  t = time.time()
  records = [os.path.join(data_dir, "records", k) for k in ("pair", "interleaved", "text")
             + (("grounded",) if plan.grounded else ())]
  tok = tokenizer_lib.train_tokenizer(records, module.VOCAB_SIZE,
                                      os.path.join(data_dir, "tokenizer.model"),
                                      model_type="bpe", grounding_grid=module.GROUNDING_GRID)
  say(f"prepare: SentencePiece BPE tokenizer, vocab {tok.vocab_size} ({time.time() - t:.0f} s)")
  return world


def load_config(data_dir: str, plan: Plan):
  config = configs.load(f"{CONFIG_FILE}:{data_dir}")
  config.train.steps = plan.steps
  config.train.checkpoint_every = plan.steps
  config.seed = config.data.shuffle_seed = plan.seed
  if not plan.grounded:
    del config.data.sources["grounded"]
  return config


def train(config, workdir: str, say: Narrator, log_path: str) -> dict[str, Any]:
  from kosmos.train import trainer  # pylint: disable=import-outside-toplevel
  if os.path.exists(workdir):
    shutil.rmtree(workdir)
  log_file = os.path.join(workdir, "metrics", "train_log.jsonl")
  seen = {"lines": 0, "t": time.time()}
  total = config.train.steps

  def hook(step: int, state: Any) -> None:
    del state
    if not os.path.exists(log_file):
      return
    with open(log_file, encoding="utf-8") as f:
      lines = f.read().splitlines()
    for line in lines[seen["lines"]:]:
      row = json.loads(line)
      if row["step"] % (4 * config.train.log_every) == 0 or row["step"] == config.train.log_every:
        say(f"train: step {row['step']:4d}/{total}  loss {row['loss']:.3f}  "
            f"{row['tokens_per_s']:.0f} tokens/s")
    seen["lines"] = len(lines)

  t = time.time()
  with _logged(log_path):
    result = trainer.train_and_evaluate(config, workdir, hooks=[hook])
  hook(result["step"], None)
  losses = result["losses"]
  say(f"train: {result['step']} steps in {time.time() - t:.0f} s, loss {losses[0]:.3f} "
      f"(first {config.train.log_every} steps) -> {losses[-1]:.3f}")
  return {"seconds": time.time() - t, "losses": losses, "step": result["step"]}


@dataclasses.dataclass(frozen=True)
class EvalRun:
  """One kosmos-eval run of the demo."""
  name: str  # OUT/eval/{name}.json
  task: str
  data: str  # subdirectory of DATA/eval
  queries: int  # 0 = all
  shots: tuple[int, ...]
  blank: bool  # every image gray (image ablation)
  options: dict[str, Any]  # --task-option pairs


def eval_runs(plan: Plan) -> list[EvalRun]:
  """Captioning, VQA (all questions), VQA colour questions and task induction, each with
  real and with gray images, then binding, then (when the plan asks) referring expressions
  with real and with gray images."""
  colour = {**PROMPTS["vqav2"], "question_types": list(COLOUR_TYPES)}
  runs = []
  for name, task, data, queries, shots, options in (
      ("coco", "coco", "coco", plan.coco_queries, plan.coco_shots, PROMPTS["coco"]),
      ("vqav2", "vqav2", "vqa", plan.vqa_queries, plan.vqa_shots, PROMPTS["vqav2"]),
      ("vqav2_colour", "vqav2", "vqa", plan.colour_queries, plan.vqa_shots, colour),
      ("induction", "induction", "induction", 0, plan.induction_shots, PROMPTS["induction"])):
    runs += [EvalRun(name, task, data, queries, shots, False, options),
             EvalRun(name + "_blank", task, data, queries, shots, True, options)]
  runs.append(EvalRun("binding", "binding", "binding", 0, plan.binding_shots, False,
                       PROMPTS["binding"]))
  if plan.refexp_queries:
    runs += [EvalRun("refcoco" + blank, "refcoco", "refexp", plan.refexp_queries,
                     plan.refexp_shots, bool(blank), {}) for blank in ("", "_blank")]
  return runs


def evaluate_all(workdir: str, data_dir: str, out: str, plan: Plan, say: Narrator,
                 log_path: str) -> dict[str, Any]:
  """Every eval run of the demo; returns {run name: results without predictions}."""
  from kosmos import sharding  # pylint: disable=import-outside-toplevel
  from kosmos import workdir as workdir_lib  # pylint: disable=import-outside-toplevel
  from kosmos.eval import main as eval_main  # pylint: disable=import-outside-toplevel
  from kosmos.eval import runner  # pylint: disable=import-outside-toplevel
  from kosmos.infer import engine as engine_lib  # pylint: disable=import-outside-toplevel
  config = workdir_lib.load_config(workdir)
  mesh = sharding.make_mesh(config.mesh)
  step, params = eval_main.load_params(workdir, config, mesh, None)
  engine = engine_lib.Engine(runner.build_model(config, params, mesh), config, mesh=mesh,
                             length_multiple=64)
  settings = runner.Settings(batch_size=plan.eval_batch)
  results = {}
  for run in eval_runs(plan):
    t = time.time()
    with _logged(log_path):
      result = runner.evaluate(config, None, run.task, os.path.join(data_dir, "eval", run.data),
                               run.shots, num_queries=run.queries, settings=settings, mesh=mesh,
                               task_options=dict(run.options), show_progress=False,
                               engine=engine, blank_images=run.blank, text_only_demos=False)
    result.update(step=step, workdir=os.path.abspath(workdir),
                  command=eval_command(workdir, data_dir, run))
    runner.write_results(result, os.path.join(out, "eval", f"{run.name}.json"))
    summary = ", ".join(f"{r['shots']}-shot {r['mean']:.1f}" for r in result["rows"])
    say(f"eval: {run.name:19s} {result['metric']:>12s} x100: {summary} "
        f"({time.time() - t:.0f} s)")
    results[run.name] = {k: v for k, v in result.items() if k != "predictions"}
  return results


def eval_command(workdir: str, data_dir: str, run: EvalRun) -> str:
  """The equivalent kosmos-eval command line (for the report)."""
  flags = " ".join(f"--task-option {k}='{json.dumps(v)}'" for k, v in run.options.items())
  return (f"kosmos-eval --workdir {workdir} --task {run.task} --data {data_dir}/eval/{run.data} "
          f"--shots {','.join(map(str, run.shots))}"
          + (f" --num-queries {run.queries}" if run.queries else "")
          + (f" {flags}" if flags else "") + " --no-text-only-demos"
          + (" --blank-images" if run.blank else "")
          + f" --out OUT/eval/{run.name}.json")


def export(workdir: str, hf_dir: str, data_dir: str, say: Narrator, log_path: str
           ) -> dict[str, Any]:
  """kosmos-export --format hf, then load with transformers and compare a greedy answer."""
  from kosmos.interop import hf_export  # pylint: disable=import-outside-toplevel
  t = time.time()
  if os.path.exists(hf_dir):
    shutil.rmtree(hf_dir)
  with _logged(log_path):
    summary = hf_export.export_hf(workdir, hf_dir)
    check = verify_hf(workdir, hf_dir, data_dir)
  files = sorted(os.listdir(hf_dir))
  say(f"export: {hf_dir} ({', '.join(files)}) in {time.time() - t:.0f} s; transformers "
      f"{check['class']} loads it: JAX {check['jax_answer']!r} vs transformers "
      f"{check['hf_answer']!r} ({'equal' if check['tokens_equal'] else 'DIFFERENT'} greedy tokens)")
  return {"seconds": time.time() - t, "files": files, "summary": _jsonable(summary), **check}


def _jsonable(value: Any) -> Any:
  return json.loads(json.dumps(value, default=str))


def verify_hf(workdir: str, hf_dir: str, data_dir: str, new_tokens: int = 6) -> dict[str, Any]:
  """Loads `hf_dir` with Kosmos2ForConditionalGeneration and greedy-decodes a VQA prompt
  (one image) with it and with the JAX Engine; returns both answers and their equality."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  from kosmos import workdir as workdir_lib  # pylint: disable=import-outside-toplevel
  from kosmos.eval import runner  # pylint: disable=import-outside-toplevel
  from kosmos.infer import engine as engine_lib  # pylint: disable=import-outside-toplevel
  config = workdir_lib.load_config(workdir)
  _, params = workdir_lib.restore_params(workdir)
  engine = engine_lib.Engine(runner.build_model(config, params), config)
  vqa_dir = os.path.join(data_dir, "eval", "vqa")
  with open(os.path.join(vqa_dir, "v2_OpenEnded_mscoco_val2014_questions.json")) as f:
    question = next(q for q in json.load(f)["questions"] if q["question"].startswith(COLOUR_TYPES))
  with open(os.path.join(vqa_dir, "val2014", f"COCO_val2014_{question['image_id']:012d}.jpg"),
            "rb") as f:
    image = f.read()
  segments = [{"image": image}, {"text": f"Question: {question['question']} Answer:"}]
  ours = engine.generate([segments], max_new_tokens=new_tokens)[0]
  encoded = engine.encode(segments)
  ids = np.asarray([encoded.tokens], np.int64)
  v = config.model.vision
  pixels = (encoded.images[0].astype(np.float32) / 255.0 - np.asarray(v.pixel_mean, np.float32)
            ) / np.asarray(v.pixel_std, np.float32)
  model = transformers.Kosmos2ForConditionalGeneration.from_pretrained(hf_dir).eval()
  banned = list(engine_lib.default_banned_ids(engine.tok))
  with torch.no_grad():
    out = model.generate(
        pixel_values=torch.from_numpy(pixels.transpose(2, 0, 1)[None].copy()),
        input_ids=torch.from_numpy(ids), attention_mask=torch.ones(ids.shape, dtype=torch.long),
        image_embeds_position_mask=torch.from_numpy(ids == config.tokenizer.image_slot_id).long(),
        max_new_tokens=new_tokens, do_sample=False, num_beams=1, suppress_tokens=banned,
        eos_token_id=engine.tok.eos_id, use_cache=True)
  theirs = [int(t) for t in out[0, ids.shape[1]:]] if out.shape[1] > ids.shape[1] else \
      [int(t) for t in out[0]]
  theirs_text = engine.tok.decode([t for t in theirs if t != engine.tok.eos_id])
  return {"class": type(model).__name__, "question": question["question"],
          "jax_tokens": ours.tokens, "hf_tokens": theirs, "jax_answer": ours.text.strip(),
          "hf_answer": theirs_text.strip(), "tokens_equal": ours.tokens == theirs,
          "parameters": int(sum(p.numel() for p in model.parameters()))}


def pictures(out: str, data_dir: str, plan: Plan, results: dict[str, Any]) -> list[str]:
  """OUT/examples.png (captions, colour answers and induction labels at 0 and 4 shots
  beside the references) and OUT/shots.png (metric against shots, real vs gray)."""
  from kosmos.demo import pictures as pictures_lib  # pylint: disable=import-outside-toplevel
  from kosmos.demo import report as demo_report  # pylint: disable=import-outside-toplevel
  from kosmos.eval import tasks as tasks_lib  # pylint: disable=import-outside-toplevel
  shown = dict(pictures_lib.EXAMPLE_RUNS)
  tasks = {run.name: tasks_lib.load_task(run.task, os.path.join(data_dir, "eval", run.data),
                                         **run.options)
           for run in eval_runs(plan) if run.name in shown and not run.blank}
  return [pictures_lib.examples(out, tasks),
          pictures_lib.shots_plot(results, demo_report.RUNS + demo_report.OWN_DEMO_RUNS,
                                  os.path.join(out, "shots.png"))]


# ---------------------------------------------------------------------------- driver


def run(out: str, plan: Plan, *, say: Callable[[str], None] | None = None) -> dict[str, Any]:
  """The whole demo into `out`; returns the summary written to OUT/summary.json."""
  from kosmos.demo import report as demo_report  # pylint: disable=import-outside-toplevel
  say = say or Narrator()
  os.makedirs(out, exist_ok=True)
  data_dir, workdir = os.path.join(out, "data"), os.path.join(out, "workdir")
  logs = os.path.join(out, "logs")
  timings = {}
  t = time.time()
  world = prepare(data_dir, plan, say)
  timings["prepare"] = time.time() - t
  config = load_config(data_dir, plan)
  from kosmos.model import summary as summary_lib  # pylint: disable=import-outside-toplevel
  counts = summary_lib.count(config.model)
  say(f"train: configs/demo.py, {counts['total'] / 1e6:.2f}M parameters (vision "
      f"{counts['vision'] / 1e6:.2f}M, connector {counts['connector'] / 1e6:.2f}M, decoder "
      f"{counts['decoder'] / 1e6:.2f}M), {plan.steps} steps of {config.data.global_batch_size} x "
      f"{config.data.seq_len} tokens")
  trained = train(config, workdir, say, os.path.join(logs, "train.log"))
  timings["train"] = trained["seconds"]
  t = time.time()
  results = evaluate_all(workdir, data_dir, out, plan, say, os.path.join(logs, "eval.log"))
  timings["eval"] = time.time() - t
  drawn = pictures(out, data_dir, plan, results)
  say(f"report: {', '.join(drawn)}")
  exported = export(workdir, os.path.join(out, "hf"), data_dir, say,
                    os.path.join(logs, "export.log"))
  timings["export"] = exported["seconds"]
  timings["total"] = say.elapsed() if isinstance(say, Narrator) else sum(timings.values())
  summary = {"plan": dataclasses.asdict(plan), "timings": timings, "losses": trained["losses"],
             "log_every": config.train.log_every, "parameters": counts,
             "results": results, "export": exported, "world": world["records"],
             "config": json.loads(config.to_json_best_effort())}
  with open(os.path.join(out, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1, default=str)
  report = demo_report.write(out, summary)
  say(f"done in {timings['total']:.0f} s. Report: {os.path.abspath(report)}")
  return summary


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m kosmos.demo", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", default="demo_out", help="output directory (default demo_out)")
  parser.add_argument("--short", action="store_true", help="the < 3 minute version (tests)")
  parser.add_argument("--steps", type=int, default=0, help="override the training steps")
  parser.add_argument("--seed", type=int, default=0,
                      help="seed of the world, the init and the data order (default 0)")
  args = parser.parse_args(argv)
  plan = SHORT if args.short else FULL
  plan = dataclasses.replace(plan, seed=args.seed, **({"steps": args.steps} if args.steps else {}))
  run(args.out, plan)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
