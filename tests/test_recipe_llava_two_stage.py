"""configs/recipes/llava.py at demo scale, both stages through the real trainer: stage 1
(connector only, pairs), then stage 2 (connector + LM, conversations in LLaVA's v1
template) initialised from stage 1's workdir. The frozen ViT is bit-identical after stage
2, and stage 2's loss is over the assistant's tokens only. Slow (~20 s on 2 cores)."""

import os

import ml_collections
import numpy as np
import pytest

import tiny
import train_fixture
from kosmos import configs
from kosmos import defaults
from kosmos import workdir as workdir_lib
from kosmos.data import chat, pipeline, records
from kosmos.data import tokenizer as tokenizer_lib
from kosmos.model import multimodal
from kosmos.train import trainer

TOK = tokenizer_lib.ByteTokenizer()
ANSWERS = {name: f"It is {name}." for name in train_fixture.COLOURS}


def write_conversations(directory: str, n: int = 32) -> None:
  os.makedirs(directory)
  names = list(train_fixture.COLOURS)
  with records.ShardWriter(os.path.join(directory, records.shard_name("conv", 0, 1))) as w:
    for i in range(n):
      name = names[i % len(names)]
      w.write({"id": str(i), "source": "conv", "kind": "conversation", "segments": [
          {"turn": "user"}, {"image": train_fixture._png(train_fixture.COLOURS[name], i)},
          {"text": "\nWhat colour is it?"}, {"turn": "assistant"}, {"text": ANSWERS[name]},
          {"turn": "user"}, {"text": "Sure?"}, {"turn": "assistant"}, {"text": "Yes."}]})


def demo_scale(config, sources: dict, steps: int = 3):
  """The recipe's optimiser, freezing, stages and template on a tiny llama-family model
  with the byte tokenizer in LLaVA's layout (no <image> </image>, slots alone)."""
  template = config.tokenizer.chat_template
  config.model = tiny.model_config("llama", "mlp")
  config.model.decoder.update(vocab_size=tokenizer_lib.BYTE_VOCAB_SIZE, max_len=128)
  config.tokenizer = defaults.tokenizer()
  config.tokenizer.update(image_start_id=-1, image_end_id=-1, chat_template=template)
  config.data.update(seq_len=96, global_batch_size=8, mix_estimate_records=8)
  config.data.sources = ml_collections.ConfigDict(sources)
  config.optim.update(warmup_steps=1)
  config.train.update(steps=steps, checkpoint_every=steps, log_every=1, keep=1)
  config.mesh.update(data=-1, fsdp=1, tensor=1)
  return config


def _flat(tree, prefix=""):
  out = {}
  for k, v in tree.items():
    out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: np.asarray(v)})
  return out


@pytest.mark.slow
def test_llava_two_stages(tmp_path):
  dirs = train_fixture.write_records(str(tmp_path / "data"))
  write_conversations(str(tmp_path / "data" / "conv"))
  recipe = configs.load_module(os.path.join(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))), "configs", "recipes", "llava.py"))

  stage1 = demo_scale(recipe.get_config("stage1"),
                      {"pair": dict(path=dirs["pair"], kind="pair", weight=1.0)})
  wd1 = str(tmp_path / "stage1")
  trainer.train_and_evaluate(stage1, wd1)

  stage2 = demo_scale(recipe.get_config(f"stage2,{wd1}"), {"conv": dict(
      path=str(tmp_path / "data" / "conv"), kind="conversation", weight=1.0)})
  assert stage2.train.init_from == wd1 and stage2.optim.frozen == (r"^vision\.",)
  assert chat.from_config(stage2.tokenizer).name == "llava_v1"
  wd2 = str(tmp_path / "stage2")
  trainer.train_and_evaluate(stage2, wd2)

  _, p1 = workdir_lib.restore_params(wd1)
  _, p2 = workdir_lib.restore_params(wd2)
  p1, p2 = _flat(p1), _flat(p2)
  assert p1.keys() == p2.keys()
  changed = {k.split(".")[0] for k in p1 if not np.array_equal(p1[k], p2[k])}
  assert changed == {"connector", "decoder"}  # the ViT is bit-identical
  for k in p1:
    if k.startswith("vision."):
      assert p1[k].tobytes() == p2[k].tobytes(), k

  # Stage 2's batches: the loss is on the answers and their </s>, nothing else. Rows hold
  # conversations whole or cut; each piece is found in its conversation's hand-written
  # token layout, whose flags its loss mask must equal (the piece's last position: 0).
  n = multimodal.tokens_per_image(stage2.model)
  system = chat.get("llava_v1").system
  layouts = []
  for name, answer in ANSWERS.items():
    tokens, flags = [TOK.bos_id], [0]
    for piece, flag in [(system + " USER: ", 0), (None, 0), ("\nWhat colour is it? ASSISTANT:", 0),
                        (" " + answer, 1), (TOK.eos_id, 1), ("USER: Sure? ASSISTANT:", 0),
                        (" Yes.", 1), (TOK.eos_id, 1)]:
      ids = ([piece] if isinstance(piece, int) else [TOK.image_slot_id] * n if piece is None
             else TOK.encode(piece))
      tokens += ids
      flags += [flag] * len(ids)
    layouts.append((np.asarray(tokens), np.asarray(flags, np.float32)))
  batch = next(iter(pipeline.make_dataset(
      stage2.data, stage2.tokenizer, image_size=stage2.model.vision.image_size,
      tokens_per_image=n)))
  pieces = 0
  for row in range(batch["tokens"].shape[0]):
    seg = batch["segment_ids"][row]
    for doc in np.unique(seg[seg > 0]):
      piece = batch["tokens"][row][seg == doc]
      mask = batch["loss_mask"][row][seg == doc]
      found = [(tokens, flags, at) for tokens, flags in layouts
               for at in range(len(tokens) - len(piece) + 1)
               if np.array_equal(tokens[at:at + len(piece)], piece)]
      assert found, TOK.decode(piece)
      tokens, flags, at = found[0]
      np.testing.assert_array_equal(mask[:-1], flags[at + 1:at + len(piece)])
      assert mask[-1] == 0
      pieces += 1
  assert pieces > batch["tokens"].shape[0]  # conversations were cut and packed together
  assert batch["loss_mask"].sum() > 0
