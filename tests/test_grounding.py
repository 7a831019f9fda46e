"""KOSMOS-2 location tokens: render / parse / ids against transformers' Kosmos-2 processor code.

Parity: `grounding.linked` and `grounding.parse` equal transformers'
`extract_entities_with_patch_indices` and `Kosmos2Processor.post_process_generation` (called
directly) on 1500 random sequences that mix well-formed entities with malformed ones
(unclosed tags, one index per box, indices outside the grid or not four digits, stray `<`);
`box_to_cells` / `cells_to_box` equal `coordinate_to_patch_index` / `patch_index_to_coordinate`.
Pure Python: no model, well under a second.
"""

from __future__ import annotations

import json
import random
import types

import numpy as np
import pytest

from kosmos import defaults
from kosmos.data import grounding
from kosmos.data import tokenizer as tokenizer_lib

SEQUENCES = 1500


def processing():
  pytest.importorskip("torch", reason="transformers' Kosmos-2 processor imports torch")
  transformers = pytest.importorskip("transformers", reason="transformers is the reference")
  from transformers.models.kosmos2 import processing_kosmos2
  return transformers, processing_kosmos2


def random_sequence(rng: random.Random) -> str:
  """Generated-looking text: words, well-formed entities, and every kind of broken tag."""
  def cell() -> str:
    r = rng.random()
    if r < 0.75:
      return grounding.patch_token(rng.randrange(1024))
    if r < 0.9:
      return f"<patch_index_{rng.randrange(1024, 100000)}>"  # outside the grid
    return f"<patch_index_{rng.randrange(100)}>"  # not four digits

  def entity() -> str:
    phrase = (f"<phrase>{rng.choice(['', ' ', '  '])}{rng.choice(WORDS)}"
              f"{rng.choice(['', ' a', ' dog '])}</phrase>") if rng.random() < 0.8 else ""
    boxes = [cell() + cell() for _ in range(rng.choice([1, 1, 1, 2, 3]))]
    return phrase + "<object>" + grounding.DELIMITER.join(boxes) + "</object>"

  pieces = []
  for _ in range(rng.randrange(1, 14)):
    r = rng.random()
    if r < 0.35:
      pieces.append(rng.choice(WORDS))
    elif r < 0.65:
      pieces.append(entity())
    elif r < 0.8:  # a broken entity: one fragment dropped or repeated
      parts = entity().replace("><", ">\x00<").split("\x00")
      k = rng.randrange(len(parts))
      parts[k:k + 1] = [] if rng.random() < 0.5 else [parts[k]] * 2
      pieces.append("".join(parts))
    else:
      pieces.append(rng.choice(NOISE) if rng.random() < 0.7 else cell())
  return "".join(pieces)


WORDS = [" a", " snowman", "fire", " warming himself by", " ", "  ", ".", ",", "\n", " é",
         "中文", " the cat", "x"]
NOISE = list(grounding.TAGS) + ["</image>", "<image>", "<s>", "</s>", "<", ">", "<b>", "a<b",
                                "c>d", "<patch_index_>", "</delimiter_of_multi_objects/>"]


def test_parse_equals_transformers_on_random_sequences():
  transformers, reference = processing()
  rng = random.Random(0)
  eoi = types.SimpleNamespace(eoi_token="</image>")  # all post_process_generation reads of self
  with_entities = unphrased = outside = 0
  for _ in range(SEQUENCES):
    text = random_sequence(rng)
    theirs_linked = reference.extract_entities_with_patch_indices(text)
    ours_linked = grounding.linked(text)
    assert ours_linked == [(n, s, [tuple(c) for c in cells]) for n, s, cells in theirs_linked], text
    clean, entities = transformers.Kosmos2Processor.post_process_generation(eoi, text)
    ours_clean, ours_entities = grounding.parse(text)
    assert ours_clean == clean, text
    assert [(e.phrase, e.span, list(e.boxes)) for e in ours_entities] == entities, text
    with_entities += bool(entities)
    unphrased += any(name.startswith("<patch_index_") for name, _, _ in entities)
    outside += any(max(box[3] for box in boxes) > 1 for _, _, boxes in entities if boxes)
  # the generator reaches every branch many times
  assert with_entities > SEQUENCES // 3 and unphrased > 50 and outside > 50


