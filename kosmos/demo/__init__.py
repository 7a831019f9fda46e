"""The demo's own room: the synthetic shapes world and everything `make demo` runs on it.

  world      scenes, rendering, captions, questions, nonce words (kosmos.demo.world)
  prepare    `python data/prepare.py shapes`: the world's training records and eval sets
  eval_sets  the eval sets in public layouts (COCO captions, VQAv2, binding episodes)
  runner     `python -m kosmos.demo`: prepare -> train -> few-shot eval -> HF export -> report
  report     OUT/report.md and its pictures

Nothing here serves real data; `kosmos.data` holds what does.
"""
