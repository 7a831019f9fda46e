"""The synthetic "shapes world": scenes of coloured shapes, their rendering and their texts.

A scene is a background plus 1-3 objects, each in its own cell of a 2x2 grid
(`POSITIONS`), so objects never touch and positions have unambiguous names. An object
is a shape kind (`SHAPES`), a colour (`COLOURS`) and a size class (`SIZES`), with a
small continuous jitter of its offset and scale inside the cell, so that scenes
with the same description still render to different pixels (eval images can then be
kept distinct from training images). Rendering is Pillow at 4x supersampling,
box-reduced to the target size (anti-aliased edges, exact colours inside shapes), plus a
background brightness jitter (`Scene.shade`).

Image size: 48 px by default. At 48 px a small shape is >= 11 px across and an
independent pixel test (tests/test_shapes.py: fit each shape's ideal outline to the blob)
names every shape of 800 random scenes correctly, raw and as JPEG; at 32 px about 5% of
small stars read as circles or triangles. With 8-px ViT patches, 48 px is 36 image tokens.

Everything random takes a `numpy.random.Generator`; nothing reads global state, so a
scene, its image bytes and its texts are a pure function of the generator's seed.

Text produced here (the formats a model trained on this world sees, see `TEMPLATES`):
  captions        "a large red circle at the top left", "two small blue squares"
  questions       "what colour is the circle?" -> "red"; "how many squares are there?" -> "2"
  binding         fast binding (Frozen, Reddy 2023): "dax." after an image, with the nonce
                  word bound to an object kind only within its page
  induction       task induction: "red." or "two." or "hapo." after an image, the page's
                  label type (`INDUCTION_TYPES`) never named, only shown by its labels
  facts           text-only statements: "a triangle has three corners."
"""

from __future__ import annotations

import dataclasses
import functools
import io
import math
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (50, 90, 230),
    "yellow": (235, 205, 40),
    "purple": (150, 70, 200),
}
# name -> the two colours of a 4x4-px checker (identical for plain backgrounds).
BACKGROUNDS = {
    "black": ((0, 0, 0), (0, 0, 0)),
    "white": ((255, 255, 255), (255, 255, 255)),
    "gray": ((128, 128, 128), (128, 128, 128)),
    "checkered": ((60, 60, 60), (100, 100, 100)),
}
SIZES = ("small", "large")
# Object diameter as a fraction of the cell side, per size class: [low, high).
SIZE_RANGES = {"small": (0.46, 0.56), "large": (0.8, 0.875)}
SIZE_SYNONYMS = {"small": "little", "large": "big"}
POSITIONS = ("top left", "top right", "bottom left", "bottom right")  # grid cells, row-major
NUMBER_WORDS = ("zero", "one", "two", "three", "four")
MAX_OBJECTS = 3
SCENE_KINDS = ("single", "group", "mixed")
SCENE_KIND_PROBS = (0.4, 0.3, 0.3)
SUPERSAMPLE = 4
MAX_SHADE = 12  # background brightness jitter: more distinct images, same descriptions
# Nonce words are two syllables and a coda: "bli"+"ka"+"x" = "blikax".
SYLLABLES = ("ba", "bli", "da", "fe", "glo", "ki", "lu", "mo", "ne", "po", "ru", "sa",
             "ti", "vo", "wu", "zi")
CODAS = ("", "x", "p", "k", "t", "m", "n")

# The text formats, for the eval side and reports (world.json repeats them).
TEMPLATES = {
    "pair": "[image] {caption}  (bare caption, no final period)",
    "gallery_page": "{title} [image] {caption}. [image] {caption}. ...",
    "quiz_page": "[image] Question: {question} Answer: {answer}. ...",
    "binding_page": "[image] {word}. [image] {word}. ... (the last image is the query)",
    "induction_page": "[image] {label}. [image] {label}. ... (one label type per page)",
}
# Fast binding binds these nonce words to object kinds drawn afresh and uniformly on every
# page (and eval episode), so the weights cannot know which word names which kind: only
# the page's own earlier images can tell. A small fixed set keeps every word one piece of
# the demo's 512-piece BPE, so the model needs no spelling to copy a word.
BINDING_WORDS = ("dax", "wug", "fep", "blick", "toma", "zorb", "kiki", "lorp", "modi", "pilk",
                 "zav", "nefa", "ropo", "gub", "tisk", "vorn")