def test_docstring_example_in_pixels():
  text = ("<grounding> An image of<phrase> a snowman</phrase><object><patch_index_0044>"
          "<patch_index_0863></object> warming himself by<phrase> a fire</phrase><object>"
          "<patch_index_0005><patch_index_0911></object>.")
  clean, (snowman, fire) = grounding.parse(text)
  assert clean == "An image of a snowman warming himself by a fire."
  assert clean[slice(*snowman.span)] == "a snowman" and clean[slice(*fire.span)] == "a fire"
  # cells 44 = (col 12, row 1), 863 = (col 31, row 26): centre to centre, grid 32
  assert snowman.boxes == ((12.5 / 32, 1.5 / 32, 31.5 / 32, 26.5 / 32),)
  assert grounding.to_pixels(snowman.boxes[0], 640, 320) == (250.0, 15.0, 630.0, 265.0)


def test_cells_equal_transformers():
  _, reference = processing()
  rng = np.random.default_rng(0)
  for _ in range(2000):
    grid = int(rng.choice([4, 16, 32]))
    x = np.sort(rng.random(2) if rng.random() < 0.8 else rng.integers(0, grid + 1, 2) / grid)
    y = np.sort(rng.random(2))
    if x[0] == x[1] or y[0] == y[1]:
      continue
    box = (float(x[0]), float(y[0]), float(x[1]), float(y[1]))
    assert grounding.box_to_cells(box, grid) == reference.coordinate_to_patch_index(box, grid)
    a, b = (int(v) for v in rng.integers(0, grid * grid + 40, 2))
    assert grounding.cells_to_box(a, b, grid) == reference.patch_index_to_coordinate(a, b, grid)
  for bad in [(0.5, 0.1, 0.5, 0.9), (0.6, 0.1, 0.5, 0.9), (-0.1, 0, 0.5, 0.5), (0, 0, 1.2, 1)]:
    with pytest.raises(ValueError, match="not normalised"):
      grounding.box_to_cells(bad, 32)


def test_render_parses_back_to_its_phrases():
  text = "two dogs and a ball on grass"
  dogs = [(0.0, 0.0, 0.5, 0.5), (0.5, 0.5, 1.0, 1.0)]
  rendered = grounding.render(text, [(13, 19, [(0.25, 0.25, 0.75, 0.75)]), (0, 8, dogs)], grid=4)
  assert rendered == ("<phrase> two dogs</phrase><object><patch_index_0000><patch_index_0005>"
                      "</delimiter_of_multi_objects/><patch_index_0010><patch_index_0015></object>"
                      " and<phrase> a ball</phrase><object><patch_index_0005><patch_index_0010>"
                      "</object> on grass")
  clean, entities = grounding.parse(rendered, grid=4)
  assert clean == text
  assert [(e.phrase, e.span) for e in entities] == [("two dogs", (0, 8)), ("a ball", (13, 19))]
  # boxes over several rows and columns come back from cell centre to cell centre
  assert entities[0].boxes == ((0.125, 0.125, 0.375, 0.375), (0.625, 0.625, 0.875, 0.875))
  with pytest.raises(ValueError, match="overlaps"):
    grounding.render(text, [(0, 8, dogs), (4, 12, dogs)], grid=4)


def test_iou_hand_computed():
  assert grounding.iou((0, 0, 2, 2), (1, 1, 3, 3)) == pytest.approx(1 / 7)
  assert grounding.iou((0, 0, 2, 2), (0, 0, 2, 2)) == 1.0
  assert grounding.iou((0, 0, 2, 2), (0, 0, 2, 1)) == pytest.approx(0.5)
  assert grounding.iou((0, 0, 1, 1), (1, 0, 2, 1)) == 0.0  # touching edges
  assert grounding.iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0
  assert grounding.iou((1, 1, 1, 1), (1, 1, 1, 1)) == 0.0  # no area


def byte_grounding(grid: int = 4) -> grounding.Grounding:
  config = defaults.tokenizer()
  config.grounding.update(grounding.trained_ids(300, grid))
  return grounding.Grounding(tokenizer_lib.ByteTokenizer(config), config.grounding)


def test_ids_round_trip_byte_tokenizer():
  g = byte_grounding()
  text = "<grounding>a<phrase> cat</phrase><object><patch_index_0003><patch_index_0015></object>!"
  ids = g.encode(text)
  b = [c + 8 for c in b"a cat!"]
  assert ids == [305, b[0], 300, b[1], b[2], b[3], b[4], 301, 302, 306 + 3, 306 + 15, 303, b[5]]
  assert g.decode(ids) == text
  # a cell outside this 4 x 4 grid, and spaces before a tag (dropped: lstrip, as transformers)
  ids = g.encode("x <patch_index_0016> y </phrase>")
  assert g.decode(ids) == "x <patch_index_0016> y</phrase>"
  assert 300 + 6 + 16 not in ids
  # plain encode never emits the location ids
  assert not set(g.tok.encode(text)) & g.ids()


