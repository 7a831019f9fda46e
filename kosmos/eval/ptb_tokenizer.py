"""Caption tokenization for CIDEr: pycocoevalcap's PTBTokenizer, with a pure-Python twin.

pycocoevalcap tokenizes captions by running Stanford CoreNLP 3.4.1's PTBTokenizer
(`-preserveLines -lowerCase`, a Java process) and then dropping the tokens in
`PUNCTUATIONS`. `tokenize` uses that when `java` is on PATH, else `ptb_tokenize`, a
Python re-implementation of the lexer rules that COCO-style captions exercise:

- whitespace splits; curly quotes and apostrophes become ASCII, "…" becomes "...",
  en/em dashes and runs of 2+ hyphens become "--";
- words keep inner hyphens, periods, slashes, "&", "@", "_" and apostrophes
  ("black-and-white", "u.s", "cat/dog", "at&t", "o'clock"), and digit-comma/colon-digit
  groups ("5,000", "10:30"); other punctuation is its own token;
- clitics split off: n't 's 're 've 'll 'd 'm ("isn't" -> "is n't", "can't" -> "ca n't"),
  a trailing apostrophe ("dogs'" -> "dogs '"), "cannot" -> "can not",
  "gonna" -> "gon na" (also gotta, wanna, lemme, gimme), "'tis" -> "'t is", "y'all" -> "y' all";
- a final period splits from its word, except after abbreviations, acronyms ("u.s.")
  and single letters; before a capitalized word the abbreviation classes behave as the
  Stanford lexer does (some take an extra "." token, single letters split);
- mixed fractions ("1 1/2") are one token joined by a no-break space;
- "?!"-style runs stay one token; brackets become -lrb- -rrb- -lsb- -rsb- -lcb- -rcb-
  (after lowercasing these are NOT in pycocoevalcap's removal list, so they stay);
- everything is lowercased, then `PUNCTUATIONS` are dropped.

Outside this scope (URLs, emoticons, SGML, rare abbreviations) the twin may differ from
Stanford's lexer; tests/test_eval_metrics.py compares both on real-style captions.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from typing import Mapping, Sequence

# pycocoevalcap.tokenizer.ptbtokenizer.PUNCTUATIONS (the removal list), verbatim.
PUNCTUATIONS = frozenset(["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-",
                          ".", "?", "!", ",", ":", "-", "--", "...", ";"])

# Abbreviation classes of Stanford's PTBLexer (case-insensitive), as far as captions go.
# ABBREV1: keep the period; before a capitalized word an extra "." token follows.
_ABBREV1 = frozenset("""
jan feb mar apr jun jul aug sep sept oct nov dec mon tue tues wed thu thurs fri
ala ariz az ark calif colo conn ct dak del fla ga ill ind kan kans ky la mass md mich
minn miss mo mont neb nev okla ore pa penn tenn tex va vt wash wis wisc wyo
inc co cos corp ltd plc bancorp bhd assn univ intl sys tel est ext sq
jr sr bros blvd rd esq etc al seq""".split())
# ABBREV2/4: keep the period, no sentence boundary assumed.
_ABBREV2 = frozenset("""
mr mrs ms messrs dr drs prof profs sen sens rep reps atty attys lt col gen gov govs adm
rev maj sgt cpl pvt capt st ste ave pres lieut hon brig cmdr comdr pfc spc supt supts det
mme mmes mlle mlles mt ft vs fig figs pp vol vols dept""".split())
# Kept with their period only when a lower-case word follows ("bldg. next").
_ABBREV3 = frozenset("ca bldg prop art op".split())

_CLITIC = re.compile(r"^(.*[^\W\d_]|.*\d)('(?:s|re|ve|ll|d|m))$", re.IGNORECASE)
_NEG = re.compile(r"^(.*[^\W_])(n't)$", re.IGNORECASE)
_TIME_UNIT = re.compile(r"^(\d+(?::\d+)+)([^\W\d_]+)$")  # "5:30pm" -> "5:30" "pm"
_SPLIT_WORDS = {"cannot": 3, "gonna": 3, "gotta": 3, "wanna": 3, "lemme": 3, "gimme": 3}
_BRACKETS = {"(": "-LRB-", ")": "-RRB-", "[": "-LSB-", "]": "-RSB-", "{": "-LCB-",
             "}": "-RCB-"}
_UNICODE = str.maketrans({"\u2019": "'", "\u2018": "'", "\u201a": "'", "\u201b": "'",
                          "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u00a0": " ",
                          "\u2026": "...", "\u2013": "--", "\u2014": "--"})

# One token at the start of the remaining text, tried in order.
_WORD = (r"[^\W_](?:[\w]|[-./&@_](?=[^\W_])|(?<=\d)[,:](?=\d)|'(?=[^\W_]))*")
_LEXER = re.compile("|".join([
    r"(?P<url>https?://[^\s\"<>|(){}]*[^\s\"<>|.!?(){},-])",
    r"(?P<lead>(?i:'t(?=(?:is|was)(?![\w']))|'(?:em|n'|\d\ds|s|re|ve|ll|d|m)(?![\w'])))",
    r"(?P<emoticon>[:;]-?[()pP](?![\w]))",
    r"(?P<tag>[#@][^\W\d_]\w*)",
    r"(?P<num>\.\d+)",
    r"(?P<fraction>\d+ \d+/\d+(?![\w/]))",
    r"(?P<word>" + _WORD + ")",
    r"(?P<ellipsis>\.\.\.+)",
    r"(?P<dashes>-{2,})",
    r"(?P<excl>[?!]+)",
    r"(?P<sgml></?[A-Za-z][^\s<>]*>)",
    r"(?P<other>.)",
]), re.DOTALL)


def _split_word(word: str) -> list[str]:
  """Splits clitics and fused words off one lexed word."""
  low = word.lower()
  m = _TIME_UNIT.match(word)
  if m:
    return [m.group(1), m.group(2)]
  if low in _SPLIT_WORDS:
    cut = _SPLIT_WORDS[low]
    return [word[:cut], word[cut:]]
  if low == "y'all":
    return [word[:2], word[2:]]
  if "'n'" in low and not low.startswith("'n'"):
    i = low.index("'n'")
    return _split_word(word[:i]) + [word[i:i + 3]] + (
        _split_word(word[i + 3:]) if word[i + 3:] else [])
  m = _NEG.match(word)
  if m and len(m.group(1)) >= 1:
    return _split_word(m.group(1)) + [m.group(2)]
  m = _CLITIC.match(word)
  if m:
    return _split_word(m.group(1)) + [m.group(2)]
  return [word]


def _starts_upper(rest: str) -> bool:
  rest = rest.lstrip()
  return bool(rest) and rest[0].isupper()


def _starts_lower(rest: str) -> bool:
  rest = rest.lstrip()
  return bool(rest) and (rest[0].islower() or rest[0].isdigit())


def _lex(text: str) -> list[str]:
  """Stanford-style tokens of one caption (original case)."""
  text = text.translate(_UNICODE)
  tokens: list[str] = []
  i, n = 0, len(text)
  open_ctx = True  # at a position where a quote would open
  while i < n:
    if text[i].isspace():
      i += 1
      open_ctx = True
      continue
    m = _LEXER.match(text, i)
    kind, tok = m.lastgroup, m.group()
    end = m.end()
    if kind == "word":
      rest = text[end + 1:]
      extra_period = False
      if text.startswith(".", end) and not text.startswith("..", end):
        low = tok.lower()
        if len(tok) == 1 and tok.isalpha():
          keep = not _starts_upper(rest)
        elif low in _ABBREV1 or re.fullmatch(r"[^\W\d_](?:\.[^\W\d_])+", low):
          keep = True
          extra_period = _starts_upper(rest)
        else:
          keep = low in _ABBREV2 or (low in _ABBREV3 and _starts_lower(rest))
        if keep:
          tok, end = tok + ".", end + 1
      if tok.endswith("."):
        parts = _split_word(tok[:-1])
        parts[-1] += "."
      else:
        parts = _split_word(tok)
      tokens.extend(parts + (["."] if extra_period else []))
    elif kind == "fraction":
      tokens.append(tok.replace(" ", "\u00a0"))  # "1 1/2" is one token, as in Stanford's
    elif kind == "emoticon":
      tokens.append(tok[:-1] + _BRACKETS.get(tok[-1], tok[-1]))
    elif kind == "dashes":
      tokens.append("--")
    elif kind == "ellipsis":
      tokens.append("...")
    elif tok == '"':
      opens = open_ctx and end < n and not text[end].isspace()
      tokens.append("``" if opens else "''")
    elif tok == "'":
      opens = open_ctx and end < n and not text[end].isspace()
      tokens.append("`" if opens else "'")
    elif tok in _BRACKETS:
      tokens.append(_BRACKETS[tok])
    else:
      tokens.append(tok)
    open_ctx = kind == "other" and tok in "([{\"'`"
    i = end
  return tokens


def ptb_tokenize(caption: str) -> str:
  """One caption as pycocoevalcap's PTBTokenizer returns it (pure Python)."""
  tokens = [t.lower() for t in _lex(caption.replace("\n", " "))]
  return " ".join(t for t in tokens if t not in PUNCTUATIONS)