@dataclasses.dataclass(frozen=True)
class Obj:
  """One shape in a grid cell; `dx`, `dy` in [-1, 1] scale the free room around it."""
  shape: str
  colour: str
  size: str
  cell: int
  scale: float  # diameter / cell side, inside SIZE_RANGES[size]
  dx: float
  dy: float


_OBJ_FIELDS = tuple(f.name for f in dataclasses.fields(Obj))


@dataclasses.dataclass(frozen=True)
class Scene:
  background: str
  objects: tuple[Obj, ...]  # sorted by cell (reading order)
  shade: int = 0  # added to the background's RGB values (clipped), |shade| <= MAX_SHADE

  def to_dict(self) -> dict[str, Any]:
    return {"background": self.background, "shade": self.shade,
            "objects": [{f: getattr(o, f) for f in _OBJ_FIELDS} for o in self.objects]}

  @staticmethod
  def from_dict(d: dict[str, Any]) -> "Scene":
    return Scene(d["background"], tuple(Obj(**o) for o in d["objects"]), d.get("shade", 0))


def _check_scene(scene: Scene) -> None:
  if scene.background not in BACKGROUNDS:
    raise ValueError(f"background {scene.background!r} not in {tuple(BACKGROUNDS)}")
  if abs(scene.shade) > MAX_SHADE:
    raise ValueError(f"scene shade {scene.shade} must be in [-{MAX_SHADE}, {MAX_SHADE}]")
  cells = [o.cell for o in scene.objects]
  if not 1 <= len(cells) <= MAX_OBJECTS or len(set(cells)) != len(cells):
    raise ValueError(f"scene needs 1-{MAX_OBJECTS} objects in distinct cells, got cells {cells}")
  for o in scene.objects:
    if o.shape not in SHAPES or o.colour not in COLOURS or o.size not in SIZES:
      raise ValueError(f"object {o} has a shape/colour/size outside {SHAPES}/{tuple(COLOURS)}/{SIZES}")
    if not 0 <= o.cell < len(POSITIONS) or not -1 <= o.dx <= 1 or not -1 <= o.dy <= 1:
      raise ValueError(f"object {o}: cell must be in [0, {len(POSITIONS)}), dx, dy in [-1, 1]")


# ---------------------------------------------------------------------------- scenes


def sample_object(rng: np.random.Generator, cell: int, *, shape: str | None = None,
                  colour: str | None = None, size: str | None = None) -> Obj:
  """An object in `cell`; unspecified attributes are drawn uniformly."""
  shape = shape or SHAPES[rng.integers(len(SHAPES))]
  colour = colour or tuple(COLOURS)[rng.integers(len(COLOURS))]
  size = size or SIZES[rng.integers(len(SIZES))]
  lo, hi = SIZE_RANGES[size]
  scale, dx, dy = rng.uniform(lo, hi), rng.uniform(-1, 1), rng.uniform(-1, 1)
  return Obj(shape, colour, size, int(cell), round(float(scale), 4), round(float(dx), 4),
             round(float(dy), 4))


