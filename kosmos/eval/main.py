r"""`kosmos-eval`: few-shot evaluation of a workdir's checkpoint on one task.

    kosmos-eval --workdir DIR --task coco --data /data/coco --shots 0,4,8 --trials 3 \
        --out results/coco.json
    kosmos-eval --workdir DIR --task vqav2 --data /data/vqav2 --shots 0,4,8,16,32 \
        --trials 3 --protocol openflamingo --out results/vqav2_of.json
    kosmos-eval --workdir K2 --task refcocog --data /data/refcoco --shots 0 \
        --task-option 'test_split="test"' --out results/refcocog.json
    kosmos-eval --workdir DIR --task pope --data /data/pope --shots 0 --chat \
        --task-option split=adversarial --out results/pope_adversarial.json

Grounding tasks (refcoco, refcoco+, refcocog, flickr30k_entities; the _reg tasks) need a
model with location tokens (config.tokenizer.grounding: configs/kosmos2.py, an imported
Kosmos-2, or a model trained with them).

`--chat` asks each 0-shot query as one user turn of the workdir's chat template (the way
chat-tuned models are prompted). `--protocol` picks prompts, decoding, scoring, post-processing and the VQA metric variant
(kosmos.eval.protocols): "kosmos" (default) or "openflamingo" (OpenFlamingo's eval, for
numbers comparable with its published tables). The decoding flags default to the
protocol's values. `--rices-model` ranks RICES demonstrations by a Hugging Face CLIP
directory or another kosmos workdir's vision tower instead of the evaluated model's.

Loads DIR/config.json and the params of checkpoint `--step` (default: the latest) laid out
on the config's mesh, runs `kosmos.eval.runner.evaluate`, prints a table, and writes `--out`
(one row per shot count: per-trial values, mean, std), the predictions next to it
(`<out>.predictions.json`) and DIR/eval/<step>/<task>.json. In a multi-process job every
process runs this command; queries are split between processes and gathered.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from kosmos.train import distributed

distributed.set_local_devices_from_env()  # before jax is imported (KOSMOS_LOCAL_DEVICES)

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
from flax import nnx  # pylint: disable=wrong-import-position

from kosmos import sharding  # pylint: disable=wrong-import-position
from kosmos import workdir as workdir_lib
from kosmos.eval import protocols
from kosmos.eval import rices_towers
from kosmos.eval import runner
from kosmos.eval import tasks as tasks_lib
from kosmos.model import multimodal


def parse_shots(text: str) -> list[int]:
  try:
    shots = [int(s) for s in text.split(",") if s.strip()]
  except ValueError:
    raise argparse.ArgumentTypeError(f"--shots {text!r}: expected comma-separated integers "
                                     "such as 0,4,8") from None
  if not shots or any(s < 0 for s in shots):
    raise argparse.ArgumentTypeError(f"--shots {text!r}: expected integers >= 0")
  return shots


def load_params(directory: str, config, mesh, step: int | None):
  """(step, params pure dict) restored directly into the mesh layout."""
  abstract = nnx.eval_shape(lambda: multimodal.Multimodal(config.model, rngs=nnx.Rngs(0)))
  params_state = nnx.state(abstract, nnx.Param)
  shardings = nnx.to_pure_dict(sharding.param_shardings(params_state, mesh, config.sharding_rules))
  target = jax.tree.map(lambda v, s: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s),
                        nnx.to_pure_dict(params_state), shardings)
  return workdir_lib.restore_params(directory, step, target)


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="kosmos-eval", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True, help="workdir with config.json + checkpoints")
  parser.add_argument("--task", required=True, choices=sorted(tasks_lib.TASKS))
  parser.add_argument("--data", required=True, help="the task's data directory")
  parser.add_argument("--shots", type=parse_shots, default=[0, 4, 8], help="e.g. 0,4,8")
  parser.add_argument("--trials", type=int, default=1, help="random demonstration seeds")
  parser.add_argument("--rices", action="store_true",
                      help="demonstrations by image similarity (RICES) instead of random")
  parser.add_argument("--rices-model", default=None, metavar="DIR",
                      help="RICES image features from this tower instead of the evaluated "
                      "model's: a Hugging Face CLIP directory (save_pretrained; OpenFlamingo "
                      "uses CLIP ViT-L/14) or a kosmos workdir (implies --rices)")
  parser.add_argument("--protocol", default=protocols.KOSMOS, choices=sorted(protocols.PROTOCOLS),
                      help="prompts, decoding, scoring and metric preset (default kosmos; "
                      "openflamingo = OpenFlamingo's eval)")
  parser.add_argument("--step", type=int, default=None, help="checkpoint step (default latest)")
  parser.add_argument("--num-queries", type=int, default=0, help="test subset size (0 = all)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--batch-size", type=int, default=8)
  parser.add_argument("--caption-beams", type=int, default=None,
                      help="default: the protocol's (3 in both)")
  parser.add_argument("--caption-tokens", type=int, default=None,
                      help="default: the protocol's (20 in both)")
  parser.add_argument("--vqa-beams", type=int, default=None,
                      help="default: the protocol's (kosmos 1, openflamingo 3)")
  parser.add_argument("--vqa-tokens", type=int, default=None,
                      help="default: the protocol's (5; openflamingo 10 for textvqa)")
  parser.add_argument("--grounding-tokens", type=int, default=None,
                      help="new tokens for a box (grounding tasks; default 8)")
  parser.add_argument("--length-penalty", type=float, default=None,
                      help="default: the protocol's (0)")
  parser.add_argument("--task-option", action="append", default=[], metavar="KEY=JSON",
                      help="loader or prompt option, e.g. json_path=\"/x/dataset_coco.json\", "
                      "separator=\".\", question_types='[\"what color is the\"]' (VQAv2), "
                      "vqa_metric=official|official_2016|openflamingo (VQA tasks), "
                      "test_split=\"testA\" (RefCOCO tasks)")
  parser.add_argument("--chat", action="store_true",
                      help="ask each query as one user turn of the workdir's chat template "
                      "(config.tokenizer.chat_template; VQA tasks: the bare question, unless "
                      "--task-option prompt=...) and generate the assistant's answer; "
                      "needs --shots 0 (no demonstrations), e.g. POPE on a chat-tuned model")
  parser.add_argument("--blank-images", action="store_true",
                      help="image ablation: show every image as uniform gray (same prompts)")
  parser.add_argument("--text-only-demos", action=argparse.BooleanOptionalAction, default=True,
                      help="0 shots shows two text-only demonstrations, as Flamingo and "
                      "OpenFlamingo do (default; tasks whose demonstration texts give the "
                      "task away, e.g. induction, never do); --no-text-only-demos: none")
  parser.add_argument("--no-progress", action="store_true")
  parser.add_argument("--out", required=True, help="results JSON file")
  return parser


def _task_options(items: list[str]) -> dict:
  options = {}
  for item in items:
    key, sep, value = item.partition("=")
    if not sep or not key:
      raise SystemExit(f"--task-option {item!r}: expected KEY=VALUE")
    try:
      options[key] = json.loads(value)
    except json.JSONDecodeError:
      options[key] = value
  return options


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  distributed.initialize()  # multi-process as the environment says (launch/ scripts)
  config = workdir_lib.load_config(args.workdir)
  mesh = sharding.make_mesh(config.mesh)
  step, params = load_params(args.workdir, config, mesh, args.step)
  task_options = _task_options(args.task_option)
  protocol = task_options.pop("protocol", args.protocol)  # as runner.evaluate would
  settings = runner.settings_for(protocol, args.task, caption_beams=args.caption_beams,
                                 caption_tokens=args.caption_tokens, vqa_beams=args.vqa_beams,
                                 vqa_tokens=args.vqa_tokens, length_penalty=args.length_penalty,
                                 grounding_tokens=args.grounding_tokens,
                                 batch_size=args.batch_size)
  rices_embed_fn, rices_embedder = None, "own_vision"
  if args.rices_model:
    rices_embed_fn, rices_embedder = rices_towers.load(args.rices_model)
  result = runner.evaluate(config, params, args.task, args.data, args.shots, trials=args.trials,
                           rices=args.rices or bool(args.rices_model),
                           num_queries=args.num_queries, seed=args.seed,
                           protocol=protocol, rices_embed_fn=rices_embed_fn,
                           rices_embedder=rices_embedder, settings=settings, mesh=mesh,
                           task_options=task_options,
                           rices_cache_dir=os.path.join(args.workdir, "eval", "rices_cache"),
                           show_progress=not args.no_progress, blank_images=args.blank_images,
                           chat=args.chat, text_only_demos=args.text_only_demos)
  result.update(step=step, workdir=os.path.abspath(args.workdir), data=os.path.abspath(args.data),
                command="kosmos-eval " + " ".join(argv if argv is not None else sys.argv[1:]))
  runner.write_results(result, args.out)
  name = result["task"] + ("_blank" if args.blank_images else "")
  runner.write_results(result, os.path.join(args.workdir, "eval", str(step), f"{name}.json"))
  if jax.process_index() == 0:
    print(runner.format_table(result))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
