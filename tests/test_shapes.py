"""The synthetic shapes world: determinism, counts, public eval layouts, and texts that are
true of the pixels.

Truth is checked from pixels, not from the scene objects: `detect` finds the shapes in an
image (background from the border, blobs by colour, shape kind by fitting each kind's
ideal outline to the blob's box), and independent parsers check every caption, VQA answer
and binding label against what was detected.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import io
import json
import math
import os
import re

import numpy as np
import pytest
from matplotlib.path import Path
from PIL import Image
from scipy import ndimage

from kosmos.data import records
from kosmos.demo import eval_sets
from kosmos.demo import prepare as shapes
from kosmos.demo import world as sw

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(pairs=40, pages=30, texts=20, coco_train=6, coco_val=2, coco_test=10,
             vqa_train=4, vqa_val=10, questions_per_image=3, binding_episodes=10,
             induction_episodes=12, records_per_shard=16)
KINDS = ("pair", "interleaved", "text")

# ---------------------------------------------------------------------------- pixel detector

_COLOURS = np.array(list(sw.COLOURS.values()), float)
_POSITIONS = ("top left", "top right", "bottom left", "bottom right")  # not sw's: checked
_TRIANGLE = Path([(0, -1), (1, 1), (-1, 1)])
_STAR_INNER = 0.5
_STAR = Path([((1 if k % 2 == 0 else _STAR_INNER) * math.cos(-math.pi / 2 + k * math.pi / 5),
               (1 if k % 2 == 0 else _STAR_INNER) * math.sin(-math.pi / 2 + k * math.pi / 5))
              for k in range(10)])


def _background(pixels: np.ndarray) -> list[np.ndarray]:
  """The one or two background colours, from the border (shapes stay 1 px inside)."""
  border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]]).astype(float)
  lum = border.mean(1)
  if lum.max() - lum.min() <= 20:
    return [border.mean(0)]
  mid = (lum.max() + lum.min()) / 2
  return [border[lum < mid].mean(0), border[lum >= mid].mean(0)]


def _background_name(pixels: np.ndarray) -> str:
  bg = _background(pixels)
  lum = np.mean(bg[0])
  return ("checkered" if len(bg) == 2 else "black" if lum < 50 else
          "white" if lum > 205 else "gray")


def _shape_of(alpha: np.ndarray, mask: np.ndarray) -> str:
  """The shape whose ideal outline in the blob's box best matches the blob's coverage."""
  ys, xs = np.nonzero(mask)
  y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
  cy, cx, hy, hx = (y0 + y1) / 2, (x0 + x1) / 2, (y1 - y0) / 2, (x1 - x0) / 2
  near = ndimage.binary_dilation(mask, structure=np.ones((3, 3)))
  a = np.pad(alpha * near, 2)[y0:y1 + 4, x0:x1 + 4]
  sub = (np.arange(4) + 0.5) / 4
  gy = (np.arange(y0 - 2, y1 + 2)[:, None] + sub).ravel()
  gx = (np.arange(x0 - 2, x1 + 2)[:, None] + sub).ravel()
  v, u = np.meshgrid((gy - cy) / hy, (gx - cx) / hx, indexing="ij")
  star_top, star_bottom = -1.0, math.cos(math.pi / 5)
  star_uv = np.stack([u.ravel() * math.sin(2 * math.pi / 5),
                      star_top + (v.ravel() + 1) / 2 * (star_bottom - star_top)], 1)
  ideal = {"circle": u ** 2 + v ** 2 <= 1, "square": (abs(u) <= 1) & (abs(v) <= 1),
           "triangle": _TRIANGLE.contains_points(np.stack([u.ravel(), v.ravel()], 1)),
           "star": _STAR.contains_points(star_uv)}
  h, w = a.shape
  iou = {}
  for name, inside in ideal.items():
    cover = inside.reshape(h, 4, w, 4).mean((1, 3))
    iou[name] = np.minimum(a, cover).sum() / np.maximum(a, cover).sum()
  return max(iou, key=iou.get)


def detect(pixels: np.ndarray) -> list[dict]:
  """Objects in an RGB uint8 [S, S, 3] image: [{shape, colour, size, position}]."""
  p = pixels.astype(float)
  size = p.shape[0]
  best = np.full(p.shape[:2], np.inf)
  alpha, which = np.zeros(p.shape[:2]), np.zeros(p.shape[:2], int)
  for b in _background(pixels):  # each pixel = alpha * colour + (1 - alpha) * background
    for ci, c in enumerate(_COLOURS):
      d = c - b
      t = np.clip(((p - b) @ d) / (d @ d), 0, 1)
      residual = ((p - b - t[..., None] * d) ** 2).sum(-1)
      better = residual < best
      best, alpha, which = (np.where(better, residual, best), np.where(better, t, alpha),
                            np.where(better, ci, which))
  found = []
  for ci, colour in enumerate(sw.COLOURS):
    labels, n = ndimage.label((alpha > 0.5) & (which == ci), structure=np.ones((3, 3)))
    for k in range(1, n + 1):
      mask = labels == k
      ys, xs = np.nonzero(mask)
      assert len(ys) >= 3, f"a {len(ys)}-pixel {colour} fragment: rendering debris"
      extent = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1) / (size / 2)
      cy, cx = (ys.min() + ys.max() + 1) / 2, (xs.min() + xs.max() + 1) / 2
      found.append({"shape": _shape_of(alpha, mask), "colour": colour,
                    "size": "large" if extent > 0.65 else "small",
                    "position": _POSITIONS[2 * (cy >= size / 2) + (cx >= size / 2)]})
  return found


def _pixels(data: bytes) -> np.ndarray:
  return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


# ---------------------------------------------------------------------------- text checkers

_NUM = {"a": 1, "one": 1, "two": 2, "three": 3}
_SIZE = {"large": "large", "big": "large", "small": "small", "little": "small"}
_C, _S, _P = "|".join(sw.COLOURS), "|".join(sw.SHAPES), "|".join(sw.POSITIONS)
_MENTION = re.compile(rf"\b(a|one|two|three) (?:(large|small|big|little) )?({_C}) ({_S})s?\b"
                      rf"(?: at the ({_P})| in the ({_P}) corner)?")
_THAT_ARE = re.compile(rf"\b(two|three) (large|small) ({_S})s that are ({_C})\b")


def check_caption(text: str, pixels: np.ndarray) -> None:
  """Asserts that every claim of a caption holds in the image and that it names every object."""
  objects = detect(pixels)
  mentions = [(_NUM[m[0]], _SIZE.get(m[1]), m[2], m[3], m[4] or m[5])
              for m in _MENTION.findall(text)]
  mentions += [(_NUM[n], s, c, shape, "") for n, s, shape, c in _THAT_ARE.findall(text)]
  assert mentions, f"caption {text!r} names no object"
  assert sum(m[0] for m in mentions) == len(objects), (text, objects)
  for n, size, colour, shape, position in mentions:
    match = [o for o in objects if (o["colour"], o["shape"]) == (colour, shape)]
    assert len(match) == n, (text, objects)
    assert not size or all(o["size"] == size for o in match), (text, objects)
    assert not position or match[0]["position"] == position, (text, objects)
  total = re.match(r"(two|three) shapes:", text)
  assert not total or _NUM[total[1]] == len(objects), (text, objects)
  bg = re.search(r"on a (\w+) background", text)
  assert not bg or bg[1] == _background_name(pixels), (text, _background_name(pixels))


def answer_from_pixels(question: str, pixels: np.ndarray) -> str:
  """The answer to a shapes-world question, computed from the detected objects."""
  objs = detect(pixels)
  if m := re.fullmatch(r"how many (\w+)s are there\?", question):
    return str(len(objs) if m[1] == "shape" else sum(o["shape"] == m[1] for o in objs))
  if m := re.fullmatch(r"what (shape|colour) is (?:the shape )?at the (.+)\?", question):
    (o,) = [o for o in objs if o["position"] == m[2]]
    return o[m[1]]
  if m := re.fullmatch(r"what colour is the (\w+)\?", question):
    (o,) = [o for o in objs if o["shape"] == m[1]]
    return o["colour"]
  if m := re.fullmatch(r"is the (\w+) large or small\?", question):
    (o,) = [o for o in objs if o["shape"] == m[1]]
    return o["size"]
  if m := re.fullmatch(r"is there a (\w+) (\w+)\?", question):
    return "yes" if any((o["colour"], o["shape"]) == (m[1], m[2]) for o in objs) else "no"
  raise AssertionError(f"unknown question form {question!r}")


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
  """Seed 0 twice (1 and 2 workers) and seed 1; returns their directories."""
  root = tmp_path_factory.mktemp("shapes")
  out = {}
  for name, seed, workers in (("a", 0, 1), ("b", 0, 2), ("c", 1, 1)):
    out[name] = str(root / name)
    shapes.generate(out[name], seed=seed, workers=workers, **SMALL)
  return out


def _files(directory: str) -> dict[str, bytes]:
  found = {}
  for base, _, names in os.walk(directory):
    for name in names:
      path = os.path.join(base, name)
      with open(path, "rb") as f:
        found[os.path.relpath(path, directory)] = f.read()
  return found


def _load(path: str):
  with open(path) as f:
    return json.load(f)


# ---------------------------------------------------------------------------- tests


def test_same_seed_is_byte_identical_whatever_the_workers(worlds):
  a, b = _files(worlds["a"]), _files(worlds["b"])
  assert sorted(a) == sorted(b)
  assert [k for k in a if a[k] != b[k]] == []
  for kind in KINDS:
    ma = records.read_manifest(os.path.join(worlds["a"], "records", kind))
    assert [s["sha256"] for s in ma["shards"]] == [
        s["sha256"] for s in records.read_manifest(
            os.path.join(worlds["b"], "records", kind))["shards"]]
    for s in ma["shards"]:  # the manifest's digests are those of the files
      assert s["sha256"] == records.sha256(os.path.join(worlds["a"], "records", kind, s["name"]))


def test_different_seeds_differ(worlds):
  for kind in KINDS:
    sha = [[s["sha256"] for s in records.read_manifest(
        os.path.join(worlds[w], "records", kind))["shards"]] for w in ("a", "c")]
    assert not set(sha[0]) & set(sha[1])
  for rel in ("eval/coco/dataset_coco.json", "eval/binding/episodes.jsonl",
              "eval/vqa/v2_mscoco_val2014_annotations.json"):
    with open(os.path.join(worlds["a"], rel), "rb") as fa, \
        open(os.path.join(worlds["c"], rel), "rb") as fc:
      assert fa.read() != fc.read()


def test_record_counts_match_flags(worlds):
  expected = {"pair": SMALL["pairs"], "interleaved": SMALL["pages"], "text": SMALL["texts"]}
  for kind, n in expected.items():
    directory = os.path.join(worlds["a"], "records", kind)
    manifest = records.read_manifest(directory)
    assert manifest["records"] == n and manifest["kinds"] == {kind: n}
    assert len(manifest["shards"]) == -(-n // SMALL["records_per_shard"])
    assert manifest["converter"] == "shapes" and manifest["arguments"]["seed"] == 0
    got = list(records.read_dir(directory))
    assert len(got) == n and {r["kind"] for r in got} == {kind}
    assert len({r["id"] for r in got}) == n
  world = _load(os.path.join(worlds["a"], "world.json"))
  assert world["seed"] == 0 and world["image_size"] == 48
  assert {k: v["records"] for k, v in world["records"].items()} == expected
  assert world["shapes"] == list(sw.SHAPES) and world["nonce"]["syllables"] == list(sw.SYLLABLES)


def test_pair_captions_are_true_of_their_pixels(worlds):
  pairs = list(records.read_dir(os.path.join(worlds["a"], "records", "pair")))
  for r in pairs:
    assert [next(iter(s)) for s in r["segments"]] == ["image", "text"]
    image, text = r["segments"][0]["image"], r["segments"][1]["text"]
    assert image[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = _pixels(image)
    assert pixels.shape == (48, 48, 3)
    check_caption(text, pixels)


def test_every_paraphrase_is_true_and_centres_have_the_exact_colour():
  for seed in range(60):
    scene = sw.sample_scene(np.random.default_rng([seed, 99]))
    pixels = np.asarray(sw.render_scene(scene, 48))
    for text in sw.captions(scene):
      check_caption(text, pixels)
    for o in scene.objects:
      x, y = sw.interior_point(o, 48)
      assert tuple(pixels[int(y), int(x)]) == sw.COLOURS[o.colour]


def test_a_false_caption_is_caught():
  """The checker is not vacuous: wrong colour, count, shape or position fail."""
  scene = sw.Scene("black", (sw.Obj("circle", "red", "large", 0, 0.85, 0.0, 0.0),))
  pixels = np.asarray(sw.render_scene(scene, 48))
  check_caption("a large red circle at the top left", pixels)
  for wrong in ("a large blue circle", "two red circles", "a large red square",
                "a red circle at the bottom right", "a small red circle",
                "a red circle on a white background", "a red circle and a blue star"):
    with pytest.raises(AssertionError):
      check_caption(wrong, pixels)


def induction_labels_from_pixels(pixels: np.ndarray) -> dict[str, str]:
  """An induction image's label under every type, read from its pixels."""
  objs = detect(pixels)
  assert len({(o["shape"], o["colour"], o["size"]) for o in objs}) == 1, objs  # one or a group
  o = objs[0]
  labels = {"colour": o["colour"], "shape": o["shape"], "count": sw.NUMBER_WORDS[len(objs)],
            "position": o["position"], "size": o["size"], "code": sw.CODE_WORDS[o["colour"]]}
  if len(objs) > 1:
    del labels["position"]
  return labels


