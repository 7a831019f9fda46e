"""VQA answer normalization and accuracy, as in the official VQA evaluation script.

Reproduces `vqaEval.py` of GT-Vision-Lab/VQA (PythonEvaluationTools), rule for rule:

- `process_punctuation`: each character of `PUNCT` is deleted when it touches a space in
  the answer (or when the answer holds a digit-comma-digit group), else replaced by a
  space; then `PERIOD_STRIP` deletes periods that are not followed by a digit. The
  official regex `(?!<=\\d)(\\.)(?!\\d)` contains a typo (a lookahead for the literal
  text "<=d", not a lookbehind), reproduced here; it also passes `re.UNICODE` as the
  `count` argument of `sub`, so at most 32 periods are removed — reproduced too.
- `process_digit_article`: lowercases, splits on whitespace, maps number words to digits
  (`MANUAL_MAP`, "none" -> "0"), drops articles, expands contractions written without
  apostrophe (`CONTRACTIONS`, "dont" -> "don't"), joins with single spaces.
- `vqa_accuracy`: the prediction is always normalized; the references are punctuation-
  processed only when they disagree (`len(set(answers)) > 1`), as in the official script
  (the released annotations are already normalized). Accuracy = mean over the leave-one-
  out subsets of the references of min(1, matches / 3).
"""

from __future__ import annotations

import re
from typing import Sequence

CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "couldn'tve": "couldn't've", "couldnt've": "couldn't've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't",
    "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
    "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're",
    "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've",
    "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't",
    "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've", "youd": "you'd", "youd've": "you'd've",
    "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}
MANUAL_MAP = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
ARTICLES = ("a", "an", "the")
PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
PUNCT = (";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<",
         "@", "`", ",", "?", "!")
_OFFICIAL_PERIOD_COUNT = int(re.UNICODE)  # the official call sub("", text, re.UNICODE)


def process_punctuation(text: str) -> str:
  """The official `processPunctuation` (see the module docstring)."""
  out = text
  has_digit_comma = COMMA_STRIP.search(text) is not None
  for p in PUNCT:
    if (p + " " in text or " " + p in text) or has_digit_comma:
      out = out.replace(p, "")
    else:
      out = out.replace(p, " ")
  return PERIOD_STRIP.sub("", out, count=_OFFICIAL_PERIOD_COUNT)


def process_digit_article(text: str) -> str:
  """The official `processDigitArticle`: number words -> digits, no articles, contractions."""
  words = [MANUAL_MAP.get(w, w) for w in text.lower().split()]
  words = [w for w in words if w not in ARTICLES]
  return " ".join(CONTRACTIONS.get(w, w) for w in words)


def _clean_whitespace(text: str) -> str:
  return text.replace("\n", " ").replace("\t", " ").strip()


def normalize_answer(text: str) -> str:
  """What the official script does to a predicted answer before matching."""
  return process_digit_article(process_punctuation(_clean_whitespace(text)))


def vqa_accuracy(prediction: str, answers: Sequence[str], *,
                 normalize_references: bool = False) -> float:
  """VQA accuracy of one prediction against the human answers (10 in VQAv2), in [0, 1].

  Args:
    prediction: the model's (post-processed) answer.
    answers: the annotators' answers, in dataset order.
    normalize_references: False = the official script (references only punctuation-
      processed, and only when they disagree). True = also apply the full normalization
      to every reference, as OpenFlamingo's copy does; use it for datasets whose answers
      are raw (VizWiz, TextVQA, hand-made sets).

  Returns:
    mean over i of min(1, #{j != i : answers[j] == prediction} / 3).
  """
  if not answers:
    raise ValueError(f"vqa_accuracy needs at least one reference answer; got {answers!r}")
  pred = normalize_answer(prediction)
  refs = [_clean_whitespace(a) for a in answers]
  if normalize_references:
    refs = [process_digit_article(process_punctuation(a)) for a in refs]
  elif len(set(refs)) > 1:
    refs = [process_punctuation(a) for a in refs]
  total = 0.0
  for i in range(len(refs)):
    matches = sum(1 for j, a in enumerate(refs) if j != i and a == pred)
    total += min(1.0, matches / 3.0)
  return total / len(refs)
