"""Metrics: PTB tokenization twin vs Stanford's, CIDEr vs pycocoevalcap, VQA rules, ROC AUC."""

import itertools
import math
import shutil

import numpy as np
import pytest

from kosmos.eval import metrics
from kosmos.eval import ptb_tokenizer
from kosmos.eval import vqa_normalize

JAVA = shutil.which("java") is not None
needs_java = pytest.mark.skipif(
    not JAVA, reason="no `java` on PATH: pycocoevalcap's Stanford PTBTokenizer cannot run "
    "(install default-jre-headless); the Python twin is then used unchecked")

# Real-style COCO / Flickr captions: contractions, possessives, hyphens, periods,
# quotes, numbers, brackets, abbreviations, odd spacing, unicode punctuation.
CAPTIONS = [
    "A man riding a wave on top of a surfboard.",
    "A group of people standing around a kitchen.",
    "Two dogs playing with a frisbee in the park .",
    "a black-and-white photo of a train station",
    "A woman's hand holding a cell phone.",
    "The cat isn't sleeping on the couch; it's on the bed.",
    "There's a stop sign at the corner of the street",
    "A young boy in a red t-shirt swinging a baseball bat.",
    "Children's toys scattered across the living room floor.",
    "A plate with a hot dog, fries, and a pickle.",
    "An elephant standing next to a 10-foot-tall fence.",
    "A \"vintage\" bus parked on the side of the road.",
    "Someone's laptop sits on a desk next to a cup of coffee...",
    "A double-decker bus drives down a busy street in London.",
    "A man in a suit and tie (wearing glasses) smiles.",
    "Three zebras grazing in a field of tall grass!",
    "Is this a giraffe? Yes, it is.",
    "A sign that reads 'No Parking' on a pole.",
    "Two people on skis going down a snow-covered slope",
    "A bathroom with a toilet, sink and mirror.   ",
    "A kitchen that has a stove, a fridge, and a microwave in it",
    "The clock on the tower reads 10:30.",
    "A pizza with pepperoni and mushrooms cut into 8 slices.",
    "People waiting for the bus at the U.S. Capitol.",
    "A teddy bear sitting in a child's high-chair.",
    "A man doesn't want to share his sandwich.",
    "A little girl holding an umbrella in the rain",
    "A close up of a cat's face with green eyes.",
    "They're flying kites on the beach on a windy day.",
    "A woman wearing a hat and sunglasses -- smiling at the camera.",
    "A bowl of fruit: apples, bananas and oranges.",
    "An old-fashioned red phone booth on a street corner.",
    "A train traveling down tracks next to a forest",
    "A skateboarder does a trick on a ramp at the skate park.",
    "Horses grazing in a pasture near a barn",
    "A baseball player swings at a pitch during a game.",
    "A room with a bed, a desk and a chair; the walls are white.",
    "The boy's mother is watching from the bench.",
    "A cake with \u201cHappy Birthday\u201d written on it.",
    "A dog\u2019s head sticking out of a car window.",
    "A cup of coffee and a donut on a table\u2026",
    "An airplane flying over a city at sunset",
    "A 3-year-old girl eats a banana.",
    "Giraffes at the zoo eating leaves from a tree.",
    "A man on a motorcycle on a dirt road.",
    "A woman is cutting a cake while others watch",
    "Two cats laying on a bed next to each other.",
    "Dr. Smith's office has a large window.",
    "A cow standing in front of a St. Louis sign.",
    "A vase with flowers [roses] on a wooden table.",
    "You can't park here, it's a fire lane!",
    "We'll see a sheep and it's lamb in a field.",
    "A man's bike is leaning against a wall",
    "An empty road with a yield sign .",
    "The bananas are yellow and green?!",
    "A street with cars, buses and taxis - busy.",
]


def pycoco_tokenize(captions):
  from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
  out = PTBTokenizer().tokenize({str(i): [{"caption": c}] for i, c in enumerate(captions)})
  return [out[str(i)][0] for i in range(len(captions))]


