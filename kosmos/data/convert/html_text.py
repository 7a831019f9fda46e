"""Visible text and images of an HTML page in reading order, with the stdlib html.parser.

`extract(markup)` returns the page title and a list of items: ("text", paragraphs joined
by a blank line) and ("image", {attribute: value}) for each visible <img>. Dropped with
their content: script, style, noscript, nav, header, footer, aside, form, template, head,
svg, iframe, object, canvas, select, textarea, button, and elements that are hidden
(`hidden` attribute, aria-hidden="true", inline style display:none / visibility:hidden).
Block elements end a paragraph, <br> ends a line, table cells are separated by a space;
whitespace runs collapse to one space (also inside <pre>). An image inside a paragraph
splits it in two.
"""

from __future__ import annotations

import codecs
import html.parser
import re
from typing import Any

SKIP = frozenset("script style noscript nav header footer aside form template head title svg "
                 "iframe object canvas select textarea button".split())
BLOCK = frozenset("address article blockquote body caption center dd details dialog dir div dl "
                  "dt fieldset figcaption figure h1 h2 h3 h4 h5 h6 hr html legend li main menu "
                  "ol p pre section summary table tbody tfoot thead tr ul".split())
CELL = frozenset(("td", "th"))  # separated by a space, not a paragraph break
VOID = frozenset("area base br col embed hr img input keygen link meta param source track "
                 "wbr".split())
_HIDDEN_STYLE = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden", re.I)
_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_\-:.]+)""", re.I)


def _hidden(attrs: dict[str, str]) -> bool:
  return ("hidden" in attrs or attrs.get("aria-hidden", "").strip().lower() == "true"
          or bool(_HIDDEN_STYLE.search(attrs.get("style", ""))))


class _Extractor(html.parser.HTMLParser):
  """Collects events: ("text", str), ("line", None), ("para", None), ("image", attrs)."""

  def __init__(self):
    super().__init__(convert_charrefs=True)
    self.events: list[tuple[str, Any]] = []
    self.stack: list[tuple[str, bool]] = []  # (tag, hides its content)
    self.skipping = 0
    self.title: list[str] = []

  def _open(self, tag: str, attrs: dict[str, str]) -> None:
    if tag == "br":
      if not self.skipping:
        self.events.append(("line", None))
    elif tag == "img":
      if not self.skipping and not _hidden(attrs):
        self.events.append(("image", attrs))
    elif tag in BLOCK and not self.skipping:
      self.events.append(("para", None))
    elif tag in CELL and not self.skipping:
      self.events.append(("text", " "))

  def handle_starttag(self, tag: str, attr_list: list[tuple[str, str | None]]) -> None:
    attrs = {k.lower(): (v or "") for k, v in attr_list}
    if tag == "body":  # </head> may be omitted
      while any(t == "head" for t, _ in self.stack):
        self.handle_endtag("head")
    self._open(tag, attrs)
    if tag in VOID:
      return
    hides = tag in SKIP or _hidden(attrs)
    self.stack.append((tag, hides))
    self.skipping += hides

  def handle_startendtag(self, tag: str, attr_list: list[tuple[str, str | None]]) -> None:
    attrs = {k.lower(): (v or "") for k, v in attr_list}
    self._open(tag, attrs)

  def handle_endtag(self, tag: str) -> None:
    if any(t == tag for t, _ in self.stack):
      while self.stack:
        open_tag, hides = self.stack.pop()
        self.skipping -= hides
        if open_tag == tag:
          break
    if tag in BLOCK and not self.skipping:
      self.events.append(("para", None))

  def handle_data(self, data: str) -> None:
    if self.stack and self.stack[-1][0] == "title":
      self.title.append(data)
    if not self.skipping:
      self.events.append(("text", data))


def extract(markup: str) -> tuple[str, list[tuple[str, Any]]]:
  """(title, items) of a page; items alternate text chunks and image attribute dicts."""
  parser = _Extractor()
  parser.feed(markup)
  parser.close()
  items: list[tuple[str, Any]] = []
  paragraphs: list[str] = []
  lines: list[str] = []
  words: list[str] = []

  def end_line() -> None:
    line = " ".join("".join(words).split())
    words.clear()
    if line:
      lines.append(line)

  def end_paragraph() -> None:
    end_line()
    if lines:
      paragraphs.append("\n".join(lines))
      lines.clear()

  for kind, value in parser.events:
    if kind == "text":
      words.append(value)
    elif kind == "line":
      end_line()
    elif kind == "para":
      end_paragraph()
    else:
      end_paragraph()
      if paragraphs:
        items.append(("text", "\n\n".join(paragraphs)))
        paragraphs.clear()
      items.append(("image", value))
  end_paragraph()
  if paragraphs:
    items.append(("text", "\n\n".join(paragraphs)))
  return " ".join("".join(parser.title).split()), items


def srcset_best(srcset: str) -> str | None:
  """The URL of the largest candidate of a srcset ('a.jpg 480w, b.jpg 2x'), or None."""
  best, best_score = None, -1.0
  rest = srcset
  while rest.strip():
    rest = rest.lstrip(" \t\n\r\f,")
    match = re.match(r"(\S+)", rest)
    if not match:
      break
    url, rest = match.group(1), rest[match.end():]
    descriptor = ""
    if url.endswith(","):
      url = url.rstrip(",")
    else:
      descriptor, _, rest = rest.partition(",")
    score = 1.0  # a width ("480w") or a density ("2x"); a page uses one kind per srcset
    for token in descriptor.split():
      try:
        if token[-1:] in ("w", "x") and float(token[:-1]) > 0:
          score = float(token[:-1])
      except ValueError:
        pass
    if url and score > best_score:
      best, best_score = url, score
  return best


def decode_page(data: bytes, fallback: str | None) -> str | None:
  """Text of a page: BOM, else <meta charset>, else strict UTF-8, else `fallback`, else None."""
  for bom, codec in ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"),
                     (codecs.BOM_UTF16_BE, "utf-16-be")):
    if data.startswith(bom):
      return data[len(bom):].decode(codec, errors="replace")
  match = _CHARSET.search(data[:8192])
  if match:
    try:
      return data.decode(match.group(1).decode("ascii"), errors="replace")
    except LookupError:
      pass  # an unknown charset name: fall through to UTF-8
  try:
    return data.decode("utf-8")
  except UnicodeDecodeError:
    return data.decode(fallback, errors="replace") if fallback else None