def java_available() -> bool:
  return shutil.which("java") is not None


def java_tokenize(captions: Sequence[str]) -> list[str]:
  """Captions through pycocoevalcap's Java PTBTokenizer (needs `java` on PATH)."""
  from pycocoevalcap.tokenizer import ptbtokenizer  # pylint: disable=import-outside-toplevel
  if not java_available():
    raise RuntimeError("java is not on PATH; install a JRE (default-jre-headless) or use "
                       "ptb_tokenize")
  jar_dir = os.path.dirname(os.path.abspath(ptbtokenizer.__file__))
  text = "\n".join(c.replace("\n", " ") for c in captions)
  with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as f:
    f.write(text)
    path = f.name
  try:
    out = subprocess.run(
        ["java", "-cp", ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR,
         "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase", path],
        cwd=jar_dir, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, check=True)
  finally:
    os.remove(path)
  lines = out.stdout.decode("utf-8").split("\n")
  lines += [""] * (len(captions) - len(lines))  # trailing empty captions print no line
  return [" ".join(w for w in line.rstrip().split(" ") if w not in PUNCTUATIONS)
          for line, _ in zip(lines, captions)]


def tokenize(captions: Mapping[str, Sequence[str]], backend: str = "auto"
             ) -> dict[str, list[str]]:
  """{key: [caption, ...]} -> {key: [tokenized caption, ...]}, like PTBTokenizer.tokenize.

  Args:
    captions: raw captions per image (plain strings, not pycocoevalcap's {"caption"} dicts).
    backend: "java" (Stanford jar), "python" (`ptb_tokenize`) or "auto" (java if on PATH).
  """
  if backend not in ("auto", "java", "python"):
    raise ValueError(f"tokenizer backend {backend!r} is not one of auto, java, python")
  use_java = backend == "java" or (backend == "auto" and java_available())
  keys = [k for k, caps in captions.items() for _ in caps]
  flat = [c for caps in captions.values() for c in caps]
  out_flat = java_tokenize(flat) if use_java else [ptb_tokenize(c) for c in flat]
  out: dict[str, list[str]] = {k: [] for k in captions}
  for k, t in zip(keys, out_flat):
    out[k].append(t)
  return out