@needs_java
def test_python_twin_matches_stanford_ptbtokenizer_on_captions():
  expected = pycoco_tokenize(CAPTIONS)
  got = [ptb_tokenizer.ptb_tokenize(c) for c in CAPTIONS]
  mismatches = [(c, e, g) for c, e, g in zip(CAPTIONS, expected, got) if e != g]
  assert not mismatches, mismatches
  # The java path of `tokenize` is pycocoevalcap's tokenizer too.
  assert ptb_tokenizer.tokenize({"a": CAPTIONS[:5]}, "java")["a"] == expected[:5]


@needs_java
def test_python_twin_matches_stanford_on_generated_captions():
  rng = np.random.default_rng(0)
  subj = ["A man", "a woman's dog", "Two kids", "The U.S. flag", "Mr. Brown", "They",
          "a black-and-white cow", "A 3-year-old boy", "It"]
  verb = ["is riding", "isn't sitting on", "can't reach", "'s holding", "won't eat", "holds up"]
  obj = ["a surfboard", "a red t-shirt", 'a "stop" sign', "an umbrella (blue)", "the 10:30 bus",
         "some fruit: apples and pears", "a pizza, fries and a drink", "the dogs' toys",
         "a sign reading 'No Parking'", "a 1,000-piece puzzle", "his mother's car"]
  tail = ["", ".", " .", "!", "?", "...", " on a sunny day", ", smiling.", " -- again.",
          "; it's raining.", " at St. Louis.", " near the zoo. Another one is there.",
          "\u2026", " today!!", ", isn't it?"]
  captions = []
  for _ in range(300):
    c = " ".join([str(rng.choice(subj)), str(rng.choice(verb)), str(rng.choice(obj))])
    c += str(rng.choice(tail))
    style = rng.integers(4)
    captions.append([c, c.lower(), c.upper(), f"  {c}  "][style])
  expected = pycoco_tokenize(captions)
  mismatches = [(c, e) for c, e in zip(captions, expected) if ptb_tokenizer.ptb_tokenize(c) != e]
  assert not mismatches, mismatches[:5]


def test_python_twin_on_hand_checked_cases():
  # Outputs of Stanford CoreNLP 3.4.1 (-preserveLines -lowerCase), punctuation removed.
  cases = {
      "A man's dog isn't running (fast) down the street.":
          "a man 's dog is n't running -lrb- fast -rrb- down the street",
      "They're \"happy\" and I'm sure we'll see 'em.":
          "they 're happy and i 'm sure we 'll see 'em",
      "Cannot gonna 5:30pm costs $5,000 or 50% off!":
          "can not gon na 5:30 pm costs $ 5,000 or 50 % off",
      "a---b a--b well-known -x y- 3.5 .5 5.": "a b a b well-known x y 3.5 .5 5",
      "dogs' bones 'tis rock'n'roll o'clock y'all": "dogs bones 't is rock 'n' roll o'clock y' all",
      "the Jr. The u.s. The a. The a. the": "the jr. the u.s. the a the a. the",
      "wow!! what?!": "wow !! what ?!",
      "THE CAT 'S HOLDING A 'DOG'": "the cat 's holding a dog",
  }
  for caption, expected in cases.items():
    assert ptb_tokenizer.ptb_tokenize(caption) == expected, caption


def test_cider_hand_computed():
  # Two images, disjoint vocabularies: identical candidates give 1-gram and 2-gram
  # cosine 1, no 3/4-grams -> (1 + 1 + 0 + 0) / 4 * 10 = 5.0 per image.
  refs = {"1": ["a dog"], "2": ["a cat"]}
  assert metrics.cider({"1": "a dog", "2": "a cat"}, refs, tokenizer="python") == \
      pytest.approx(5.0)
  # "a" has df 2 -> idf 0; "a cat" vs "a dog": no weighted overlap -> 0 for image 1.
  assert metrics.cider({"1": "a cat", "2": "A cat."}, refs, tokenizer="python") == \
      pytest.approx(2.5)


def _reference_set():
  rng = np.random.default_rng(0)
  keys = [f"img{i}" for i in range(10)]
  refs = {k: [CAPTIONS[(5 * i + j) % len(CAPTIONS)] for j in range(5)]
          for i, k in enumerate(keys)}
  preds = {k: CAPTIONS[int(rng.integers(len(CAPTIONS)))] if i % 3 else refs[k][0].upper()
           for i, k in enumerate(keys)}
  return preds, refs