def test_interleaved_pages_are_true_of_their_pixels(worlds):
  pages = list(records.read_dir(os.path.join(worlds["a"], "records", "interleaved")))
  seen = set()
  for r in pages:
    segments, meta = r["segments"], r["meta"]
    images = [_pixels(s["image"]) for s in segments if "image" in s]
    assert 1 <= len(images) <= shapes.Config().max_images_per_page
    seen.add(meta["page"])
    if meta["page"] == "binding":
      bound: dict[str, set] = {}
      for k in range(0, len(segments), 2):
        (obj,) = detect(_pixels(segments[k]["image"]))
        word = re.fullmatch(r"(\w+)\.", segments[k + 1]["text"])[1]
        assert word in sw.BINDING_WORDS
        bound.setdefault(word, set()).add(f"{obj['colour']} {obj['shape']}")
      assert all(len(v) == 1 for v in bound.values()), bound  # one kind per word
      assert {w: next(iter(v)) for w, v in bound.items()} == meta["bindings"]
      kinds = [v.split() for v in meta["bindings"].values()]  # kinds differ in both
      assert len({c for c, _ in kinds}) == len({s for _, s in kinds}) == len(kinds)
      assert len(segments) == 2 * (meta["ways"] * meta["shots"] + 1)
    if meta["page"] == "induction":
      for k in range(0, len(segments), 2):
        labels = induction_labels_from_pixels(_pixels(segments[k]["image"]))
        assert segments[k + 1]["text"] == labels[meta["label_type"]] + "."
      continue
    for k, seg in enumerate(segments):
      if "image" not in seg or meta["page"] == "binding":
        continue
      text, pixels = segments[k + 1]["text"], _pixels(seg["image"])
      if meta["page"] == "gallery":
        check_caption(text.rstrip("."), pixels)
      else:
        for q, a in re.findall(r"Question: (.+?\?) Answer: (\w+)\.", text):
          assert answer_from_pixels(q, pixels) == a, (q, a)
  assert seen == set(shapes.PAGE_KINDS)


