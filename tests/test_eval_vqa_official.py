"""kosmos' VQA accuracy vs an independent port of the official evaluation script.

The port below is written from GT-Vision-Lab/VQA PythonEvaluationTools/vqaEvaluation/
vqaEval.py at its current commit ("Fixed processing answers bug", 2021), keeping its
structure: answer dicts with answer_id, in-place normalization of the ground truth,
`otherGTAns = [item for item in answers if item != gtAnsDatum]`. Its word tables are
copied from that file, not imported from kosmos. The 2016 script (before the fix) and
OpenFlamingo's copy (open_flamingo/eval/vqa_metric.py) are ported alongside, differing
only where those files differ. Thousands of generated adversarial (prediction, answers)
cases must score identically under kosmos' metric.
"""

import copy
import random
import re

import pytest

from kosmos.eval import metrics
from kosmos.eval import vqa_normalize

# ------------------------------------------------------------------ the official tables
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "couldn'tve": "couldn't've", "couldnt've": "couldn't've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't",
    "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've",
    "hes": "he's", "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've",
    "I'dve": "I'd've", "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd",
    "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't",
    "mustve": "must've", "neednt": "needn't", "notve": "not've", "oclock": "o'clock",
    "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've",
    "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've",
    "somethingll": "something'll", "thats": "that's", "thered": "there'd",
    "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're",
    "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're",
    "theyve": "they've", "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've",
    "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd",
    "whod've": "who'd've", "who'dve": "who'd've", "wholl": "who'll", "whos": "who's",
    "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all",
    "yall'll": "y'all'll", "y'allll": "y'all'll", "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll",
    "youre": "you're", "youve": "you've"}
MANUAL_MAP = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
              "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = ["a", "an", "the"]
PERIOD_STRIP = re.compile("(?!<=\\d)(\\.)(?!\\d)")
COMMA_STRIP = re.compile("(\\d)(\\,)(\\d)")
PUNCT = [";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<",
         "@", "`", ",", "?", "!"]


class PortedVQAEval:
  """One question of `VQAEval.evaluate`, for the three versions of the script."""

  def __init__(self, version):
    assert version in ("2021", "2016", "openflamingo")
    self.version = version
    self.manualMap = dict(MANUAL_MAP)  # setdefault below mutates it, as upstream

  def processPunctuation(self, inText):
    outText = inText
    for p in PUNCT:
      if (p + " " in inText or " " + p in inText) or (re.search(COMMA_STRIP, inText) is not None):
        outText = outText.replace(p, "")
      else:
        outText = outText.replace(p, " ")
    outText = PERIOD_STRIP.sub("", outText, re.UNICODE)
    return outText

  def processDigitArticle(self, inText):
    outText = []
    tempText = inText.lower().split()
    for word in tempText:
      word = self.manualMap.setdefault(word, word)
      if word not in ARTICLES:
        outText.append(word)
    for wordId, word in enumerate(outText):
      if word in CONTRACTIONS:
        outText[wordId] = CONTRACTIONS[word]
    return " ".join(outText)

  def question_accuracy(self, gt, resAns):
    gt = copy.deepcopy(gt)  # {"answers": [{"answer": str, "answer_id": int}, ...]}
    if self.version == "2016":
      resAns = resAns.replace("\n", " ").replace("\t", " ").strip()
      resAns = self.processPunctuation(resAns)
      resAns = self.processDigitArticle(resAns)
      gtAnswers = [ans["answer"] for ans in gt["answers"]]
      if len(set(gtAnswers)) > 1:
        for ansDic in gt["answers"]:
          ansDic["answer"] = self.processPunctuation(ansDic["answer"])
    else:
      for ansDic in gt["answers"]:
        ansDic["answer"] = ansDic["answer"].replace("\n", " ")
        ansDic["answer"] = ansDic["answer"].replace("\t", " ")
        ansDic["answer"] = ansDic["answer"].strip()
      resAns = resAns.replace("\n", " ")
      resAns = resAns.replace("\t", " ")
      resAns = resAns.strip()
      gtAnswers = [ans["answer"] for ans in gt["answers"]]
      if self.version == "openflamingo" or len(set(gtAnswers)) > 1:
        for ansDic in gt["answers"]:
          ansDic["answer"] = self.processPunctuation(ansDic["answer"])
          ansDic["answer"] = self.processDigitArticle(ansDic["answer"])
        resAns = self.processPunctuation(resAns)
        resAns = self.processDigitArticle(resAns)
    gtAcc = []
    for gtAnsDatum in gt["answers"]:
      otherGTAns = [item for item in gt["answers"] if item != gtAnsDatum]
      matchingAns = [item for item in otherGTAns if item["answer"] == resAns]
      acc = min(1, float(len(matchingAns)) / 3)
      gtAcc.append(acc)
    return float(sum(gtAcc)) / len(gtAcc)


def ported(version, prediction, answers):
  gt = {"answers": [{"answer": a, "answer_id": i + 1} for i, a in enumerate(answers)]}
  return PortedVQAEval(version).question_accuracy(gt, prediction)