def sample_scene(rng: np.random.Generator, kind: str | None = None) -> Scene:
  """A random scene. kind: "single" (one object), "group" (2-3 objects of one shape,
  colour and size) or "mixed" (2-3 objects with distinct (shape, colour) pairs)."""
  if kind is None:
    kind = SCENE_KINDS[rng.choice(len(SCENE_KINDS), p=SCENE_KIND_PROBS)]
  if kind not in SCENE_KINDS:
    raise ValueError(f"scene kind {kind!r} not in {SCENE_KINDS}")
  background = tuple(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
  n = 1 if kind == "single" else int(rng.integers(2, MAX_OBJECTS + 1))
  cells = sorted(int(c) for c in rng.choice(len(POSITIONS), size=n, replace=False))
  if kind == "group":
    first = sample_object(rng, cells[0])
    objects = [first] + [sample_object(rng, c, shape=first.shape, colour=first.colour,
                                       size=first.size) for c in cells[1:]]
  else:
    objects, seen = [], set()
    for c in cells:
      o = sample_object(rng, c)
      while (o.shape, o.colour) in seen:
        o = sample_object(rng, c)
      seen.add((o.shape, o.colour))
      objects.append(o)
  return Scene(background, tuple(objects), _shade(rng))


def _shade(rng: np.random.Generator) -> int:
  return int(rng.integers(-MAX_SHADE, MAX_SHADE + 1))


def single_scene(rng: np.random.Generator, *, shape: str | None = None,
                 colour: str | None = None, background: str | None = None) -> Scene:
  """One object at a random cell on a (random) background (binding episodes use these)."""
  background = background or tuple(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
  cell = int(rng.integers(len(POSITIONS)))
  return Scene(background, (sample_object(rng, cell, shape=shape, colour=colour),), _shade(rng))


def binding_kinds(rng: np.random.Generator, ways: int) -> list[tuple[str, str]]:
  """`ways` object kinds (shape, colour) that differ pairwise in shape AND in colour."""
  if not 2 <= ways <= min(len(SHAPES), len(COLOURS)):
    raise ValueError(f"binding ways {ways} must be in [2, {min(len(SHAPES), len(COLOURS))}]")
  shapes = rng.choice(len(SHAPES), size=ways, replace=False)
  colours = rng.choice(len(COLOURS), size=ways, replace=False)
  return [(SHAPES[s], tuple(COLOURS)[c]) for s, c in zip(shapes, colours)]


# ---------------------------------------------------------------------------- rendering


def object_geometry(o: Obj, image_size: int) -> tuple[float, float, float]:
  """(cx, cy, r) of an object's bounding box in output-pixel units.

  The box is 2r wide, centred at (cx, cy), and stays 1 px inside its cell on every side
  (so objects in neighbouring cells are at least 2 px apart)."""
  cell = image_size / 2
  r = o.scale * cell / 2
  room = max(0.0, cell / 2 - r - 1.0)
  row, col = divmod(o.cell, 2)
  return (col + 0.5) * cell + o.dx * room, (row + 0.5) * cell + o.dy * room, r


def star_polygon(cx: float, cy: float, r: float) -> list[tuple[float, float]]:
  """A 5-pointed star whose bounding box is centred at (cx, cy) with height 2r."""
  inner, points = 0.5, []
  # Unit star: top point at y=-1, lowest points at y=cos(36deg); shift to centre the box.
  shift = (1 - math.cos(math.pi / 5)) / 2
  for k in range(10):
    rad = r if k % 2 == 0 else r * inner
    a = -math.pi / 2 + k * math.pi / 5
    points.append((cx + rad * math.cos(a), cy + rad * math.sin(a) + shift * r))
  return points


def interior_point(o: Obj, image_size: int) -> tuple[float, float]:
  """A point deep inside the drawn shape (its centroid), in output-pixel units."""
  cx, cy, r = object_geometry(o, image_size)
  if o.shape == "triangle":
    return cx, cy + r / 3  # centroid of (cx, cy-r), (cx+-r, cy+r)
  if o.shape == "star":
    return cx, cy + (1 - math.cos(math.pi / 5)) / 2 * r
  return cx, cy


def render_scene(scene: Scene, image_size: int = 48) -> Image.Image:
  """Renders a scene to an RGB image of [image_size, image_size]."""
  _check_scene(scene)
  if image_size < 16 or image_size % 2:
    raise ValueError(f"image_size {image_size} must be an even number >= 16")
  s = SUPERSAMPLE
  img = _canvas(background_colours(scene), image_size).copy()
  draw = ImageDraw.Draw(img)
  for o in scene.objects:
    cx, cy, r = (v * s for v in object_geometry(o, image_size))
    fill = COLOURS[o.colour]
    if o.shape == "circle":
      draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif o.shape == "square":
      q = r * 0.9  # a square of the same diameter looks bigger than a circle
      draw.rectangle([cx - q, cy - q, cx + q, cy + q], fill=fill)
    elif o.shape == "triangle":
      draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill)
    else:
      draw.polygon(star_polygon(cx, cy, r), fill=fill)
  return img.reduce(s)


@functools.lru_cache(maxsize=256)
def _canvas(colours: tuple[tuple[int, ...], tuple[int, ...]], image_size: int) -> Image.Image:
  """The supersampled background: plain, or a checker of 4-px (at 32 px) tiles."""
  (c0, c1), big = colours, image_size * SUPERSAMPLE
  img = Image.new("RGB", (big, big), c0)
  if c1 != c0:
    draw, tile = ImageDraw.Draw(img), 4 * SUPERSAMPLE * image_size // 32
    for y in range(0, big, tile):
      for x in range(0, big, tile):
        if (x // tile + y // tile) % 2:
          draw.rectangle([x, y, x + tile - 1, y + tile - 1], fill=c1)
  return img


def background_colours(scene: Scene) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """The two RGB colours of the scene's (shaded) background checker; equal if plain."""
  return tuple(tuple(_shaded(v, scene.shade) for v in c)  # type: ignore[return-value]
               for c in BACKGROUNDS[scene.background])


def _shaded(value: int, shade: int) -> int:
  """value + shade, folded back at 0 and 255 (black gets lighter, white darker)."""
  v = value + shade
  return -v if v < 0 else 510 - v if v > 255 else v


def encode_image(image: Image.Image, fmt: str = "PNG") -> bytes:
  """PNG (lossless, for records) or JPEG at quality 95 (for the public eval layouts)."""
  buf = io.BytesIO()
  if fmt == "PNG":
    image.save(buf, "PNG", optimize=False, compress_level=6)
  elif fmt == "JPEG":
    image.save(buf, "JPEG", quality=95, subsampling=0)
  else:
    raise ValueError(f"image format {fmt!r} not in ('PNG', 'JPEG')")
  return buf.getvalue()


# ---------------------------------------------------------------------------- captions


def _plural(shape: str) -> str:
  return shape + "s"


def _phrase(o: Obj, *, size: str | None = "size", position: bool = False) -> str:
  words = ["a"]
  if size == "size":
    words.append(o.size)
  elif size == "synonym":
    words.append(SIZE_SYNONYMS[o.size])
  words += [o.colour, o.shape]
  if position:
    words += ["at the", POSITIONS[o.cell]]
  return " ".join(words)


def _join(parts: Sequence[str]) -> str:
  return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _is_group(scene: Scene) -> bool:
  objs = scene.objects
  return len(objs) > 1 and len({(o.shape, o.colour, o.size) for o in objs}) == 1


def captions(scene: Scene) -> list[str]:
  """Five true paraphrases of the scene; the first is the canonical caption."""
  objs, bg = scene.objects, f"on a {scene.background} background"
  if len(objs) == 1:
    o, pos = objs[0], POSITIONS[objs[0].cell]
    return [_phrase(o, position=True),
            f"{_phrase(o, size='synonym')} in the {pos} corner",
            f"there is {_phrase(o, position=True)}",
            f"{_phrase(o)} {bg}",
            f"one {o.size} {o.colour} {o.shape} at the {pos} of the image"]
  if _is_group(scene):
    o, n = objs[0], NUMBER_WORDS[len(objs)]
    many = _plural(o.shape)
    return [f"{n} {o.size} {o.colour} {many}",
            f"there are {n} {o.size} {o.colour} {many}",
            f"{n} {o.colour} {many} {bg}",
            f"a picture of {n} {SIZE_SYNONYMS[o.size]} {o.colour} {many}",
            f"{n} {o.size} {many} that are {o.colour}"]
  plain = _join([_phrase(o) for o in objs])
  return [plain,
          f"there is {plain}",
          f"{_join([_phrase(o, size=None) for o in objs])} {bg}",
          _join([_phrase(o, position=True) for o in objs]),
          f"{NUMBER_WORDS[len(objs)]} shapes: {plain}"]


def caption(scene: Scene, rng: np.random.Generator) -> str:
  """A training caption: the canonical one half of the time, else a random paraphrase."""
  options = captions(scene)
  return options[0] if rng.random() < 0.5 else options[int(rng.integers(len(options)))]


# ---------------------------------------------------------------------------- questions


@dataclasses.dataclass(frozen=True)
class QA:
  question: str
  answer: str
  question_type: str  # VQAv2-style prefix, e.g. "what colour is the"
  answer_type: str  # "yes/no" | "number" | "other"


def question_candidates(scene: Scene) -> dict[str, list[QA]]:
  """Every question with an unambiguous answer for the scene, grouped by type."""
  objs = scene.objects
  by_shape = {s: [o for o in objs if o.shape == s] for s in SHAPES}
  out: dict[str, list[QA]] = {"colour": [], "count": [], "shape": [], "exists": [], "size": []}
  for s, found in by_shape.items():
    if len(found) == 1:
      o = found[0]
      out["colour"].append(QA(f"what colour is the {s}?", o.colour, "what colour is the", "other"))
      out["size"].append(QA(f"is the {s} large or small?", o.size, "is the", "other"))
    out["count"].append(QA(f"how many {_plural(s)} are there?", str(len(found)), "how many",
                           "number"))
  out["count"].append(QA("how many shapes are there?", str(len(objs)), "how many", "number"))
  for o in objs:
    pos = POSITIONS[o.cell]
    out["shape"].append(QA(f"what shape is at the {pos}?", o.shape, "what shape is", "other"))
    out["colour"].append(QA(f"what colour is the shape at the {pos}?", o.colour,
                            "what colour is the", "other"))
  present = {(o.colour, o.shape) for o in objs}
  for c in COLOURS:
    for s in SHAPES:
      answer = "yes" if (c, s) in present else "no"
      out["exists"].append(QA(f"is there a {c} {s}?", answer, "is there a", "yes/no"))
  return {k: v for k, v in out.items() if v}


def sample_questions(scene: Scene, rng: np.random.Generator, k: int) -> list[QA]:
  """k distinct questions: a type uniformly among those available, then a question of it.

  "exists" questions are balanced: yes and no each half of the time when both exist. If
  random draws keep repeating, the rest is filled in candidate order (always k: every
  scene has at least 25 candidates)."""
  pool = question_candidates(scene)
  chosen: list[QA] = []
  for _ in range(k * 20):
    if len(chosen) == k:
      break
    kind = sorted(pool)[int(rng.integers(len(pool)))]
    options = pool[kind]
    if kind == "exists":
      want = "yes" if rng.random() < 0.5 else "no"
      options = [q for q in options if q.answer == want] or options
    qa = options[int(rng.integers(len(options)))]
    if qa not in chosen:
      chosen.append(qa)
  rest = [qa for kind in sorted(pool) for qa in pool[kind] if qa not in chosen]
  return chosen + rest[:k - len(chosen)]


# ---------------------------------------------------------------------------- nonce words


@functools.lru_cache(maxsize=1)
def all_nonce_words() -> tuple[str, ...]:
  """Every nonce word (len(SYLLABLES)**2 * len(CODAS)), sorted; none is a world word."""
  reserved = set(" ".join([*SHAPES, *COLOURS, *BACKGROUNDS, *SIZES, *POSITIONS,
                           *SIZE_SYNONYMS.values(), *NUMBER_WORDS]).split())
  words = {a + b + c for a in SYLLABLES for b in SYLLABLES for c in CODAS}
  return tuple(sorted(words - reserved))


def nonce_words(rng: np.random.Generator, n: int) -> list[str]:
  """n distinct nonce words."""
  words = all_nonce_words()
  return [words[i] for i in rng.choice(len(words), size=n, replace=False)]


# ---------------------------------------------------------------------------- task induction

# Task induction: every image of a page is followed by its label under the page's label
# type, drawn per page and never named in the text, so only the page's earlier (image,
# label) pairs tell which attribute to name. "code" is a fixed colour-to-nonce-word code
# of the whole world (the weights can learn it, unlike the per-page binding words); its
# words use syllables outside SYLLABLES, so they are never nonce or binding words.
INDUCTION_TYPES = ("colour", "shape", "count", "position", "size", "code")
CODE_WORDS = {"red": "hapo", "green": "jeku", "blue": "quib", "yellow": "yoff",
              "purple": "cheg"}


def induction_vocabulary(label_type: str) -> tuple[str, ...]:
  """Every label of a type."""
  vocabularies = {"colour": tuple(COLOURS), "shape": SHAPES,
                  "count": NUMBER_WORDS[1:MAX_OBJECTS + 1], "position": POSITIONS,
                  "size": SIZES, "code": tuple(CODE_WORDS[c] for c in COLOURS)}
  if label_type not in vocabularies:
    raise ValueError(f"induction label type {label_type!r} not in {INDUCTION_TYPES}")
  return vocabularies[label_type]


def induction_scene(rng: np.random.Generator, label_type: str) -> Scene:
  """A scene with one label per type: one object, or (not for "position") half of the
  time a group of 2-3 objects of one shape, colour and size."""
  single = label_type == "position" or rng.random() < 0.5
  return sample_scene(rng, "single" if single else "group")


def induction_labels(scene: Scene) -> dict[str, str]:
  """The scene's label under each type, in INDUCTION_TYPES order ("position" only for
  a single object). The scene must be single or a group (`induction_scene`)."""
  o = scene.objects[0]
  if len(scene.objects) > 1 and not _is_group(scene):
    raise ValueError(f"a mixed scene has no single colour/shape/size label: {scene}")
  labels = {"colour": o.colour, "shape": o.shape, "count": NUMBER_WORDS[len(scene.objects)],
            "position": POSITIONS[o.cell], "size": o.size, "code": CODE_WORDS[o.colour]}
  if len(scene.objects) > 1:
    del labels["position"]
  return labels


def induction_choices(label_type: str, labels: dict[str, str]) -> list[str]:
  """An eval query's candidates: every label of the page's type, then the query's own
  label under each other type. Without the type (0 shots) the true labels of the other
  types are as plausible as the answer; with it, blank images leave 1 / |type's labels|."""
  return list(induction_vocabulary(label_type)) + [
      labels[t] for t in INDUCTION_TYPES if t != label_type and t in labels]


# ---------------------------------------------------------------------------- text facts


def fact_sentences(rng: np.random.Generator, n: int) -> list[str]:
  """n sentences of world knowledge for text-only documents."""
  corners = {"circle": "no corners", "square": "four corners", "triangle": "three corners",
             "star": "five points"}
  outline = {"circle": "is round", "square": "has four equal sides",
             "triangle": "has three sides", "star": "has five points and five dents"}
  colours, sentences = tuple(COLOURS), []
  for _ in range(n):
    kind = int(rng.integers(8))
    s = SHAPES[rng.integers(len(SHAPES))]
    c = colours[rng.integers(len(colours))]
    if kind == 0:
      sentences.append(f"a {s} has {corners[s]}.")
    elif kind == 1:
      sentences.append(f"{c} {_plural(s)} are {c}. a {c} {s} {outline[s]}.")
    elif kind == 2:
      sentences.append(f"a large {s} is bigger than a small {s}.")
    elif kind == 3:
      a, b = (POSITIONS[i] for i in rng.choice(4, size=2, replace=False))
      rel = _relation(POSITIONS.index(a), POSITIONS.index(b))
      sentences.append(f"the {a} is {rel} the {b}.")
    elif kind == 4:
      m = int(rng.integers(1, MAX_OBJECTS + 1))
      sentences.append(f"{NUMBER_WORDS[m]} {_plural(s) if m > 1 else s}: the number is {m}.")
    elif kind == 5:
      scene = sample_scene(rng)
      qa = sample_questions(scene, rng, 1)[0]
      sentences.append(f"a picture shows {captions(scene)[0]}. Question: {qa.question} "
                       f"Answer: {qa.answer}.")
    elif kind == 6:
      w = nonce_words(rng, 2)
      s2 = SHAPES[(SHAPES.index(s) + 1 + int(rng.integers(len(SHAPES) - 1))) % len(SHAPES)]
      which = int(rng.integers(2))
      sentences.append(f"a {w[0]} is a {s}. a {w[1]} is a {s2}. what is a {w[which]}? "
                       f"a {[s, s2][which]}.")
    else:
      sentences.append(f"the colours are {_join(colours)}. the shapes are {_join(SHAPES)}.")
  return sentences


def _relation(a: int, b: int) -> str:
  """How cell a lies relative to cell b (they differ)."""
  (ra, ca), (rb, cb) = divmod(a, 2), divmod(b, 2)
  vertical = "above" if ra < rb else "below" if ra > rb else ""
  horizontal = "left of" if ca < cb else "right of" if ca > cb else ""
  if vertical and horizontal:
    return f"{vertical} and to the {horizontal}"
  return vertical or f"to the {horizontal}"