def test_text_documents(worlds):
  docs = list(records.read_dir(os.path.join(worlds["a"], "records", "text")))
  for r in docs:
    (seg,) = r["segments"]
    assert seg["text"].endswith(".") and len(seg["text"].split(". ")) >= 3


def test_coco_karpathy_layout_and_references_true_of_pixels(worlds):
  root = os.path.join(worlds["a"], "eval", "coco")
  data = _load(os.path.join(root, "dataset_coco.json"))
  assert data["dataset"] == "coco"
  splits = [im["split"] for im in data["images"]]
  assert {s: splits.count(s) for s in set(splits)} == {
      "train": SMALL["coco_train"], "val": SMALL["coco_val"], "test": SMALL["coco_test"]}
  sentids = []
  for i, im in enumerate(data["images"]):
    assert {"filepath", "filename", "split", "sentences", "imgid", "cocoid", "sentids"} <= set(im)
    assert im["imgid"] == i and im["filepath"] == ("train2014" if im["split"] == "train"
                                                   else "val2014")
    assert im["filename"] == f"COCO_{im['filepath']}_{im['cocoid']:012d}.jpg"
    with open(os.path.join(root, im["filepath"], im["filename"]), "rb") as f:
      data_ = f.read()
    assert data_[:3] == b"\xff\xd8\xff"  # a real JPEG
    assert len(im["sentences"]) == 5 and len({s["raw"] for s in im["sentences"]}) == 5
    assert im["sentids"] == [s["sentid"] for s in im["sentences"]]
    sentids += im["sentids"]
    pixels = _pixels(data_)
    for s in im["sentences"]:
      assert s["tokens"] == re.findall(r"[a-z0-9]+", s["raw"]) and s["imgid"] == i
      check_caption(s["raw"], pixels)
  assert sentids == list(range(len(sentids)))


