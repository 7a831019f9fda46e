"""Few-shot evaluation: demonstrations -> prompts -> generation / scoring -> metrics.

`evaluate(config, params, task, data_dir, shots, ...)` is the Python entry (training calls
it every K steps; `kosmos-eval` wraps it). For each shot count and trial it selects
demonstrations (`kosmos.eval.demos`: seeded random query sets, or RICES on the model's own
vision features or on another tower's, `kosmos.eval.rices_towers`), builds prompts
(`kosmos.eval.prompts`), and, under the default protocol "kosmos"
(`kosmos.eval.protocols`; "openflamingo" reproduces OpenFlamingo's eval),

    caption          beam search (3 beams, length penalty 0, 20 new tokens), post-processed
                     as OpenFlamingo does, CIDEr
    vqa              greedy, 5 new tokens, first short answer, VQA accuracy
    classification,  rank classification: sum log-likelihood of each class / choice after
    multiple_choice  the prompt (kosmos.infer.score); accuracy, or ROC AUC on P(class 1)
    grounding        greedy, 8 new tokens, the first box linked to the query's phrase in
                     pixels (kosmos.eval.grounding), accuracy at IoU >= 0.5 (box_accuracy)

Examples with boxes (grounding, referring expression generation) need a model with location
tokens (`config.tokenizer.grounding`); their boxes enter prompts as location tokens.

Returns {"rows": [{"shots", "values" per trial, "mean", "std"}], "predictions": ...}.
Processes split the queries (process i takes queries i::P; the Engine agrees on batch
shapes and counts between hosts, so shares may differ in size or in the number of
candidate rows) and all-gather their predictions before scoring. RICES embeds all queries
on every process (identical inputs to the sharded model) and keeps its own share.
RICES selects the same demonstrations every trial, so it runs one trial.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Callable, Sequence

import jax
import ml_collections
import numpy as np
from flax import nnx

from kosmos.data import chat as chat_lib
from kosmos.data import records
from kosmos.eval import demos as demos_lib
from kosmos.eval import grounding as grounding_eval
from kosmos.eval import metrics
from kosmos.eval import prompts as prompts_lib
from kosmos.eval import protocols as protocols_lib
from kosmos.eval import tasks as tasks_lib
from kosmos.infer import engine as engine_lib
from kosmos.infer import prompt as prompt_lib
from kosmos.model import multimodal


@dataclasses.dataclass(frozen=True)
class Settings:
  """Decoding per task kind (the kosmos protocol's; `settings_for` gives a protocol's).
  stop_strings: generated text is cut at the first of them (e.g. "<|endofchunk|>")."""
  caption_beams: int = 3
  caption_tokens: int = 20
  vqa_beams: int = 1
  vqa_tokens: int = 5
  grounding_tokens: int = 8  # <object> <patch_index_a> <patch_index_b> </object> </s> + slack
  length_penalty: float = 0.0
  batch_size: int = 8
  stop_strings: tuple[str, ...] = ()


def settings_for(protocol: str | protocols_lib.Protocol, task_name: str,
                 **overrides: Any) -> Settings:
  """`protocol`'s Settings for `task_name`, with `overrides` (None values ignored) on top."""
  values = protocols_lib.get_protocol(protocol).settings_for(task_name)
  values.update({k: v for k, v in overrides.items() if v is not None})
  values["stop_strings"] = tuple(values.get("stop_strings", ()))
  return Settings(**values)


