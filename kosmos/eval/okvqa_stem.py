"""OK-VQA answer stemming without downloaded data: a rule-based stand-in for OpenFlamingo's.

OK-VQA v1.1 annotations hold stemmed answers ("riding" -> "ride", "jeans" -> "jean"), so
OpenFlamingo stems each prediction (open_flamingo/eval/ok_vqa_utils.py, `OKVQAStemmer`):
nltk `word_tokenize`, nltk `pos_tag`; per token, its table of manual matches, else a
WordNet verb lemma for words ending in "ing", else `inflection.singularize` for tokens
tagged NNS/NNPS; tokens joined by spaces. That needs nltk's downloaded data (punkt,
averaged_perceptron_tagger, wordnet), which kosmos cannot fetch at run time, so `stem`
replaces each model by rules:

    tokenizer   the Treebank rules nltk applies: punctuation split off (commas between
                digits and colons before digits kept, a final period split off), clitics
                "'s 'm 'd 'll 're 've n't" split off, "cannot" -> "can not", double quotes
                -> `` and ''.
    "-ing"      WordNet's verb lemma, guessed: known irregulars (lying -> lie), no change
                for words whose stem has no vowel (king, bring, thing) or that are not
                verbs (something, during, lightning), a doubled final consonant undoubled
                (running -> run; not l/s/z: falling -> fall), "e" restored after a
                one-syllable consonant-vowel-consonant stem (making -> make), else the stem.
                WordNet returns the SHORTEST verb among word, stem+"e", stem, so where both
                are verbs it says "rid" for "riding"; the manual table fixes the frequent
                ones and is applied first, as upstream.
    plural nouns  no tagger: a lowercase alphabetic token of 4+ letters ending in "s" (not
                "ss", "us", "is", "ous") and not in a list of common non-plural words, or an
                irregular plural (men, children, people ...), is taken as NNS and singularized
                with inflection's rules (irregulars, uncountables, -ies -> -y, -ves -> -f/-fe,
                -(x|ch|ss|sh)es -> drop "es", -oes -> -o, else drop "s").

Agreement with OpenFlamingo is therefore approximate where the tagger or WordNet would
decide (a plural proper noun, an -ing noun that is also a rare verb); both leave most short
answers unchanged, and the VQA metric's own normalization runs after this.
"""

from __future__ import annotations

import re