def test_vqa_layout_and_answers_true_of_pixels(worlds):
  root = os.path.join(worlds["a"], "eval", "vqa")
  for split, n in (("train", SMALL["vqa_train"]), ("val", SMALL["vqa_val"])):
    qs = _load(os.path.join(root, f"v2_OpenEnded_mscoco_{split}2014_questions.json"))
    anns = _load(os.path.join(root, f"v2_mscoco_{split}2014_annotations.json"))
    assert qs["data_subtype"] == anns["data_subtype"] == f"{split}2014"
    assert len(qs["questions"]) == len(anns["annotations"]) == n * SMALL["questions_per_image"]
    by_id = {a["question_id"]: a for a in anns["annotations"]}
    assert len(by_id) == len(qs["questions"])
    for q in qs["questions"]:
      assert set(q) == {"image_id", "question", "question_id"}
      a = by_id[q["question_id"]]
      assert a["image_id"] == q["image_id"]
      assert a["answer_type"] in ("yes/no", "number", "other") and a["question_type"]
      assert [x["answer_id"] for x in a["answers"]] == list(range(1, 11))
      assert {(x["answer"], x["answer_confidence"]) for x in a["answers"]} == {
          (a["multiple_choice_answer"], "yes")}
      path = os.path.join(root, f"{split}2014", f"COCO_{split}2014_{q['image_id']:012d}.jpg")
      with open(path, "rb") as f:
        pixels = _pixels(f.read())
      assert answer_from_pixels(q["question"], pixels) == a["multiple_choice_answer"], q