def test_cider_equals_pycocoevalcap_with_python_tokenizer():
  from pycocoevalcap.cider.cider import Cider
  preds, refs = _reference_set()
  gts = {k: [ptb_tokenizer.ptb_tokenize(c) for c in v] for k, v in refs.items()}
  res = {k: [ptb_tokenizer.ptb_tokenize(v)] for k, v in preds.items()}
  expected, _ = Cider().compute_score(gts, res)
  got = metrics.cider(preds, refs, tokenizer="python")
  assert got == pytest.approx(expected, rel=1e-12)
  assert 0.5 < got < 10  # some candidates are (upper-cased) references


@needs_java
def test_cider_equals_coco_pipeline_with_stanford_tokenizer():
  from pycocoevalcap.cider.cider import Cider
  from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
  preds, refs = _reference_set()
  tok = PTBTokenizer()
  gts = tok.tokenize({k: [{"caption": c} for c in v] for k, v in refs.items()})
  res = tok.tokenize({k: [{"caption": v}] for k, v in preds.items()})
  expected, _ = Cider().compute_score(gts, res)
  for backend in ("java", "python", "auto"):
    assert metrics.cider(preds, refs, tokenizer=backend) == pytest.approx(expected, rel=1e-12)


def test_cider_rejects_missing_references():
  with pytest.raises(ValueError, match="lack references"):
    metrics.cider({"1": "a dog"}, {"2": ["a dog"]}, tokenizer="python")


def test_vqa_normalization_rules():
  pp = vqa_normalize.process_punctuation
  da = vqa_normalize.process_digit_article
  assert pp("hot-dog") == "hot dog"            # punct not touching a space -> space
  assert pp("yes !") == "yes "                 # punct touching a space -> deleted
  assert pp("1,000 (approx)") == "1000 approx"  # digit,digit present -> all punct deleted
  assert pp("5.") == "5" and pp("3.14") == "3.14" and pp("a.b") == "ab"  # periodStrip
  assert pp("." * 40) == "." * 8               # official sub(..., re.UNICODE): count=32
  assert da("The Two DOGS") == "2 dogs"        # lowercase, number words, articles
  assert da("none of an apple") == "0 of apple"
  # contractions map; its cased keys ("Im") never match after lowercasing, as upstream
  assert da("dont   isnt Im") == "don't isn't im"
  assert vqa_normalize.normalize_answer("  Two\tdogs.\n") == "2 dogs"


def test_vqa_accuracy_hand_computed():
  acc = vqa_normalize.vqa_accuracy
  old = lambda p, a: acc(p, a, variant="official_2016")
  of = lambda p, a: acc(p, a, variant="openflamingo")
  # 2 of 10 annotators agree: leave-one-out mean = (2 * 1/3 + 8 * 2/3) / 10 = 0.6.
  for variant in vqa_normalize.VARIANTS:
    assert acc("Yes", ["yes"] * 2 + ["no"] * 8, variant=variant) == pytest.approx(0.6)
    assert acc("yes", ["yes"] * 3 + ["no"] * 7, variant=variant) == pytest.approx(0.9)
    assert acc("maybe", ["yes"] * 10, variant=variant) == 0.0
    # Disagreeing references are punctuation-processed: "hot-dog" -> "hot dog".
    assert acc("hot dog", ["hot-dog"] * 2 + ["hotdog"] * 8, variant=variant) == pytest.approx(0.6)
  # Current official script: when all ten references agree, nothing is normalized, so
  # the raw (whitespace-cleaned) prediction must equal them ...
  assert acc("two", ["2"] * 10) == 0.0 and old("two", ["2"] * 10) == 1.0
  assert acc("two", ["two"] * 10) == 1.0 and old("two", ["two"] * 10) == 0.0
  assert acc("the dog", ["dog"] * 10) == 0.0 and old("the dog", ["dog"] * 10) == 1.0
  assert acc("dont", ["don't"] * 10) == 0.0 and old("dont", ["don't"] * 10) == 1.0
  assert acc("red.", ["red"] * 10) == 0.0 and old("red.", ["red"] * 10) == 1.0
  assert acc(" red\n", ["red"] * 10) == 1.0 and acc("red", ["red\t"] * 10) == 1.0
  assert old("red", ["red\t"] * 10) == 0.0  # 2016: references not whitespace-cleaned
  # ... and when they disagree, prediction and references are both fully normalized
  # (the 2016 script processed the references' punctuation only).
  assert acc("two", ["2"] * 9 + ["two"]) == 1.0
  assert acc("2", ["the two"] * 4 + ["Two!"] * 6) == 1.0 and old("2", ["the two"] * 4 + ["Two!"] * 6) == 0.0
  # OpenFlamingo's copy normalizes every reference, always.
  assert of("two", ["two"] * 10) == 1.0 and of("The Dog.", ["dog"] * 10) == 1.0
  assert metrics.vqa_accuracy(["two", "no"], [["2"] * 10, ["yes"] * 10]) == 0.0
  assert metrics.vqa_accuracy(["two", "no"], [["2"] * 10, ["yes"] * 10],
                              variant="official_2016") == 0.5
  with pytest.raises(ValueError, match="'official_2021'.*valid"):
    metrics.vqa_accuracy(["a"], [["a"]], variant="official_2021")