# OpenFlamingo's manual matches (ok_vqa_utils.py `_MANUAL_MATCHES`): words its automatic
# rules would miss or mangle, as found in OK-VQA's raw vs stemmed answers.
MANUAL_MATCHES = {
    "police": "police", "las": "las", "vegas": "vegas", "yes": "yes", "jeans": "jean",
    "hell's": "hell", "domino's": "domino", "morning": "morn", "clothes": "cloth",
    "are": "are", "riding": "ride", "leaves": "leaf", "dangerous": "danger",
    "clothing": "cloth", "texting": "text", "kiting": "kite", "firefighters": "firefight",
    "ties": "tie", "married": "married", "teething": "teeth", "gloves": "glove",
    "tennis": "tennis", "dining": "dine", "directions": "direct", "waves": "wave",
    "christmas": "christmas", "drives": "drive", "pudding": "pud", "coding": "code",
    "plating": "plate", "quantas": "quanta", "hornes": "horn", "graves": "grave",
    "mating": "mate", "paned": "pane", "alertness": "alert", "sunbathing": "sunbath",
    "tenning": "ten", "wetness": "wet", "urinating": "urine", "sickness": "sick",
    "braves": "brave", "firefighting": "firefight", "lenses": "lens",
    "reflections": "reflect", "backpackers": "backpack", "eatting": "eat",
    "designers": "design", "curiousity": "curious", "playfulness": "play",
    "blindness": "blind", "hawke": "hawk", "tomatoe": "tomato", "rodeoing": "rodeo",
    "brightness": "bright", "circuses": "circus", "skateboarders": "skateboard",
    "staring": "stare", "electronics": "electron", "electicity": "elect",
    "mountainous": "mountain", "socializing": "social", "hamburgers": "hamburg",
    "caves": "cave", "transitions": "transit", "wading": "wade", "creame": "cream",
    "toileting": "toilet", "sautee": "saute", "buildings": "build",
    "belongings": "belong", "stockings": "stock", "walle": "wall", "cumulis": "cumuli",
    "travelers": "travel", "conducter": "conduct", "browsing": "brows",
    "pooping": "poop", "haircutting": "haircut", "toppings": "top", "hearding": "heard",
    "sunblocker": "sunblock", "bases": "base", "markings": "mark", "mopeds": "mope",
    "kindergartener": "kindergarten", "pies": "pie", "scrapbooking": "scrapbook",
    "couponing": "coupon", "meetings": "meet", "elevators": "elev", "lowes": "low",
    "men's": "men", "childrens": "children", "shelves": "shelve", "paintings": "paint",
    "raines": "rain", "paring": "pare", "expressions": "express", "routes": "rout",
    "pease": "peas", "vastness": "vast", "awning": "awn", "boy's": "boy",
    "drunkenness": "drunken", "teasing": "teas", "conferences": "confer",
    "ripeness": "ripe", "suspenders": "suspend", "earnings": "earn",
    "reporters": "report", "kid's": "kid", "containers": "contain", "corgie": "corgi",
    "porche": "porch", "microwaves": "microwave", "batter's": "batter",
    "sadness": "sad", "apartments": "apart", "oxygenize": "oxygen",
    "striping": "stripe", "purring": "pure", "professionals": "profession",
    "piping": "pipe", "farmer's": "farmer", "potatoe": "potato", "emirates": "emir",
    "womens": "women", "veteran's": "veteran", "wilderness": "wilder",
    "propellers": "propel", "alpes": "alp", "charioteering": "chariot",
    "swining": "swine", "illness": "ill", "crepte": "crept", "adhesives": "adhesive",
    "regent's": "regent", "decorations": "decor", "rabbies": "rabbi",
    "overseas": "oversea", "travellers": "travel", "casings": "case",
    "smugness": "smug", "doves": "dove", "nationals": "nation", "mustange": "mustang",
    "ringe": "ring", "gondoliere": "gondolier", "vacationing": "vacate",
    "reminders": "remind", "baldness": "bald", "settings": "set", "glaced": "glace",
    "coniferous": "conifer", "revelations": "revel", "personals": "person",
    "daughter's": "daughter", "badness": "bad", "projections": "project",
    "polarizing": "polar", "vandalizers": "vandal", "minerals": "miner",
    "protesters": "protest", "controllers": "control", "weddings": "wed",
    "sometimes": "sometime", "earing": "ear",
}

VOWELS = "aeiou"
_ING_IRREGULAR = {"lying": "lie", "dying": "die", "tying": "tie", "vying": "vie"}
_ING_NOT_VERBS = frozenset({"something", "nothing", "anything", "everything", "during",
                            "lightning", "morning", "evening", "pudding"})
_NOT_PLURAL = frozenset({
    "yes", "this", "his", "hers", "its", "ours", "yours", "theirs", "was", "has", "does",
    "goes", "always", "perhaps", "across", "towards", "afterwards", "upstairs",
    "downstairs", "outdoors", "indoors", "whereas", "unless", "news", "series",
    "species", "texas", "kansas", "dallas", "paris", "athens", "christmas", "physics",
    "mathematics", "economics", "politics", "athletics", "gymnastics", "aerobics"})
_IRREGULAR_PLURALS = {"people": "person", "men": "man", "women": "woman",
                      "children": "child", "humans": "human", "moves": "move",
                      "sexes": "sex", "kine": "cow", "zombies": "zombie"}
_UNCOUNTABLE = frozenset({"equipment", "fish", "information", "jeans", "money", "rice",
                          "series", "sheep", "species", "police"})
