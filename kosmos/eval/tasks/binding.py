"""Fast-binding classification episodes (Frozen, Tsimpoukelli et al. 2021) from jsonl.

`episodes.jsonl`, one episode a line (the shapes world writes it, see
`kosmos.demo.eval_sets`; image paths relative to the file's directory):

    {"id": "binding-00000",
     "support": [{"image": "images/00000_s0.png", "label": "dax"}, ...],  # rounds of `ways`
     "query": {"image": "images/00000_q.png"},
     "choices": ["dax", "blicket"], "label": 0, ...}

Each episode binds nonce words to image classes afresh, so only its own support set can
tell which word is which: an episode's demonstrations are its support items, never drawn
from a pool. `k` shots = the first `ways * k` support items (k per word: the support is
ordered in rounds that show every word once); 0 shots = the runner's text-only
demonstrations (the words without their images), so 0-shot accuracy is at chance.
Rank classification over the episode's choices (`Example.choices`), metric accuracy.

Task induction (`kosmos-eval --task induction`, the shapes world's eval/induction/) uses
the same layout with `"support_per_shot": 1` in each row (k shots = the first k support
items, whatever the number of choices) and no text-only demonstrations at 0 shots: they
would name the episode's label type, which only the images' labels may show.
"""

from __future__ import annotations

import collections
import os

from kosmos.eval.tasks.example import MULTIPLE_CHOICE, Example, Task, check_unique_ids, read_jsonl


def _episode(row: dict, root: str, skipped: collections.Counter
             ) -> tuple[Example, list[Example], int] | None:
  try:
    choices = tuple(str(c) for c in row["choices"])
    label = int(row["label"])
    support = [(os.path.join(root, s["image"]), str(s["label"])) for s in row["support"]]
    per_shot = int(row.get("support_per_shot", len(choices)))
    query_path = os.path.join(root, row["query"]["image"])
    example_id = str(row["id"])
  except (KeyError, TypeError, ValueError):
    skipped["bad_episode_row"] += 1
    return None
  if (len(choices) < 2 or not 0 <= label < len(choices) or per_shot < 1
      or any(w not in choices for _, w in support)):
    skipped["bad_episode_row"] += 1
    return None
  if not all(os.path.exists(p) for p, _ in support) or not os.path.exists(query_path):
    skipped["missing_image"] += 1
    return None
  query = Example(id=example_id, fields={"answer": choices[label]}, label=label, choices=choices,
                  image_paths=(query_path,))
  demos = [Example(id=f"{example_id}/s{i}", fields={"answer": word}, image_paths=(path,))
           for i, (path, word) in enumerate(support)]
  return query, demos, per_shot


def binding_task(jsonl_path: str, *, name: str = "binding", template: str = "binding",
                 text_only_zero_shot: bool = True) -> Task:
  """Episodes of `jsonl_path` as a multiple-choice task with per-episode demonstrations.
  text_only_zero_shot: False = 0 shots shows no demonstrations (`Task`)."""
  root = os.path.dirname(os.path.abspath(jsonl_path))
  skipped: collections.Counter = collections.Counter()
  queries, supports, per_shot = [], {}, {}
  for _, row in read_jsonl(jsonl_path, skipped):
    parsed = _episode(row, root, skipped)
    if parsed is not None:
      queries.append(parsed[0])
      supports[parsed[0].id] = parsed[1]
      per_shot[parsed[0].id] = parsed[2]
  check_unique_ids(queries, jsonl_path)
  if not queries:
    raise ValueError(f"{jsonl_path}: no usable episodes (skipped: {dict(skipped)})")

  def demos_for(query: Example, shots: int) -> list[Example]:
    support = supports[query.id]
    need = per_shot[query.id] * shots
    if need > len(support):
      raise ValueError(f"episode {query.id!r} has {len(support)} support items; {shots} shots "
                       f"x {per_shot[query.id]} items per shot needs {need}")
    return support[:need]

  return Task(name=name, kind=MULTIPLE_CHOICE, metric="accuracy", template=template,
              train=[], test=queries, skipped=skipped, demos_for=demos_for,
              text_only_zero_shot=text_only_zero_shot)
