"""An imported random-weight Kosmos-2 grounds as transformers' Kosmos-2 does.

A tiny Kosmos-2 (XLM-R-layout SentencePiece model trained here, the processor's 1037 added
tokens, random weights, then 30 Adam steps memorising one grounded caption for one image, so
that greedy decoding writes whole `<phrase>`/`<object>` pairs) is saved with its processor
and imported with `kosmos-import`'s code. Checks:
the import holds the processor's location-token ids; kosmos encodes `<grounding>` prompts
(and the processor's own rendering of boxes) to the processor's ids; `Engine.generate`
produces the same ids as transformers' `generate`, and `grounding.parse` of kosmos's tagged
text gives the same clean text, phrases and boxes (also in pixels) as
`Kosmos2Processor.post_process_generation` of transformers' decoded output.
"""

from __future__ import annotations

import os
import shutil
import types

import numpy as np
import pytest
import sentencepiece as spm

torch = pytest.importorskip("torch", reason="torch (CPU) runs the reference model")
transformers = pytest.importorskip("transformers", reason="transformers is the reference")

import test_interop_hf as hf_helpers  # noqa: E402
import tiny_spm  # noqa: E402
from kosmos import workdir  # noqa: E402
from kosmos.data import grounding  # noqa: E402
from kosmos.data import tokenizer as tokenizer_lib  # noqa: E402
from kosmos.infer import engine as engine_lib  # noqa: E402
from kosmos.interop import hf_import  # noqa: E402
from kosmos.interop import hf_tokenizer  # noqa: E402

SIZE, SLOTS, NEW = 16, 4, 16
# The model memorises CAPTION on IMAGE_SEED's image first, so the first prompt is continued
# with two whole grounded phrases; the others are continued at random.
CAPTION = ("<grounding> the cat<phrase> sat</phrase><object><patch_index_0044><patch_index_0863>"
           "</object> on<phrase> a mat</phrase><object><patch_index_0100><patch_index_0500></object>")
IMAGE_SEED = 11
PROMPTS = ["<grounding> the cat<phrase> sat</phrase>", "<grounding> the cat sat on",
           "<grounding> a dog ran over<phrase> the hills</phrase>",
           "<grounding><phrase> the cat</phrase><object><patch_index_0044><patch_index_0863>"
           "</object> sat on a mat and"]


@pytest.fixture(scope="module")
def kosmos2(tmp_path_factory):
  """(HF model, processor, imported workdir, vocab size)."""
  root = tmp_path_factory.mktemp("k2ground")
  model_file = tiny_spm.xlmr_like(str(root / "xlmr"))
  vocab = (spm.SentencePieceProcessor(model_file=model_file).get_piece_size() + 1
           + hf_tokenizer.KOSMOS2_ADDED)
  os.makedirs(root / "spm_only")
  shutil.copyfile(model_file, root / "spm_only" / "sentencepiece.bpe.model")
  processor = transformers.Kosmos2Processor(
      transformers.CLIPImageProcessor(),
      transformers.XLMRobertaTokenizer.from_pretrained(str(root / "spm_only")))
  torch.manual_seed(0)
  config = transformers.Kosmos2Config(
      text_config=dict(vocab_size=vocab, embed_dim=32, layers=2, ffn_dim=64, attention_heads=4,
                       max_position_embeddings=64, dropout=0.0, attention_dropout=0.0),
      vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, image_size=SIZE, patch_size=8),
      latent_query_num=SLOTS)
  model = transformers.Kosmos2ForConditionalGeneration(config)
  hf_helpers.perturb_torch(model)
  memorise(model, processor)
  model.eval()
  src, wd = str(root / "hf"), str(root / "wd")
  model.save_pretrained(src)
  processor.save_pretrained(src)
  shutil.copyfile(model_file, os.path.join(src, "sentencepiece.bpe.model"))
  hf_import.import_hf(src, wd, log=hf_helpers.quiet)
  return model, processor, wd, vocab


def image(seed: int) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3)).astype(np.uint8)


def hf_inputs(tokenizer, text: str) -> dict:
  """transformers' inputs for `<s> <image> slots </image> text` (slot ids do not matter)."""
  boi, eoi = tokenizer.convert_tokens_to_ids(["<image>", "</image>"])
  ids = [[0, boi] + [4] * SLOTS + [eoi] + tokenizer(text, add_special_tokens=False).input_ids]
  mask = np.zeros((1, len(ids[0])), np.int64)
  mask[0, 2:2 + SLOTS] = 1
  return dict(input_ids=torch.tensor(ids), image_embeds_position_mask=torch.from_numpy(mask),
              attention_mask=torch.ones((1, len(ids[0])), dtype=torch.long))


