"""`prepare.py html`: a small saved web site with images in subdirectories."""

import base64
import importlib.util
import io
import os

from PIL import Image

from kosmos.data import records
from kosmos.data.convert import html_text, interleaved

from prepare_module import ROOT, prepare


def _image(i, fmt="PNG", size=40):
  out = io.BytesIO()
  Image.new("RGB", (size, size + 3), (i * 17 % 256, 200, 30)).save(out, format=fmt)
  return out.getvalue()


A, SMALL, BIG, DATA, ROOT_IMG, ICON, C, P1, N = (
    _image(0), _image(1, "JPEG"), _image(2, "JPEG", 64), _image(3), _image(4), _image(5, size=8),
    _image(6, "JPEG"), _image(7, "WEBP"), _image(8))
GALLERY = [_image(20 + i) for i in range(7)]

INDEX = f"""<!DOCTYPE html>
<html><head><title>Home  page</title>
<style>p {{ color: red }}</style><script>var x = "<p>no</p>";</script>
<body>
<nav><a href="/">Home</a><img src="img/logo.png"></nav>
<header>Site header</header>
<main>
<h1>Welcome</h1>
<p>First   paragraph
  with &amp; entity</p>
<img src="img/a.png" alt="a">
<p>Second<br>line <span style="display: none">secret</span><b>bold</b></p>
<script>document.write("<p>scripted</p>")</script>
<div hidden>hidden div</div><div aria-hidden="true">aria hidden</div>
<img srcset="img/small.jpg 100w, img/big.jpg 800w" src="img/small.jpg">
<p>Data image follows</p>
<img src="data:image/png;base64,{base64.b64encode(DATA).decode()}">
<p>Icon <img src="img/icon.png"> inline</p>
<IMG SRC="/static/root%20img.png"/>
<img src="img/a.png">
<p>Last words</p>
<noscript>enable js</noscript>
</main>
<aside>aside text</aside><footer>footer text</footer>
<form><label>form text</label><input name=q></form>
<template><p>tmpl</p></template>
</body></html>
"""

POST = ("<html><head><meta http-equiv='Content-Type' content='text/html; charset=windows-1252'>"
        "</head><body><p>Caf\xe9 cr\xe8me</p><img src='../img/c.jpg'>"
        "<img src='http://remote.example/x.jpg'><img src='photos/missing.jpg'>"
        "<p>after</p><img src='photos/p1.webp?v=2#frag'></body></html>").encode("cp1252")


def _site(tmp_path):
  site = tmp_path / "site"
  for d in ("img", "static", "blog/photos"):
    (site / d).mkdir(parents=True)
  for name, data in (("img/a.png", A), ("img/small.jpg", SMALL), ("img/big.jpg", BIG),
                     ("img/icon.png", ICON), ("static/root img.png", ROOT_IMG),
                     ("img/c.jpg", C), ("blog/photos/p1.webp", P1), ("img/n.png", N),
                     ("img/logo.png", _image(99))):
    (site / name).write_bytes(data)
  for i, data in enumerate(GALLERY):
    (site / "img" / f"g{i}.png").write_bytes(data)
  (site / "index.html").write_text(INDEX)
  (site / "blog" / "post.html").write_bytes(POST)
  (site / "many.HTM").write_text(
      "<p>gallery</p>" + "".join(f'<img src="img/g{i}.png">' for i in range(7)))
  (site / "notext.html").write_text('<div><img src="img/n.png"></div>')
  (site / "noimg.html").write_text("<p>just text</p>")
  (site / "latin.html").write_bytes(b"<p>caf\xe9</p>")
  (site / "style.css").write_text("ignored")
  return site


