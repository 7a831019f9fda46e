"""Conversations through the Grain pipeline: loss only on the assistants' answers and their
end-of-turn tokens, also when packed beside another conversation and when cut across rows.

The expected rows are written out by hand (byte tokenizer: one token per byte) from the
LLaVA v1 rendering "{system} USER: ... ASSISTANT: ...</s>", not derived from kosmos.data.chat.
"""

from __future__ import annotations

import os

import numpy as np

from kosmos import defaults
from kosmos.data import chat, packing, pipeline, records

from test_pipeline import N, S, TOK, code_color, image_bytes, take

SYSTEM = chat.get("llava_v1").system
IMG = object()  # an image span in the expected layout
BOS, EOS = object(), object()

TWO_IMAGES = [{"turn": "user"}, {"image": image_bytes(code_color(1))}, {"text": "\nWhat is red?"},
              {"turn": "assistant"}, {"text": "A square."},
              {"turn": "user"}, {"text": "Where is "}, {"image": image_bytes(code_color(2))},
              {"text": "?"}, {"turn": "assistant"}, {"text": "Top left."}]
# (piece, loss) for the conversation above and for a text-only one.
TWO_IMAGES_LAYOUT = [(BOS, 0), (SYSTEM + " USER: ", 0), (IMG, 0), ("\nWhat is red? ASSISTANT:", 0),
                     (" A square.", 1), (EOS, 1), ("USER: Where is ", 0), (IMG, 0),
                     ("? ASSISTANT:", 0), (" Top left.", 1), (EOS, 1)]
TEXT_ONLY = [{"turn": "user"}, {"text": "Hi"}, {"turn": "assistant"}, {"text": "Hello."}]
TEXT_ONLY_LAYOUT = [(BOS, 0), (SYSTEM + " USER: Hi ASSISTANT:", 0), (" Hello.", 1), (EOS, 1)]


def expand(layout):
  """(tokens, loss flag per token) of a hand-written layout."""
  tokens, flags = [], []
  for piece, flag in layout:
    ids = ([TOK.bos_id] if piece is BOS else [TOK.eos_id] if piece is EOS else
           [TOK.image_start_id] + [TOK.image_slot_id] * N + [TOK.image_end_id] if piece is IMG
           else TOK.encode(piece))
    tokens += ids
    flags += [flag if piece is not IMG else 0] * len(ids)
  return np.asarray(tokens), np.asarray(flags)


def write(directory, conversations):
  os.makedirs(directory, exist_ok=True)
  with records.ShardWriter(os.path.join(directory, records.shard_name("conv", 0, 1))) as w:
    for i, segments in enumerate(conversations):
      w.write({"id": str(i), "source": "conv", "kind": "conversation", "segments": segments})


def make(directory, **overrides):
  data = defaults.data()
  data.update(seq_len=len(expand(TWO_IMAGES_LAYOUT)[0]) + len(expand(TEXT_ONLY_LAYOUT)[0]) + 5,
              global_batch_size=1, max_images_per_row=2, packing_bins=1, min_piece_tokens=16,
              sources={"conv": {"path": directory, "kind": "conversation", "weight": 1.0}})
  data.update(overrides)
  tokenizer = defaults.tokenizer()
  tokenizer.chat_template = chat.config("llava_v1")
  return pipeline.make_dataset(data, tokenizer, image_size=S, tokens_per_image=N)


def expected_row(docs, seq_len):
  """tokens, targets, loss_mask of docs packed in order into one row."""
  tokens, targets, mask = (np.zeros(seq_len, np.int64) for _ in range(3))
  at = 0
  for doc_tokens, flags in docs:
    n = len(doc_tokens)
    tokens[at:at + n] = doc_tokens
    targets[at:at + n - 1] = doc_tokens[1:]
    mask[at:at + n - 1] = flags[1:]
    at += n
  return tokens, targets, mask.astype(np.float32)