_SINGULAR_RULES = [  # (suffix pattern, replacement), first match wins
    (r"(quiz)zes$", r"\1"), (r"(matr)ices$", r"\1ix"), (r"(vert|ind)ices$", r"\1ex"),
    (r"^(ox)en", r"\1"), (r"(alias|status)(es)?$", r"\1"), (r"(octop|vir)(us|i)$", r"\1us"),
    (r"^(a)x[ie]s$", r"\1xis"), (r"(cris|test)(is|es)$", r"\1is"), (r"(shoe)s$", r"\1"),
    (r"(o)es$", r"\1"), (r"(bus)(es)?$", r"\1"), (r"(m|l)ice$", r"\1ouse"),
    (r"(x|ch|ss|sh)es$", r"\1"), (r"(m)ovies$", r"\1ovie"), (r"(s)eries$", r"\1eries"),
    (r"([^aeiouy]|qu)ies$", r"\1y"), (r"([lr])ves$", r"\1f"), (r"(tive)s$", r"\1"),
    (r"(hive)s$", r"\1"), (r"([^f])ves$", r"\1fe"), (r"(t)he(sis|ses)$", r"\1hesis"),
    (r"(n)ews$", r"\1ews"), (r"(ss)$", r"\1"), (r"s$", ""),
]


def tokenize(text: str) -> list[str]:
  """Treebank-style word tokens (see the module docstring)."""
  t = re.sub(r'^"', "`` ", text)
  t = re.sub(r'([ (\[{<])"', r"\1 `` ", t)
  t = t.replace('"', " '' ")
  t = re.sub(r"([?!;()\[\]{}<>&])", r" \1 ", t)
  t = re.sub(r":(?!\d)", " : ", t)
  t = re.sub(r",(?!\d)|(?<!\d),", " , ", t)
  t = re.sub(r"([^.])(\.)([\]\)}>\"']*)\s*$", r"\1 \2\3 ", t)
  t = re.sub(r"(?i)\b(can)(not)\b", r"\1 \2", t)
  t = re.sub(r"(?i)([^' ])('s|'m|'d|'ll|'re|'ve|n't)\b", r"\1 \2", t)
  return t.split()


def _syllables(word: str) -> int:
  return len(re.findall(r"[aeiouy]+", word))


def lemmatize_ing(word: str) -> str:
  """The verb lemma of an "-ing" word, by rule (module docstring)."""
  if word in _ING_IRREGULAR:
    return _ING_IRREGULAR[word]
  stem = word[:-3]
  if word in _ING_NOT_VERBS or len(stem) < 2 or not re.search("[aeiouy]", stem):
    return word
  if len(stem) >= 3 and stem[-1] == stem[-2] and stem[-1] not in VOWELS + "lsz":
    return stem[:-1]
  if (_syllables(stem) == 1 and re.search(r"(^|[^aeiou])[aeiou][^aeiouwxy]$", stem)):
    return stem + "e"
  return stem


def is_plural_noun(word: str) -> bool:
  """Stand-in for the NNS/NNPS tag (module docstring)."""
  if word in _IRREGULAR_PLURALS:
    return True
  return (len(word) >= 4 and word.isalpha() and word.islower() and word.endswith("s")
          and not word.endswith(("ss", "us", "is", "ous")) and word not in _NOT_PLURAL)


def singularize(word: str) -> str:
  """inflection.singularize's rules: irregulars, uncountables, suffix rules."""
  if word in _IRREGULAR_PLURALS:
    return _IRREGULAR_PLURALS[word]
  if word in _UNCOUNTABLE:
    return word
  for pattern, replacement in _SINGULAR_RULES:
    if re.search(pattern, word):
      return re.sub(pattern, replacement, word)
  return word


def stem(text: str) -> str:
  """An answer as OpenFlamingo's OK-VQA stemmer would return it (approximately)."""
  out = []
  for word in tokenize(text):
    if word in MANUAL_MATCHES:
      word = MANUAL_MATCHES[word]
    elif word.endswith("ing"):
      word = lemmatize_ing(word)
    elif is_plural_noun(word):
      word = singularize(word)
    out.append(word)
  return " ".join(out)
