"""`kosmos-export` and `kosmos-import` (also `python -m kosmos.interop.main export|import`).

    kosmos-export --workdir DIR [--step N] --format hf|params --out OUT [--dtype D]
                  [--max-shard-size 5GB] [--text-only]
    kosmos-import --format hf --src DIR [--config configs/X.py[:arg]] --out OUT
    kosmos-import --format hf --lm LLAMA_DIR --vision CLIP_OR_SIGLIP_DIR
                  [--connector mlp|linear|resampler|attention_pool] [--config ...] --out OUT

Unsupported models are refused with exit status 2 and a message naming the feature; an
absent or malformed source (directory, config.json, safetensors file) ends the same way with
one line naming the file.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from kosmos.interop import hf_config


def _export_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="kosmos-export", description=(
      "Export a kosmos workdir checkpoint as a transformers model (Kosmos-2, LLaVA, Llama) "
      "or as a params-only Orbax workdir. A Kosmos-2 export holds tokenizer.json: "
      "AutoTokenizer.from_pretrained(OUT) encodes and decodes kosmos's token ids."))
  p.add_argument("--workdir", required=True, help="kosmos workdir (config.json + checkpoints/)")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  p.add_argument("--format", choices=("hf", "params"), required=True)
  p.add_argument("--out", required=True, help="output directory")
  p.add_argument("--dtype", default=None,
                 help="hf: float32|bfloat16|float16 (default: param_dtype); params: float32|bfloat16")
  p.add_argument("--max-shard-size", default="5GB", help="hf: largest safetensors shard (5GB)")
  p.add_argument("--text-only", action="store_true",
                 help="hf: export only the llama decoder as LlamaForCausalLM")
  p.add_argument("--summary", default=None, help="write a JSON summary to this file")
  return p


def _import_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="kosmos-import", description=(
      "Import a transformers checkpoint (Kosmos-2, LLaVA, Llama [+ CLIP/SigLIP]) into a workdir. "
      "Exit status 2, with one line naming the feature or file, for an unsupported model or a "
      "missing / malformed source."))
  p.add_argument("--format", choices=("hf",), default="hf")
  p.add_argument("--src", default=None, help=(
      "transformers model directory (config.json, *.safetensors; its SentencePiece model, if "
      "any, is copied to OUT/tokenizer.model)"))
  p.add_argument("--lm", default=None, help="PaLM-E start: LlamaForCausalLM directory")
  p.add_argument("--vision", default=None, help="PaLM-E start: CLIP/SigLIP vision directory")
  p.add_argument("--connector", default="mlp",
                 choices=("mlp", "linear", "resampler", "attention_pool"),
                 help="PaLM-E start: the fresh connector (default mlp)")
  p.add_argument("--num-tokens", type=int, default=64,
                 help="PaLM-E start: latents of a resampler/attention_pool connector")
  p.add_argument("--config", default=None, help="configs/X.py[:arg] to use instead of inferring")
  p.add_argument("--out", required=True, help="output workdir")
  return p


def export_main(argv: Sequence[str] | None = None) -> int:
  args = _export_parser().parse_args(argv)
  try:
    if args.format == "hf":
      from kosmos.interop import hf_export  # pylint: disable=g-import-not-at-top
      summary = hf_export.export_hf(args.workdir, args.out, step=args.step, dtype=args.dtype,
                                    max_shard_size=args.max_shard_size, text_only=args.text_only)
    else:
      from kosmos.interop import params_export  # pylint: disable=g-import-not-at-top
      summary = params_export.export_params(args.workdir, args.out, step=args.step,
                                            dtype=args.dtype or "float32")
  except hf_config.Unsupported as e:
    print(f"kosmos-export: cannot export: {e}", file=sys.stderr)
    return 2
  if args.summary:
    with open(args.summary, "w") as f:
      json.dump(summary, f, indent=1)
  return 0


def import_main(argv: Sequence[str] | None = None) -> int:
  parser = _import_parser()
  args = parser.parse_args(argv)
  from kosmos import configs  # pylint: disable=g-import-not-at-top
  from kosmos.interop import hf_import  # pylint: disable=g-import-not-at-top
  from kosmos.interop import stream  # pylint: disable=g-import-not-at-top
  config = configs.load(args.config) if args.config else None
  try:
    if args.src and not (args.lm or args.vision):
      hf_import.import_hf(args.src, args.out, config=config)
    elif args.lm and args.vision and not args.src:
      hf_import.import_palme(args.lm, args.vision, args.out, connector=args.connector,
                             config=config, num_tokens=args.num_tokens)
    else:
      parser.error("give either --src DIR, or both --lm DIR and --vision DIR")
  except (hf_config.Unsupported, hf_config.ConfigMismatch, stream.BadFile) as e:
    print(f"kosmos-import: cannot import: {e}", file=sys.stderr)
    return 2
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  commands = {"export": export_main, "import": import_main}
  if not argv or argv[0] not in commands:
    print("usage: python -m kosmos.interop.main export|import [--help]", file=sys.stderr)
    return 2
  return commands[argv[0]](argv[1:])


if __name__ == "__main__":
  sys.exit(main())