# ------------------------------------------------------------------ adversarial cases
WORDS = [
    "red", "Red", "RED", "dog", "dogs", "yes", "Yes", "no", "No", "two", "Two", "TWO", "2",
    "none", "None", "zero", "0", "one", "1", "ten", "10", "eleven", "11", "a", "A", "an",
    "the", "The", "THE", "dont", "don't", "isnt", "Im", "im", "I'm", "Ive", "youre", "wont",
    "cant", "let's", "oclock", "o'clock", "somebody'd", "y'allll", "hot-dog", "hot dog",
    "hotdog", "1,000", "1000", "3.14", "5.", ".5", "5.0", "10:30", "u.s.", "st.", "e.g.",
    "t-shirt", "(left)", "[right]", "\"stop\"", "?", "!", "...", "café", "Ünïcode",
]
PUNCT_CHARS = PUNCT + [".", "'", ":", "&", "*", "#"]
SPACES = [" ", "  ", "\n", "\t", " \n", "\t ", "\r", "\u00a0"]


def _token(rng):
  r = rng.random()
  if r < 0.70:
    return rng.choice(WORDS)
  if r < 0.85:
    return rng.choice(PUNCT_CHARS) * rng.choice([1, 1, 2])
  if r < 0.95:  # digits with periods / commas around them
    return rng.choice(["", "."]) + str(rng.randint(0, 99)) + rng.choice(["", ".", ",", ",0", ".5"])
  return rng.choice(WORDS) + rng.choice(PUNCT_CHARS) + rng.choice(WORDS)


def random_answer(rng):
  if rng.random() < 0.05:
    return rng.choice(["", " ", "\n", "\t"])
  parts = [_token(rng) for _ in range(rng.choice([1, 1, 1, 2, 2, 3, 4]))]
  text = ""
  for p in parts:
    text += p + (rng.choice(SPACES) if rng.random() < 0.8 else "")
  if rng.random() < 0.3:
    text = rng.choice(SPACES) + text
  if rng.random() < 0.3:
    text += rng.choice([".", "?", "!", " .", ".\n", "\t"])
  return text


def variant_of(rng, answer):
  """An answer that normalizes the same or almost: case, spacing, articles, periods."""
  ops = [lambda s: s.upper(), lambda s: s.lower(), lambda s: s.title(),
         lambda s: "the " + s, lambda s: "a " + s, lambda s: s + ".", lambda s: " " + s + "\n",
         lambda s: s.replace(" ", "\t"), lambda s: s.replace("two", "2"),
         lambda s: s.replace("2", "two"), lambda s: s.replace("'", ""),
         lambda s: s.replace("-", " "), lambda s: s.replace(" ", "-"), lambda s: s + "!"]
  for _ in range(rng.choice([0, 1, 1, 2])):
    answer = rng.choice(ops)(answer)
  return answer


def random_case(rng):
  """(prediction, 10 answers), mixing all-agree, near-agree and disagreeing answer sets."""
  base = random_answer(rng)
  mode = rng.random()
  if mode < 0.30:  # all ten identical (the official script's raw-comparison branch)
    answers = [base] * 10
  elif mode < 0.55:  # identical after normalization, or nearly
    answers = [variant_of(rng, base) for _ in range(10)]
  elif mode < 0.85:  # a few distinct answers with repeats
    pool = [base] + [rng.choice([variant_of(rng, base), random_answer(rng)]) for _ in range(2)]
    answers = [rng.choice(pool) for _ in range(10)]
  else:  # anything, sometimes fewer than ten
    answers = [random_answer(rng) for _ in range(rng.choice([1, 3, 10]))]
  r = rng.random()
  if r < 0.45:
    prediction = variant_of(rng, rng.choice(answers))
  elif r < 0.75:
    prediction = rng.choice(answers)
  else:
    prediction = random_answer(rng)
  return prediction, answers


CASES = 4000
VERSION_OF = {"official": "2021", "official_2016": "2016", "openflamingo": "openflamingo"}


def _cases():
  rng = random.Random(17)
  return [random_case(rng) for _ in range(CASES)]


@pytest.mark.parametrize("variant", list(VERSION_OF))
def test_matches_the_ported_script_on_adversarial_cases(variant):
  cases = _cases()
  expected = [ported(VERSION_OF[variant], p, a) for p, a in cases]
  got = [vqa_normalize.vqa_accuracy(p, a, variant=variant) for p, a in cases]
  diffs = [(c, e, g) for c, e, g in zip(cases, expected, got) if e != g]
  assert not diffs, f"{len(diffs)} of {len(cases)} differ, e.g. {diffs[:5]}"
  # The cases exercise every branch and every score level.
  all_agree = sum(len(set(a)) == 1 and len(a) == 10 for _, a in cases)
  assert all_agree > 1000 and CASES - all_agree > 1500
  # (2016: raw references rarely equal a normalized prediction, so fewer full scores.)
  floor = 20 if variant == "official_2016" else 300
  assert sum(e == 1.0 for e in expected) > floor and sum(e == 0.0 for e in expected) > floor
  assert sum(0.0 < e < 1.0 for e in expected) > floor // 2
  # The batch metric (what tasks call) is the mean of the same numbers.
  preds, answers = zip(*cases)
  assert metrics.vqa_accuracy(preds, answers, variant=variant) == pytest.approx(
      sum(expected) / len(expected), abs=1e-12)


def test_default_is_the_current_official_script():
  cases = _cases()
  got = [vqa_normalize.vqa_accuracy(p, a) for p, a in cases]
  assert got == [ported("2021", p, a) for p, a in cases]
  assert metrics.vqa_accuracy(*zip(*cases)) == pytest.approx(sum(got) / len(got), abs=1e-12)
  # The three versions really differ on these cases, so the comparison can fail.
  for version in ("2016", "openflamingo"):
    differ = sum(ported(version, p, a) != g for (p, a), g in zip(cases, got))
    assert differ > 200, (version, differ)