def build_model(config: ml_collections.ConfigDict, params: Any,
                mesh: jax.sharding.Mesh | None = None) -> multimodal.Multimodal:
  """A Multimodal from `params`: a model (returned as is), an nnx.State, or the pure dict
  `kosmos.workdir.restore_params` returns."""
  if isinstance(params, multimodal.Multimodal):
    return params
  abstract = nnx.eval_shape(lambda: multimodal.Multimodal(config.model, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  if isinstance(params, nnx.State):
    params = nnx.to_pure_dict(params)
  nnx.replace_by_pure_dict(state, params)
  model = nnx.merge(graphdef, state)
  return model


def vision_embed_fn(engine: engine_lib.Engine) -> Callable[[list[bytes]], np.ndarray]:
  """RICES features from the model's own vision tower: mean of the ViT's output tokens."""
  model = nnx.merge(engine.graphdef, engine.state)

  @nnx.jit
  def features(model, images):
    out, _ = model.vision(images)
    out = out.mean(axis=1)
    if engine.mesh is not None:  # replicated, so every process can read all of it
      out = jax.lax.with_sharding_constraint(
          out, jax.sharding.NamedSharding(engine.mesh, jax.sharding.PartitionSpec()))
    return out

  def embed(encoded: list[bytes]) -> np.ndarray:
    images = np.stack([prompt_lib.load_image(b, engine.image_size) for b in encoded])
    return np.asarray(features(model, images), np.float32)
  return embed


def _allgather_json(values: list[Any]) -> list[Any]:
  """Concatenates every process's list (JSON-serialisable items), in process order."""
  if jax.process_count() == 1:
    return list(values)
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  data = np.frombuffer(json.dumps(values).encode(), np.uint8)
  sizes = multihost_utils.process_allgather(np.asarray([data.size], np.int64))
  padded = np.zeros(int(np.max(sizes)), np.uint8)
  padded[:data.size] = data
  gathered = multihost_utils.process_allgather(padded)
  out = []
  for size, row in zip(np.asarray(sizes).reshape(-1), np.asarray(gathered)):
    out.extend(json.loads(row[:int(size)].tobytes().decode()))
  return out


def _local_indices(num_queries: int) -> list[int]:
  """This process's share of the queries: i::P (the engine lets shares differ in size)."""
  return list(range(jax.process_index(), num_queries, jax.process_count()))


def score_predictions(task: tasks_lib.Task, predictions: list[dict[str, Any]],
                      metric_options: dict | None = None) -> float:
  """The task metric (x100) from saved predictions (see `run_trial` for their keys), with
  `metric_options` in place of the task's (for `Task.extra_metrics`)."""
  if metric_options is not None:
    task = dataclasses.replace(task, metric_options=dict(metric_options))
  if task.kind == tasks_lib.GROUNDING:
    return metrics.score(metrics.BOX_ACCURACY, [p["prediction"] for p in predictions],
                         [p["boxes"] for p in predictions], **task.metric_options)
  if task.kind == tasks_lib.CAPTION:
    return metrics.score(metrics.CIDER, {p["id"]: p["prediction"] for p in predictions},
                         {p["id"]: p["references"] for p in predictions}, **task.metric_options)
  if task.metric == metrics.POPE_F1:
    return metrics.score(metrics.POPE_F1, [p["prediction"] for p in predictions],
                         [p["references"][0] for p in predictions])
  if task.kind == tasks_lib.VQA:
    scored = [p for p in predictions if p["references"]]
    if not scored:
      return math.nan
    return metrics.score(metrics.VQA_ACCURACY, [p["prediction"] for p in scored],
                         [p["references"] for p in scored], **task.metric_options)
  if task.metric == metrics.ROC_AUC:
    probs = metrics.class_probabilities(np.asarray([p["logprobs"] for p in predictions]))
    return metrics.score(metrics.ROC_AUC, probs[:, 1].tolist(),
                         [p["label"] for p in predictions], **task.metric_options)
  return metrics.score(metrics.ACCURACY, [p["prediction"] for p in predictions],
                       [p["label"] for p in predictions], **task.metric_options)


BLANK_GRAY = 128  # uint8 value of every pixel of a blanked image


def blank(prompt: prompts_lib.Prompt, image_size: int) -> prompts_lib.Prompt:
  """`prompt` with each image replaced by a uniform gray [S, S, 3] image (image ablation:
  same text, same number of image tokens, no visual information)."""
  gray = np.full((image_size, image_size, 3), BLANK_GRAY, np.uint8)
  segments = [{"image": gray} if "image" in s else s for s in prompt.segments]
  return dataclasses.replace(prompt, segments=segments)


def score_details(task: tasks_lib.Task, predictions: list[dict[str, Any]]) -> dict | None:
  """Figures a task reports beside its metric: its `extra_metrics` (Flickr30k Entities'
  merged-box R@1), or POPE's accuracy, precision, recall, F1 and yes-ratio (x100) and its
  counts; None for other tasks."""
  if task.extra_metrics:
    return {name: score_predictions(task, predictions, options)
            for name, options in task.extra_metrics.items()}
  if task.metric != metrics.POPE_F1:
    return None
  figures = metrics.pope([p["prediction"] for p in predictions],
                         [p["references"][0] for p in predictions])
  return {k: v if k in ("tp", "fp", "tn", "fn") else 100.0 * v for k, v in figures.items()}


# A VQA query's user message in chat evaluation (the chat template adds the roles).
CHAT_VQA_PROMPT = "{question}"


def chat_prompt(template: chat_lib.ChatTemplate, prompt: prompts_lib.Prompt) -> prompts_lib.Prompt:
  """A 0-shot prompt as one user turn of a chat template, the assistant's turn open."""
  conversation = [{"turn": records.USER}, *chat_lib.user_content(template, prompt.segments),
                  {"turn": records.ASSISTANT}]
  return dataclasses.replace(prompt, segments=chat_lib.prompt_segments(template, conversation))


def run_trial(engine: engine_lib.Engine, task: tasks_lib.Task, queries: Sequence,
              demos: Sequence[Sequence], *, text_only: bool, settings: Settings,
              progress: Callable[[int], Any] | None = None,
              blank_images: bool = False,
              protocol: str | protocols_lib.Protocol = protocols_lib.KOSMOS,
              chat_template: chat_lib.ChatTemplate | None = None
              ) -> list[dict[str, Any]]:
  """Predictions for `queries` (this process's), each {"id", "prediction", "raw" |
  "logprobs", "references" | "label"}; `demos[i]` are query i's demonstrations.
  blank_images: every image (demonstrations' and query's) replaced by `BLANK_GRAY`.
  protocol: how classes are scored ("logprobs" = summed or per-token mean log-likelihood
  per class) and generations post-processed (kosmos.eval.protocols).
  chat_template: each prompt (no demonstrations allowed) becomes one user turn of this
  template (`chat_prompt`) and its stop string ends the answers; a VQA task's message is
  its bare question (`CHAT_VQA_PROMPT`) unless a `prompt` option overrides it."""
  protocol = protocols_lib.get_protocol(protocol)
  template = prompts_lib.get_template(task.template, task.template_overrides)
  if (chat_template is not None and task.kind == tasks_lib.VQA
      and "prompt" not in task.template_overrides):
    # The chat template marks the turns: the user's message is the question itself, not
    # the few-shot "Question: ... Answer:" prompt inside "USER: ... ASSISTANT:".
    template = dataclasses.replace(template, prompt=CHAT_VQA_PROMPT)
  classify = task.kind in (tasks_lib.CLASSIFICATION, tasks_lib.MULTIPLE_CHOICE)
  sizes: dict[str, tuple[int, int]] = {}
  if any(q.boxes for q in queries):
    if engine.grounding is None:
      raise ValueError(f"task {task.name!r} shows or asks for boxes: the model needs location "
                       "tokens (config.tokenizer.grounding.grid > 0, e.g. configs/kosmos2.py "
                       "or an imported Kosmos-2)")
    def boxed(examples: Sequence) -> list:
      return grounding_eval.with_objects(examples, engine.image_size, engine.grounding.grid,
                                         sizes)
    queries, demos = boxed(queries), [boxed(d) for d in demos]
  built = [prompts_lib.build_prompt(template, d, q, candidates=task.candidates(q) if classify
                                    else (), text_only_demos=text_only)
           for q, d in zip(queries, demos)]
  if chat_template is not None:
    if any(demos):
      raise ValueError("a chat-template prompt holds one user turn: no demonstrations")
    built = [chat_prompt(chat_template, b) for b in built]
    settings = dataclasses.replace(settings, stop_strings=settings.stop_strings + (
        (chat_template.stop,) if chat_template.stop else ()))
  if blank_images:
    built = [blank(b, engine.image_size) for b in built]
  out = []
  if classify:
    scores = engine.score([b.segments for b in built], [b.candidates for b in built],
                          batch_size=settings.batch_size, progress=progress)
    which = protocols_lib.class_score_index(protocol)
    for q, s in zip(queries, scores):
      logprobs = [pair[which] for pair in s]
      out.append({"id": q.id, "prediction": int(np.argmax(logprobs)), "logprobs": logprobs,
                  "label": q.label})
    return out
  if task.kind == tasks_lib.GROUNDING:
    gens = engine.generate([b.segments for b in built], max_new_tokens=settings.grounding_tokens,
                           batch_size=settings.batch_size, stop_strings=settings.stop_strings,
                           progress=progress)
    return [grounding_eval.prediction(q, b.segments[-1].get("text", ""), g.tagged, sizes[q.id],
                                      engine.image_size, engine.grounding.grid)
            for q, b, g in zip(queries, built, gens)]
  caption = task.kind == tasks_lib.CAPTION
  gens = engine.generate(
      [b.segments for b in built],
      max_new_tokens=settings.caption_tokens if caption else settings.vqa_tokens,
      num_beams=settings.caption_beams if caption else settings.vqa_beams,
      length_penalty=settings.length_penalty, batch_size=settings.batch_size,
      stop_strings=settings.stop_strings, progress=progress)
  post = protocols_lib.postprocess_fn(protocol, task, chat=chat_template is not None)
  for q, g in zip(queries, gens):
    out.append({"id": q.id, "prediction": post(g.text), "raw": g.text,
                "references": list(q.references)})
  return out


def evaluate(config: ml_collections.ConfigDict, params: Any, task: str | tasks_lib.Task,
             data_dir: str, shots: Sequence[int], *, trials: int = 1, rices: bool = False,
             num_queries: int = 0, seed: int = 0, settings: Settings | None = None,
             mesh: jax.sharding.Mesh | None = None, task_options: dict | None = None,
             rices_cache_dir: str | None = None, show_progress: bool = True,
             engine: engine_lib.Engine | None = None,
             blank_images: bool = False,
             protocol: str | protocols_lib.Protocol = protocols_lib.KOSMOS,
             rices_embed_fn: demos_lib.EmbedFn | None = None,
             rices_embedder: str = "own_vision", chat: bool = False,
             text_only_demos: bool = True) -> dict[str, Any]:
  """Evaluates one task at several shot counts (module docstring). Returns a results dict
  with "rows" (one per shot count) and "predictions" {shots: [per-trial prediction lists]}.
  blank_images: the image ablation, every image shown as uniform gray (`blank`).
  Tasks with their own demonstrations (`Task.demos_for`) run one trial per shot count.
  protocol: a kosmos.eval.protocols name or Protocol (prompts, scoring, post-processing,
    VQA metric variant, and `settings` when None); a "protocol" entry of `task_options`
    takes its place (so config-driven evals can name one).
  rices_embed_fn / rices_embedder: RICES features from another tower (e.g.
    kosmos.eval.rices_towers.load) and its name for the feature cache; default: the
    evaluated model's own vision tower.
  chat: render each query as one user turn of the config's chat template
    (config.tokenizer.chat_template, kosmos.data.chat) and generate the assistant's answer;
    shots must be [0], and no demonstrations are shown (not even text-only ones).
  text_only_demos: 0 shots shows two text-only demonstrations (Flamingo's protocol) when
    the task allows it (`Task.text_only_zero_shot`); False: 0 shots shows none."""
  task_options = dict(task_options or {})
  protocol = protocols_lib.get_protocol(task_options.pop("protocol", protocol))
  if isinstance(task, str):
    task = tasks_lib.load_task(task, data_dir, **task_options)
  task = protocols_lib.apply(protocol, task, frozenset(task_options))
  if settings is None:
    settings = settings_for(protocol, task.name)
  if trials < 1:
    raise ValueError(f"trials={trials} must be >= 1")
  queries = tasks_lib.sample_eval_set(task.test, num_queries, seed)
  if engine is None:
    engine = engine_lib.Engine(build_model(config, params, mesh), config, mesh=mesh,
                               length_multiple=128)
  chat_template = chat_lib.from_config(config.tokenizer) if chat else None
  if chat and any(shots):
    raise ValueError(f"chat evaluation shows no demonstrations: it needs --shots 0, not "
                     f"{list(shots)}")
  mine = _local_indices(len(queries))
  local = [queries[i] for i in mine]

  def by_rices(shot: int) -> bool:  # 0 shots: 2 nearest text-only demos, if the protocol says
    return rices and task.demos_for is None and (shot > 0 or protocol.rices_zero_shot)

  rices_selector = None
  if any(by_rices(s) for s in shots):
    cache = (demos_lib.embedding_cache_path(rices_cache_dir, task.name, rices_embedder)
             if rices_cache_dir else None)
    rices_selector = demos_lib.Rices(task.train, rices_embed_fn or vision_embed_fn(engine),
                                     cache_path=cache)
    # One selection at the most shots serves every count (the k nearest are the last k of
    # it), and every process embeds the same (all) queries: identical sharded-model inputs.
    most = max(demos_lib.effective_shots(s) for s in shots if by_rices(s))
    rices_demos = rices_selector.select(queries, most)
  rows, predictions = [], {}
  total = sum(len(local) * (1 if by_rices(s) else trials) for s in shots)
  bar = _progress_bar(total, f"{task.name}", show_progress and jax.process_index() == 0)
  for shot in shots:
    k = demos_lib.effective_shots(shot, text_only_demos and task.text_only_zero_shot)
    fixed_demos = task.demos_for is not None
    shot_trials = 1 if fixed_demos or by_rices(shot) else trials
    values, shot_predictions, details = [], [], []
    for trial in range(shot_trials):
      if chat_template is not None or k == 0:
        demos = [[] for _ in local]
      elif fixed_demos:
        demos = [task.demos_for(q, k) for q in local]
      elif by_rices(shot):
        demos = [rices_demos[i][-k:] for i in mine]  # k >= 1
      else:
        random_demos = demos_lib.RandomDemos(task.train, seed=seed + trial)
        demos = [random_demos.select(q, k) for q in local]
      preds = run_trial(engine, task, local, demos, text_only=shot == 0, settings=settings,
                        progress=bar.update if bar else None, blank_images=blank_images,
                        protocol=protocol, chat_template=chat_template)
      preds = _allgather_json(preds)
      values.append(score_predictions(task, preds))
      details.append(score_details(task, preds))
      shot_predictions.append(preds)
    mean, std = metrics.mean_std(values)
    source = "task" if fixed_demos else ("rices" if by_rices(shot) else "random")
    rows.append({"shots": shot, "metric": task.metric, "values": values, "mean": mean,
                 "std": std, "trials": shot_trials, "num_queries": len(queries),
                 "demos": source if shot else f"text_only_{source}" if k else "none"})
    if details[0] is not None:
      rows[-1]["details"] = details
    predictions[str(shot)] = shot_predictions
  if bar:
    bar.close()
  return {"task": task.name, "kind": task.kind, "metric": task.metric, "rows": rows,
          "predictions": predictions, "skipped": dict(task.skipped),
          "settings": dataclasses.asdict(settings), "seed": seed, "blank_images": blank_images,
          "protocol": protocol.name, "metric_options": dict(task.metric_options),
          "chat_template": dataclasses.asdict(chat_template) if chat_template else None,
          "rices_embedder": rices_embedder if rices_selector is not None else None,
          "template": dataclasses.asdict(prompts_lib.get_template(task.template,
                                                                  task.template_overrides))}


def _progress_bar(total: int, desc: str, show: bool):
  if not show:
    return None
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  return tqdm(total=total, desc=desc, unit="query")


def format_table(result: dict[str, Any]) -> str:
  """A plain-text table: shots | metric mean ± std | trials | queries."""
  lines = [f"{result['task']} ({result['metric']}, x100)",
           f"{'shots':>5}  {'mean':>8}  {'std':>7}  {'trials':>6}  {'queries':>7}"]
  for row in result["rows"]:
    lines.append(f"{row['shots']:>5}  {row['mean']:>8.2f}  {row['std']:>7.2f}  "
                 f"{row['trials']:>6}  {row['num_queries']:>7}")
    for figures in row.get("details", ()):
      lines.append("       " + "  ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                                         for k, v in figures.items()))
  return "\n".join(lines)


def write_results(result: dict[str, Any], out: str) -> tuple[str, str]:
  """Writes `out` (everything but predictions) and `<out stem>.predictions.json` next to it;
  returns both paths (process 0 writes)."""
  stem = out[:-5] if out.endswith(".json") else out
  pred_path = stem + ".predictions.json"
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    summary = {k: v for k, v in result.items() if k != "predictions"}
    summary["predictions_file"] = os.path.basename(pred_path)
    for path, payload in ((out, summary), (pred_path, result["predictions"])):
      tmp = path + ".tmp"
      with open(tmp, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=1)
      os.replace(tmp, path)
  return out, pred_path