def memorise(model, processor, steps: int = 30) -> None:
  """Fits CAPTION (then </s>) on IMAGE_SEED's image (one thread: many contend on 2 cores)."""
  vision = types.SimpleNamespace(pixel_mean=processor.image_processor.image_mean,
                                 pixel_std=processor.image_processor.image_std)
  inputs = hf_inputs(processor.tokenizer, CAPTION)
  inputs["input_ids"] = torch.cat([inputs["input_ids"], torch.tensor([[2]])], dim=1)
  inputs["image_embeds_position_mask"] = torch.cat(
      [inputs["image_embeds_position_mask"], torch.zeros((1, 1), dtype=torch.long)], dim=1)
  inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
  pixels = hf_helpers.pixel_values(image(IMAGE_SEED)[None], vision)
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  try:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
      loss = model(pixel_values=pixels, labels=inputs["input_ids"], **inputs).loss
      optimizer.zero_grad()
      loss.backward()
      optimizer.step()
  finally:
    torch.set_num_threads(threads)


def test_import_holds_the_processor_location_ids(kosmos2):
  _, processor, wd, vocab = kosmos2
  section = workdir.load_config(wd).tokenizer.grounding
  ids = processor.tokenizer.convert_tokens_to_ids(
      list(grounding.TAGS) + ["<patch_index_0000>", "<patch_index_1023>"])
  assert [section[f] for f in grounding.TAG_FIELDS] == ids[:6]
  assert section.first_patch_id == ids[6] and ids[7] == ids[6] + 1023 == vocab - 1
  assert section.to_dict() == grounding.kosmos2_ids(vocab)  # what the vocabulary size implies


def test_grounded_prompts_encode_as_the_processor(kosmos2):
  _, processor, wd, _ = kosmos2
  config = workdir.load_config(wd)
  g = grounding.load(tokenizer_lib.load(config.tokenizer), config.tokenizer)
  boxes = [[(0.1, 0.2, 0.5, 0.9)], [(0.0, 0.0, 1.0, 1.0), (0.3, 0.3, 0.4, 0.35)]]
  text = "<grounding> the cat<phrase> sat</phrase> on<phrase> a mat</phrase> and"
  # the processor writes boxes as "<object> <patch_index_a> <patch_index_b> </object>"
  theirs = processor(text=text, bboxes=boxes, add_special_tokens=False).input_ids
  rendered = grounding.render("the cat sat on a mat and", [(8, 11, boxes[0]),
                                                           (15, 20, boxes[1])], 32)
  assert g.encode("<grounding> " + rendered) == theirs
  assert theirs[0] == g.tag_ids["<grounding>"] and g.first_patch_id + 1023 in theirs
  for prompt in PROMPTS:
    ids = processor.tokenizer(prompt, add_special_tokens=False).input_ids
    assert g.encode(prompt) == ids, prompt
    assert g.decode(ids) == processor.tokenizer.decode(ids, skip_special_tokens=True), prompt


def test_grounded_generation_equals_transformers(kosmos2):
  hf_model, processor, wd, _ = kosmos2
  config, model = hf_helpers.load_kosmos(wd)
  tok = config.tokenizer
  engine = engine_lib.Engine(model, config)
  images = [image(IMAGE_SEED)] + [image(seed) for seed in range(1, len(PROMPTS))]
  ours = engine.generate([[{"image": im}, {"text": p}] for im, p in zip(images, PROMPTS)],
                         max_new_tokens=NEW)
  location_ids = grounding.load(engine.tok, tok).ids()
  emitted, generated_boxes = set(), []
  for prompt, pixels, generation in zip(PROMPTS, images, ours):
    inputs = hf_inputs(processor.tokenizer, prompt)
    with torch.no_grad():
      out = hf_model.generate(
          pixel_values=hf_helpers.pixel_values(pixels[None], config.model.vision), **inputs,
          max_new_tokens=NEW, do_sample=False, num_beams=1, use_cache=True,
          suppress_tokens=list(engine_lib.default_banned_ids(engine.tok))).numpy()[0]
    prompt_len = inputs["input_ids"].shape[1]
    generated = out[prompt_len:] if len(out) > prompt_len else out
    assert generation.tokens == generated.tolist(), prompt
    emitted |= set(generation.tokens)
    decoded = processor.batch_decode(out[None], skip_special_tokens=True)[0]
    theirs_text, theirs_entities = processor.post_process_generation(decoded)
    ours_text, ours_entities = grounding.parse(prompt + generation.tagged)
    assert ours_text == theirs_text, (prompt, generation.tagged, decoded)
    assert [(e.phrase, e.span, list(e.boxes)) for e in ours_entities] == theirs_entities
    for entity, (_, _, boxes) in zip(ours_entities, theirs_entities):
      assert [grounding.to_pixels(b, 640, 480) for b in entity.boxes] == [
          (x1 * 640, y1 * 480, x2 * 640, y2 * 480) for x1, y1, x2, y2 in boxes]
    generated_boxes.append(len(ours_entities) - len(grounding.parse(prompt)[1]))
  # the comparison covers location tokens and text tokens in the generated part, and boxes
  # the model generated (two for the memorised image, none in the prompt)
  assert emitted & location_ids and emitted - location_ids - {tok.eos_id}
  assert generated_boxes[0] == 2 and grounding.parse(ours[0].tagged)[1][0].boxes == (
      (12.5 / 32, 1.5 / 32, 31.5 / 32, 26.5 / 32),)