def test_html_site(tmp_path):
  site = _site(tmp_path)
  out = tmp_path / "out"
  assert prepare.main(["html", "--input", str(site), "--output", str(out),
                       "--drop-single-image-fraction", "0"]) == 0
  got = list(records.read_dir(str(out)))
  assert [(r["id"], r["kind"], r["segments"]) for r in got] == [
      ("blog/post.html", "interleaved",
       [{"text": "Café crème"}, {"image": C}, {"text": "after"}, {"image": P1}]),
      ("index.html", "interleaved", [
          {"text": "Welcome\n\nFirst paragraph with & entity"}, {"image": A},
          {"text": "Second\nline bold"}, {"image": BIG}, {"text": "Data image follows"},
          {"image": DATA}, {"text": "Icon\n\ninline"}, {"image": ROOT_IMG},
          {"text": "Last words"}]),
      ("many.HTM", "interleaved", [{"text": "gallery"}] + [{"image": g} for g in GALLERY[:5]]),
  ]
  assert got[1]["meta"] == {"file": "index.html", "title": "Home page"}
  assert records.read_manifest(str(out))["dropped"] == {
      "duplicate_image": 1, "empty_text": 1, "image_too_small": 1, "invalid_utf8": 1,
      "missing_image": 1, "no_images": 1, "remote_image": 1, "too_many_images": 2}
  # --too-many-images drop; a fallback encoding rescues the undeclared latin-1 page.
  out2 = tmp_path / "out2"
  assert prepare.main(["html", "--input", str(site), "--output", str(out2), "--keep-text-only",
                       "--drop-single-image-fraction", "0", "--too-many-images", "drop",
                       "--fallback-encoding", "cp1252"]) == 0
  got2 = {r["id"]: r for r in records.read_dir(str(out2))}
  assert "many.HTM" not in got2
  assert got2["latin.html"]["segments"] == [{"text": "café"}]
  assert got2["latin.html"]["kind"] == got2["noimg.html"]["kind"] == "text"
  assert records.read_manifest(str(out2))["dropped"]["too_many_images"] == 1


def test_single_image_pages_dropped_by_seeded_draw(tmp_path):
  site = tmp_path / "singles"
  (site / "img").mkdir(parents=True)
  names = [f"page{i:02d}.html" for i in range(16)]
  for i, name in enumerate(names):
    (site / "img" / f"{i}.png").write_bytes(_image(40 + i))
    (site / name).write_text(f'<p>page {i}</p><img src="img/{i}.png">')
  (site / "two.html").write_text('<p>two</p><img src="img/0.png"><img src="img/1.png">')
  kept = {}
  for seed, workers in ((0, 1), (0, 2), (7, 1)):
    out = tmp_path / f"s{seed}w{workers}"
    assert prepare.main(["html", "--input", str(site), "--output", str(out), "--shards", "3",
                         "--seed", str(seed), "--workers", str(workers)]) == 0
    kept[seed, workers] = [r["id"] for r in records.read_dir(str(out))]
    manifest = records.read_manifest(str(out))
    expected = [n for n in names if interleaved.draw(seed, n) >= 0.5]
    assert kept[seed, workers] == sorted(expected + ["two.html"])
    assert manifest["dropped"] == {"single_image_dropped": 16 - len(expected)}
  assert kept[0, 1] == kept[0, 2]
  assert 0 < len(kept[0, 1]) - 1 < 16 and kept[0, 1] != kept[7, 1]


def test_extract_rules():
  title, items = html_text.extract(
      "<p>a<td>b</td></p><pre>  x\n  y </pre><ul><li>one<li>two</ul><p>tail")
  assert title == ""
  assert items == [("text", "a b\n\nx y\n\none\n\ntwo\n\ntail")]
  assert html_text.srcset_best("a.jpg 1x, b.jpg 2x") == "b.jpg"
  assert html_text.srcset_best("s.jpg 480w,l.jpg 1080w, m.jpg 800w") == "l.jpg"
  assert html_text.srcset_best("only.jpg") == "only.jpg"
  assert html_text.decode_page(b'<meta charset="latin-1"><p>\xe9', None).endswith("é")
  assert html_text.decode_page(b"\xef\xbb\xbf<p>\xc3\xa9", None) == "<p>é"
  assert html_text.decode_page(b"<p>\xe9", None) is None