def test_location_ids_must_fit_the_model_vocabulary():
  config = defaults.tokenizer()
  grounding.check_vocab(config, 264)  # grounding off
  config.grounding.update(grounding.trained_ids(264, 4))  # ids 264 .. 264 + 6 + 16 - 1
  grounding.check_vocab(config, 286)
  with pytest.raises(ValueError, match="ids up to 285, outside model.decoder.vocab_size=285"):
    grounding.check_vocab(config, 285)


def test_bad_ids_are_refused():
  config = defaults.tokenizer()
  config.grounding.update(grounding.trained_ids(4, 4))  # on top of <image> = 4
  with pytest.raises(ValueError, match="special ids"):
    grounding.Grounding(tokenizer_lib.ByteTokenizer(config), config.grounding)
  config.grounding.update(grounding.trained_ids(300, 4), phrase_id=310)  # inside the cells
  with pytest.raises(ValueError, match="cell range"):
    grounding.Grounding(tokenizer_lib.ByteTokenizer(config), config.grounding)
  assert grounding.load(tokenizer_lib.ByteTokenizer(), defaults.tokenizer()) is None


def test_trained_tokenizer_holds_location_pieces(tmp_path, capsys):
  from kosmos.data import records
  from prepare_module import prepare
  with records.ShardWriter(str(tmp_path / records.shard_name("t", 0, 1))) as w:
    for i in range(200):
      w.write({"id": str(i), "source": "t", "kind": "text",
               "segments": [{"text": f"a cat sat on the mat {i} <phrase> times"}]})
  assert prepare.main(["tokenizer", "--input", str(tmp_path), "--output",
                       str(tmp_path / "spm.model"), "--vocab-size", "320",
                       "--grounding-grid", "4"]) == 0
  printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert printed["tokenizer.grounding"] == grounding.trained_ids(8, 4)
  config = defaults.tokenizer()
  config.update(path=str(tmp_path / "spm.model"))
  config.grounding.update(printed["tokenizer.grounding"])
  tok = tokenizer_lib.load(config)
  g = grounding.load(tok, config)
  text = "a<phrase> cat</phrase><object><patch_index_0000><patch_index_0015></object> sat"
  ids = g.encode(text)
  assert [i for i in ids if i in g.ids()] == [8, 9, 10, 14, 29, 11]
  assert g.decode(ids) == text
  plain = tok.encode(text)  # the literal tags are split into characters
  assert not set(plain) & g.ids() and tok.decode(plain) == text


def test_workdirs_saved_before_location_tokens_still_resume(tmp_path):
  import numpy as np
  from kosmos import workdir as workdir_lib
  from kosmos.train import trainer
  config = defaults.base()
  config.model = {"decoder": {"vocab_size": 264}}
  old = config.to_dict()
  del old["tokenizer"]["grounding"]
  with open(tmp_path / "config.json", "w") as f:
    json.dump(old, f)
  workdir_lib.save_params(str(tmp_path), 1, {"w": np.zeros(2, np.float32)})
  trainer._check_resume_config(config, str(tmp_path))  # the defaults: grounding off
  config.tokenizer.grounding.update(grounding.trained_ids(300, 4))
  with pytest.raises(ValueError, match="tokenizer.grounding"):
    trainer._check_resume_config(config, str(tmp_path))


def test_kosmos2_config_holds_the_published_ids():
  """configs/kosmos2.py: the published processor's ids (<image> 64003, </image> 64004, then
  </chunk> </line> and the six tags, then the 1024 cells up to the last id 65036)."""
  import os
  from kosmos import configs
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  config = configs.load(os.path.join(root, "configs", "kosmos2.py"))
  g = config.tokenizer.grounding
  assert config.tokenizer.image_end_id == 64004 and g.grid == 32
  assert [g[f] for f in grounding.TAG_FIELDS] == list(range(64007, 64013))
  assert (g.first_patch_id, g.first_patch_id + 32 * 32 - 1) == (64013, 65036)
  assert config.model.decoder.vocab_size == 65037