def test_two_turns_two_images_packed_beside_another(tmp_path):
  write(str(tmp_path / "conv"), [TWO_IMAGES, TEXT_ONLY])
  ds = make(str(tmp_path / "conv"))
  row = {k: v[0] for k, v in next(iter(ds)).items() if k != "data_stats"}
  docs = {1: expand(TWO_IMAGES_LAYOUT), 0: expand(TEXT_ONLY_LAYOUT)}
  first = int(row["tokens"][len(expand(TEXT_ONLY_LAYOUT)[0]) - 1] == TOK.eos_id)  # B first?
  order = [docs[0], docs[1]] if first else [docs[1], docs[0]]
  tokens, targets, mask = expected_row(order, len(row["tokens"]))
  np.testing.assert_array_equal(row["tokens"], tokens)
  np.testing.assert_array_equal(row["targets"], targets)
  np.testing.assert_array_equal(row["loss_mask"], mask)
  lengths = [len(d[0]) for d in order]
  np.testing.assert_array_equal(row["segment_ids"][:sum(lengths)],
                                np.repeat([1, 2], lengths))
  # Exactly the answers and their </s> are targets with loss, in both conversations.
  assert TOK.decode(row["targets"][row["loss_mask"] > 0]) == "".join(
      a for a in ([" Hello.", " A square.", " Top left."] if first else
                  [" A square.", " Top left.", " Hello."]))
  assert int((row["targets"][row["loss_mask"] > 0] == TOK.eos_id).sum()) == 3
  assert set(row["kind_ids"][row["segment_ids"] > 0]) == {packing.KIND_IDS["conversation"]}
  # The two images keep their spans: the k-th real image fills the k-th span.
  assert row["image_mask"].tolist() == [True, True]
  for k, code in enumerate((1, 2)):
    np.testing.assert_array_equal(row["images"][k], np.full((S, S, 3), code_color(code), np.uint8))
  assert (row["tokens"] == TOK.image_slot_id).sum() == 2 * N


def test_conversation_cut_across_rows_keeps_its_mask(tmp_path):
  """A row shorter than the conversation: the pieces' masks are the conversation's, with
  the cut position (no target inside the row) off."""
  write(str(tmp_path / "conv"), [TWO_IMAGES])
  tokens, flags = expand(TWO_IMAGES_LAYOUT)
  seq_len = len(tokens) // 2 + 8
  rows = [{k: v[0] for k, v in b.items() if k != "data_stats"}
          for b in take(iter(make(str(tmp_path / "conv"), seq_len=seq_len)), 2)]
  # Row 0 holds the head alone; row 1 starts with the tail (then the next epoch's copy).
  used = [int((r["segment_ids"] == 1).sum()) for r in rows]
  assert used[0] == seq_len and sum(used) == len(tokens)
  got_tokens = np.concatenate([r["tokens"][:u] for r, u in zip(rows, used)])
  got_mask = np.concatenate([r["loss_mask"][:u] for r, u in zip(rows, used)])
  np.testing.assert_array_equal(got_tokens, tokens)
  want = np.zeros(len(tokens), np.float32)
  want[:-1] = flags[1:]
  want[used[0] - 1] = 0.0  # the head's last token has no target in its row
  np.testing.assert_array_equal(got_mask, want)


def test_unrenderable_conversations_are_counted_not_raised():
  """Records that pass `records.validate` but the chat template cannot render (a vector
  segment, a non-string text) are skipped and counted, as other kinds' bad records; they
  raised out of the Grain pipeline (ending the training run)."""
  tokenizer = defaults.tokenizer()
  tokenizer.chat_template = chat.config("llava_v1")
  spec = pipeline.DocSpec(tokenizer=tokenizer.to_dict(), source_index=0, num_sources=1,
                          image_size=S, tokens_per_image=N, max_images_per_doc=2,
                          max_image_pixels=1 << 20, vector_dim=0)
  convert = pipeline.RecordToDoc(spec)
  index = packing.STAT_INDEX
  for content in ({"vector": [1.0]}, {"text": 5}):
    data = records.encode({"id": "0", "source": "conv", "kind": "conversation",
                           "segments": [{"turn": "user"}, content, {"turn": "assistant"},
                                        {"text": "a"}]})
    doc = convert.convert(data, decode_images=True)
    assert len(doc["tokens"]) == 0
    stats = doc["stats"][0]
    assert stats[index["record_undecodable"]] == stats[index["bad_records"]] == 1
  good = records.encode({"id": "1", "source": "conv", "kind": "conversation",
                         "segments": TEXT_ONLY})
  np.testing.assert_array_equal(convert.convert(good, decode_images=True)["tokens"],
                                expand(TEXT_ONLY_LAYOUT)[0])