def test_postprocessing():
  assert metrics.postprocess_caption(' a "red" bus.\nAn image of') == "a red bus."
  assert metrics.postprocess_caption("a dog Output: x") == "a dog"
  assert metrics.postprocess_caption("a cat Question: y") == "a cat"
  assert metrics.postprocess_vqa(" two, maybe three Question: what") == "two"
  assert metrics.postprocess_vqa("yes Short answer: no") == "yes"
  assert metrics.postprocess_vqa("red\nQuestion") == "red"
  # A trailing period would zero the score under the official rule (all refs agree).
  assert metrics.postprocess_vqa(" red. \nQuestion: x") == "red"
  assert metrics.postprocess_vqa("3.5.") == "3.5" and metrics.postprocess_vqa("...") == ""
  for raw in ("red.", " red.", "red .\n", "red.Question: what"):
    assert metrics.vqa_accuracy([metrics.postprocess_vqa(raw)], [["red"] * 10]) == 1.0
  assert metrics.vqa_accuracy(["red."], [["red"] * 10]) == 0.0  # unprocessed: 0
  # OpenFlamingo's own: markers, then ", "; no newline cut, no stripping.
  of = metrics.postprocess_vqa_openflamingo
  assert of(" red. Question: x") == " red. " and of("a, b Answer") == "a"
  assert of("red\nblue, green") == "red\nblue"


def _auc_pairs(y, s):
  pos = [b for a, b in zip(y, s) if a == 1]
  neg = [b for a, b in zip(y, s) if a == 0]
  wins = sum((p > n) + 0.5 * (p == n) for p, n in itertools.product(pos, neg))
  return wins / (len(pos) * len(neg))


def test_roc_auc_known_values_and_ties():
  assert metrics.roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75  # sklearn's doc
  assert metrics.roc_auc([0, 0, 1, 1], [0.5] * 4) == 0.5
  assert metrics.roc_auc([0, 1, 1, 0], [1, 1, 2, 0]) == 0.875
  assert metrics.roc_auc([1, 0], [0.2, 0.9]) == 0.0
  rng = np.random.default_rng(1)
  y = rng.integers(0, 2, 300)
  s = np.round(rng.normal(size=300) + y, 1)  # many ties
  assert metrics.roc_auc(y, s) == pytest.approx(_auc_pairs(y, s), abs=1e-12)
  with pytest.raises(ValueError, match="both classes"):
    metrics.roc_auc([1, 1], [0.1, 0.2])


def test_accuracy_probabilities_mean_std_and_scores():
  assert metrics.accuracy([1, 2, 3, 4], [1, 2, 0, 0]) == 0.5
  p = metrics.class_probabilities(np.log([[1.0, 3.0], [2.0, 2.0]]))
  np.testing.assert_allclose(p, [[0.25, 0.75], [0.5, 0.5]])
  mean, std = metrics.mean_std([1.0, 3.0, float("nan")])
  assert (mean, std) == (2.0, 1.0)
  assert all(math.isnan(v) for v in metrics.mean_std([]))
  assert metrics.score("accuracy", [1, 0], [1, 1]) == 50.0
  assert metrics.score("roc_auc", [0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 75.0
  with pytest.raises(ValueError, match="unknown metric"):
    metrics.score("bleu", [], [])