def _episodes(world: str, name: str) -> tuple[str, list[dict]]:
  """(eval/NAME's directory, its episodes), checking their count and README."""
  root = os.path.join(world, "eval", name)
  with open(os.path.join(root, "episodes.jsonl")) as f:
    episodes = [json.loads(line) for line in f]
  assert len(episodes) == SMALL[f"{name}_episodes"]
  assert "episodes.jsonl" in open(os.path.join(root, "README.md")).read()
  return root, episodes


def test_binding_episodes(worlds):
  root, episodes = _episodes(worlds["a"], "binding")
  for e, ep in enumerate(episodes):
    assert ep["id"] == f"binding-{e:05d}" and len(ep["choices"]) == 2 and ep["label"] in (0, 1)
    assert set(ep["choices"]) <= set(sw.BINDING_WORDS) and len(set(ep["choices"])) == 2
    support = ep["support"]
    assert len(support) == 2 * eval_sets.BINDING_SHOTS
    for r in range(0, len(support), 2):  # each round shows both labels
      assert {s["label"] for s in support[r:r + 2]} == set(ep["choices"])
    kinds: dict[str, set] = {}
    for s in support:
      (obj,) = detect(_pixels(open(os.path.join(root, s["image"]), "rb").read()))
      kinds.setdefault(s["label"], set()).add((obj["shape"], obj["colour"]))
    assert all(len(v) == 1 for v in kinds.values()), kinds  # same word => same kind
    (a,), (b,) = kinds[ep["choices"][0]], kinds[ep["choices"][1]]
    assert a[0] != b[0] and a[1] != b[1]  # the two kinds differ in shape and in colour
    (query,) = detect(_pixels(open(os.path.join(root, ep["query"]["image"]), "rb").read()))
    assert kinds[ep["choices"][ep["label"]]] == {(query["shape"], query["colour"])}
    assert ep["bindings"][ep["choices"][ep["label"]]] == f"{query['colour']} {query['shape']}"
  assert [ep["label"] for ep in episodes].count(0) == len(episodes) // 2


