"""VQA answer normalization and accuracy: the official VQA evaluation script and two
variants, selectable by name.

Rules shared by every variant, from `vqaEval.py` of GT-Vision-Lab/VQA
(PythonEvaluationTools/vqaEvaluation), reproduced rule for rule:

- `process_punctuation`: each character of `PUNCT` is deleted when it touches a space in
  the answer (or when the answer holds a digit-comma-digit group), else replaced by a
  space; then `PERIOD_STRIP` deletes periods that are not followed by a digit. The
  official regex `(?!<=\\d)(\\.)(?!\\d)` contains a typo (a lookahead for the literal
  text "<=d", not a lookbehind), reproduced here; it also passes `re.UNICODE` as the
  `count` argument of `sub`, so at most 32 periods are removed -- reproduced too.
- `process_digit_article`: lowercases, splits on whitespace, maps number words to digits
  (`MANUAL_MAP`, "none" -> "0"), drops articles, expands contractions written without
  apostrophe (`CONTRACTIONS`; its cased keys such as "Im" never match after lowercasing,
  as upstream), joins with single spaces.
- accuracy = mean over the leave-one-out subsets of the references of min(1, matches / 3)
  (upstream drops the reference dict equal to the current one; VQA answer dicts carry a
  unique answer_id, so exactly that one reference is left out).

The variants (`VARIANTS`) differ only in what is normalized before matching:

    official        the current script (commit "Fixed processing answers bug", 2021):
                    prediction and references have "\\n"/"\\t" replaced by spaces and are
                    stripped; if the references then disagree (`len(set(refs)) > 1`), BOTH
                    are punctuation- and digit/article-processed; if all references agree,
                    NEITHER is, so the raw prediction must equal the raw reference ("two"
                    scores 0 against ten "2", "red." 0 against ten "red"; see
                    `kosmos.eval.metrics.postprocess_vqa`, which drops the trailing period).
    official_2016   the script before that fix (2016-2021): the prediction is always
                    whitespace-cleaned and fully processed; references are never
                    whitespace-cleaned, and only punctuation-processed, and only when they
                    disagree ("two" scores 1 against ten "2", 0 against ten "two").
    openflamingo    OpenFlamingo's copy (open_flamingo/eval/vqa_metric.py): prediction and
                    every reference are always whitespace-cleaned and fully processed.

Python 3 semantics throughout: `\\d` also matches non-ASCII digits and `str.lower()` is
Unicode lowercasing; the official script is Python 2, where the same patterns on the
(unicode) json answers match ASCII digits only. The two agree on ASCII answers.
"""

from __future__ import annotations

import re
from typing import Sequence

OFFICIAL, OFFICIAL_2016, OPENFLAMINGO = "official", "official_2016", "openflamingo"
VARIANTS = (OFFICIAL, OFFICIAL_2016, OPENFLAMINGO)

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


def clean_whitespace(text: str) -> str:
  """Newlines and tabs -> spaces, then strip (the first step of the official script)."""
  return text.replace("\n", " ").replace("\t", " ").strip()


def normalize_answer(text: str) -> str:
  """Whitespace cleaning, punctuation and digit/article processing: what the official script
  does to an answer whose references disagree (and what OpenFlamingo's copy always does)."""
  return process_digit_article(process_punctuation(clean_whitespace(text)))


def check_variant(variant: str) -> str:
  if variant not in VARIANTS:
    raise ValueError(f"unknown VQA accuracy variant {variant!r}; valid: {VARIANTS}")
  return variant


def matched_forms(prediction: str, answers: Sequence[str],
                  variant: str = OFFICIAL) -> tuple[str, list[str]]:
  """(prediction, references) as `variant` compares them (module docstring)."""
  check_variant(variant)
  if variant == OFFICIAL_2016:
    refs = list(answers)
    if len(set(refs)) > 1:
      refs = [process_punctuation(a) for a in refs]
    return normalize_answer(prediction), refs
  pred = clean_whitespace(prediction)
  refs = [clean_whitespace(a) for a in answers]
  if variant == OPENFLAMINGO or len(set(refs)) > 1:
    pred = process_digit_article(process_punctuation(pred))
    refs = [process_digit_article(process_punctuation(a)) for a in refs]
  return pred, refs


def vqa_accuracy(prediction: str, answers: Sequence[str], *, variant: str = OFFICIAL) -> float:
  """VQA accuracy of one prediction against the human answers (10 in VQAv2), in [0, 1].

  Args:
    prediction: the model's (post-processed) answer.
    answers: the annotators' answers, in dataset order.
    variant: "official" (the current official script, default), "official_2016" (the
      script before its 2021 fix) or "openflamingo" (OpenFlamingo's copy, which
      normalizes every reference; kosmos' default for the raw answers of VizWiz and
      TextVQA). See the module docstring.

  Returns:
    mean over i of min(1, #{j != i : refs[j] == pred} / 3), on the forms of `matched_forms`.
  """
  if not answers:
    raise ValueError(f"vqa_accuracy needs at least one reference answer; got {answers!r}")
  pred, refs = matched_forms(prediction, answers, variant)
  total = 0.0
  for i in range(len(refs)):
    matches = sum(1 for j, a in enumerate(refs) if j != i and a == pred)
    total += min(1.0, matches / 3.0)
  return total / len(refs)
