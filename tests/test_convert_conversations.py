"""`prepare.py conversations`: LLaVA-Instruct json and ShareGPT jsonl with real image files."""

import json

import pytest

from kosmos.data import records

import image_files
from prepare_module import prepare


def _write_images(directory):
  directory.mkdir(parents=True, exist_ok=True)
  out = {}
  for i, name in enumerate(("a.jpg", "b.png", "c.jpg")):
    data = image_files.encode(image_files.noise(i), "PNG" if name.endswith("png") else "JPEG")
    (directory / name).write_bytes(data)
    out[name] = data
  (directory / "broken.jpg").write_bytes(b"not an image")
  return out


def _turns(*pairs):
  return [{"from": role, "value": value} for role, value in pairs]


ROWS = [
    # 0: LLaVA-Instruct, one image, two rounds.
    {"id": "q0", "image": "a.jpg", "conversations": _turns(
        ("human", "<image>\nWhat is this?"), ("gpt", "Noise."),
        ("human", "Why?"), ("gpt", "Random pixels."))},
    # 1: two images, the second in the second user turn (several images per conversation).
    {"id": "q1", "images": ["b.png", "c.jpg"], "conversations": _turns(
        ("human", "Look <image> here."), ("gpt", "Seen."),
        ("human", "<image>"), ("gpt", "Also seen."))},
    # 2: text only (ShareGPT).
    {"id": "q2", "conversations": _turns(("human", "Hi"), ("gpt", "Hello!"))},
    # dropped:
    {"id": "d0", "conversations": _turns(("human", "Hi"), ("bard", "Hello"))},
    {"id": "d1", "image": "a.jpg", "conversations": _turns(("human", "no placeholder"),
                                                          ("gpt", "x"))},
    {"id": "d2", "conversations": _turns(("human", "Hi"), ("gpt", "  "))},
    {"id": "d3", "conversations": _turns(("human", "Hi"), ("gpt", "Hello"), ("human", "Bye"))},
    {"id": "d4", "conversations": _turns(("gpt", "Hello"), ("human", "Hi"), ("gpt", "x"))},
    {"id": "d5", "image": "gone.jpg", "conversations": _turns(("human", "<image>"),
                                                             ("gpt", "x"))},
    {"id": "d6", "image": "broken.jpg", "conversations": _turns(("human", "<image>"),
                                                               ("gpt", "x"))},
    {"id": "d7", "conversations": "not a list"},
    {"id": "d8", "conversations": [{"from": ["human"], "value": "Hi"}, {"from": "gpt",
                                                                       "value": "x"}]},
]


def test_conversations_json_and_jsonl(tmp_path):
  pics = _write_images(tmp_path / "img")
  src = tmp_path / "src"
  src.mkdir()
  (src / "llava.json").write_text(json.dumps(ROWS))
  (src / "sharegpt.jsonl").write_text(
      json.dumps(ROWS[2]) + "\n{broken json\n" + json.dumps(ROWS[3]) + "\n")
  out = tmp_path / "out"
  assert prepare.main(["conversations", "--input", str(src), "--output", str(out),
                       "--image-dir", str(tmp_path / "img")]) == 0
  got = list(records.read_dir(str(out)))
  assert [r["id"] for r in got] == ["llava.json:0", "llava.json:1", "llava.json:2",
                                    "sharegpt.jsonl:1"]
  assert {r["kind"] for r in got} == {"conversation"}
  assert got[0]["segments"] == [
      {"turn": "user"}, {"image": pics["a.jpg"]}, {"text": "\nWhat is this?"},
      {"turn": "assistant"}, {"text": "Noise."}, {"turn": "user"}, {"text": "Why?"},
      {"turn": "assistant"}, {"text": "Random pixels."}]
  assert got[1]["segments"] == [
      {"turn": "user"}, {"text": "Look "}, {"image": pics["b.png"]}, {"text": " here."},
      {"turn": "assistant"}, {"text": "Seen."}, {"turn": "user"}, {"image": pics["c.jpg"]},
      {"turn": "assistant"}, {"text": "Also seen."}]
  assert got[2]["segments"] == got[3]["segments"] == [
      {"turn": "user"}, {"text": "Hi"}, {"turn": "assistant"}, {"text": "Hello!"}]
  assert got[0]["meta"] == {"file": "llava.json", "id": "q0"}
  manifest = records.read_manifest(str(out))
  assert manifest["kinds"] == {"conversation": 4}
  assert manifest["dropped"] == {"unknown_role": 3, "image_count_mismatch": 1, "empty_turn": 1,
                                 "ends_on_user": 1, "turn_order": 1, "missing_image": 1,
                                 "corrupt_image": 1, "missing_field": 1, "invalid_json": 1}


def test_conversation_records_validate_turns():
  base = {"id": "x", "source": "s", "kind": "conversation"}
  ok = [{"turn": "user"}, {"text": "q"}, {"turn": "assistant"}, {"text": "a"}]
  records.validate({**base, "segments": ok})
  for bad in (ok[:2], ok[1:], [ok[2], ok[3], ok[0], ok[1]]):
    with pytest.raises(records.RecordError, match="alternate"):
      records.validate({**base, "segments": bad})
  with pytest.raises(records.RecordError, match="only 'conversation'"):
    records.validate({**base, "kind": "text", "segments": ok})