def test_induction_episodes(worlds):
  root, episodes = _episodes(worlds["a"], "induction")
  types = sw.INDUCTION_TYPES
  assert [ep["label_type"] for ep in episodes] == [types[e % len(types)]
                                                   for e in range(len(episodes))]
  for e, ep in enumerate(episodes):
    t = ep["label_type"]
    assert ep["id"] == f"induction-{e:05d}" and ep["support_per_shot"] == 1
    assert len(ep["support"]) == eval_sets.INDUCTION_SHOTS
    for s in ep["support"]:
      pixels = _pixels(open(os.path.join(root, s["image"]), "rb").read())
      assert s["label"] == induction_labels_from_pixels(pixels)[t]
    query = induction_labels_from_pixels(
        _pixels(open(os.path.join(root, ep["query"]["image"]), "rb").read()))
    assert ep["labels"] == query
    vocabulary = sw.induction_vocabulary(t)
    # Every label of the type, then the query's true label under each other type.
    assert ep["choices"][:len(vocabulary)] == list(vocabulary)
    assert ep["choices"][len(vocabulary):] == [query[u] for u in types if u != t and u in query]
    assert len(set(ep["choices"])) == len(ep["choices"])
    assert ep["choices"][ep["label"]] == query[t]


def test_code_words_are_no_other_words():
  words = set(sw.CODE_WORDS.values())
  assert len(words) == len(sw.COLOURS) and set(sw.CODE_WORDS) == set(sw.COLOURS)
  assert not words & (set(sw.all_nonce_words()) | set(sw.BINDING_WORDS))


def test_no_eval_image_equals_a_training_image(worlds):
  train_png, train_jpeg, train_pixels = set(), set(), set()
  for kind in ("pair", "interleaved"):
    for r in records.read_dir(os.path.join(worlds["a"], "records", kind)):
      for s in r["segments"]:
        if "image" in s:
          image = Image.open(io.BytesIO(s["image"])).convert("RGB")
          train_png.add(s["image"])
          train_pixels.add(image.tobytes())
          train_jpeg.add(sw.encode_image(image, "JPEG"))  # as the eval JPEGs are encoded
  evals = _files(os.path.join(worlds["a"], "eval"))
  eval_images = {k: v for k, v in evals.items() if k.endswith((".jpg", ".png"))}
  assert len(eval_images) == (SMALL["coco_train"] + SMALL["coco_val"] + SMALL["coco_test"]
                              + SMALL["vqa_train"] + SMALL["vqa_val"]
                              + 9 * SMALL["binding_episodes"]
                              + (eval_sets.INDUCTION_SHOTS + 1) * SMALL["induction_episodes"])
  eval_pixels = {Image.open(io.BytesIO(v)).convert("RGB").tobytes()
                 for k, v in eval_images.items() if k.endswith(".png")}
  assert len(set(eval_images.values())) == len(eval_images)  # eval images pairwise distinct
  assert not set(eval_images.values()) & (train_png | train_jpeg)
  assert not eval_pixels & train_pixels


def test_image_maker_redraws_forbidden_images():
  rng = np.random.default_rng(5)
  first = sw.render_scene(sw.sample_scene(np.random.default_rng(5)), 48)
  maker = shapes.ImageMaker(48, {shapes.pixel_digest(first)})
  _, image, digest = maker.make(lambda: sw.sample_scene(rng))
  assert maker.collisions == 1 and digest != shapes.pixel_digest(first)
  assert image.tobytes() != first.tobytes()


def test_rendering_and_texts_are_deterministic():
  a, b = (sw.sample_scene(np.random.default_rng(7)) for _ in range(2))
  assert a == b and sw.Scene.from_dict(a.to_dict()) == a
  assert sw.encode_image(sw.render_scene(a)) == sw.encode_image(sw.render_scene(b))
  assert sw.caption(a, np.random.default_rng(1)) == sw.caption(b, np.random.default_rng(1))
  assert sw.captions(a)[0] in sw.captions(a)


def test_nonce_words_avoid_world_words():
  words = sw.all_nonce_words()
  world = set(" ".join([*sw.SHAPES, *sw.COLOURS, *sw.SIZES, *sw.POSITIONS]).split())
  assert len(words) == len(set(words)) > 1000 and not world & set(words)
  assert len(set(sw.BINDING_WORDS)) == 16 and not world & set(sw.BINDING_WORDS)


@pytest.mark.parametrize("flags, message", [
    ({"image_size": 15}, "--image-size 15"),
    ({"pairs": -1}, "--pairs -1"),
    ({"max_images_per_page": 2}, "--max-images-per-page 2"),
])
def test_bad_flags_are_named(tmp_path, flags, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    shapes.generate(str(tmp_path), **{**SMALL, **flags, "pairs": flags.get("pairs", 1)})


def test_cli_through_prepare(tmp_path, capsys):
  from prepare_module import prepare  # pylint: disable=import-outside-toplevel
  argv = ["shapes", "--output", str(tmp_path), "--workers", "1", "--seed", "3"]
  for key, value in SMALL.items():
    argv += ["--" + key.replace("_", "-"), str(value)]
  assert prepare.main(argv) == 0
  summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert summary["records"] == {"pair": 40, "interleaved": 30, "text": 20}
  world = _load(os.path.join(tmp_path, "world.json"))
  assert world["seed"] == 3 and world["config"] == dataclasses.asdict(
      shapes.Config(seed=3, **SMALL))


def test_sample_questions_gives_k_distinct_true_questions():
  for seed in range(40):
    rng = np.random.default_rng([seed, 7])
    scene = sw.sample_scene(rng)
    pixels = np.asarray(sw.render_scene(scene, 48))
    qas = sw.sample_questions(scene, rng, 6)
    assert len(qas) == 6 and len({q.question for q in qas}) == 6
    for qa in qas:
      assert answer_from_pixels(qa.question, pixels) == qa.answer, qa


def test_image_size_flag_sets_every_image(tmp_path):
  tiny = dict(pairs=3, pages=3, texts=1, coco_train=1, coco_val=0, coco_test=1, vqa_train=1,
              vqa_val=1, binding_episodes=1, induction_episodes=1)
  shapes.generate(str(tmp_path), image_size=32, **tiny)
  sizes = {_pixels(s["image"]).shape for kind in ("pair", "interleaved")
           for r in records.read_dir(os.path.join(tmp_path, "records", kind))
           for s in r["segments"] if "image" in s}
  sizes |= {_pixels(v).shape for k, v in _files(os.path.join(tmp_path, "eval")).items()
            if k.endswith((".jpg", ".png"))}
  assert sizes == {(32, 32, 3)}
