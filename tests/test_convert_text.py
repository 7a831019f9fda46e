"""`prepare.py text` and the shared runner: records, drops, manifest, resume, workers, caps."""

import gzip
import importlib.util
import json
import os
import subprocess
import sys

import pytest

try:
  import zstandard  # installed by setup.py; the .zst case is skipped without it
except ImportError:
  zstandard = None

from kosmos.data import records

from prepare_module import ROOT, prepare


def _corpus(tmp_path):
  src = tmp_path / "corpus"
  (src / "sub").mkdir(parents=True)
  (src / "a.txt").write_text("  First document.\n\nstill first  \n")
  (src / "b.TXT").write_bytes(b"caf\xc3\xa9 \xe2\x9c\x93")  # uppercase extension, UTF-8
  (src / "bad.txt").write_bytes(b"latin-1 caf\xe9")  # invalid UTF-8
  (src / "empty.txt").write_text(" \n\n \n")
  rows = [{"text": "j1", "url": "u1"}, {"text": "   "}, {"body": "no text field"},
          {"text": 5}, {"text": "j2"}]
  lines = [json.dumps(r).encode() for r in rows] + [b"{not json", b"", b"[1, 2]", b"\xff\xfe"]
  (src / "sub" / "c.jsonl").write_bytes(b"\n".join(lines) + b"\n")
  with gzip.open(src / "sub" / "d.jsonl.gz", "wb") as f:
    f.write(b'{"text": "gz one"}\n{"text": "gz two"}\n')
  if zstandard is not None:
    (src / "e.jsonl.zst").write_bytes(
        zstandard.ZstdCompressor().compress(b'{"text": "zst one"}\n'))
  (src / "ignored.csv").write_text("not,an,input\n")
  return src


def _records(out):
  return list(records.read_dir(str(out)))


def test_text_records_and_drops(tmp_path):
  src = _corpus(tmp_path)
  out = tmp_path / "out"
  assert prepare.main(["text", "--input", str(src), "--output", str(out),
                       "--meta-fields", "url"]) == 0
  got = _records(out)
  assert [(r["id"], r["segments"][0]["text"]) for r in got] == [
      ("a.txt", "First document.\n\nstill first"),
      ("b.TXT", "café ✓")] + ([("e.jsonl.zst:1", "zst one")] if zstandard else []) + [
      ("sub/c.jsonl:1", "j1"),
      ("sub/c.jsonl:5", "j2"),
      ("sub/d.jsonl.gz:1", "gz one"),
      ("sub/d.jsonl.gz:2", "gz two"),
  ]
  assert all(r["kind"] == "text" and r["source"] == "text" for r in got)
  assert got[-4]["meta"] == {"file": "sub/c.jsonl", "url": "u1"}
  manifest = records.read_manifest(str(out))
  assert manifest["dropped"] == {"empty_text": 2, "invalid_field": 1, "invalid_json": 2,
                                 "invalid_utf8": 2, "missing_field": 1}
  assert manifest["records"] == len(got) and manifest["kinds"] == {"text": len(got)}
  assert manifest["converter"] == "text"
  assert manifest["arguments"]["meta_fields"] == "url"
  for shard in manifest["shards"]:
    assert shard["sha256"] == records.sha256(str(out / shard["name"]))
    assert shard["bytes"] > 0


def test_paragraph_mode(tmp_path):
  src = tmp_path / "p.txt"
  src.write_text("one\nline two\n\n\n  \nthree\n\n")
  out = tmp_path / "out"
  assert prepare.main(["text", "--input", str(src), "--output", str(out), "--paragraphs"]) == 0
  assert [(r["id"], r["segments"]) for r in _records(out)] == [
      ("p.txt:0", [{"text": "one\nline two"}]), ("p.txt:1", [{"text": "three"}])]


def test_shards_workers_resume(tmp_path):
  src = tmp_path / "many"
  src.mkdir()
  for i in range(6):
    (src / f"f{i}.jsonl").write_text("".join(json.dumps({"text": f"doc {i}.{j}"}) + "\n"
                                             for j in range(3)))
  one, two = tmp_path / "w1", tmp_path / "w2"
  base = ["text", "--input", str(src), "--shards", "3"]
  assert prepare.main(base + ["--output", str(one), "--workers", "1"]) == 0
  assert prepare.main(base + ["--output", str(two), "--workers", "2"]) == 0
  names = sorted(os.listdir(one))
  assert [n for n in names if n.endswith(".array_record")] == [
      f"text-0000{i}-of-00003.array_record" for i in range(3)]
  # Deterministic: each shard holds two whole files, identical bytes for any --workers.
  for i in range(3):
    name = f"text-0000{i}-of-00003.array_record"
    assert records.sha256(str(one / name)) == records.sha256(str(two / name))
    assert [r["id"] for r in records.read_shard(str(one / name))] == [
        f"f{f}.jsonl:{j}" for f in (2 * i, 2 * i + 1) for j in (1, 2, 3)]
  # Rerun: complete shards are skipped (untouched), a missing one is rewritten identically.
  before = {n: os.stat(one / n).st_mtime_ns for n in names}
  removed = "text-00001-of-00003.array_record"
  digest = records.sha256(str(one / removed))
  os.remove(one / removed)
  assert prepare.main(base + ["--output", str(one)]) == 0
  assert os.stat(one / "text-00000-of-00003.array_record").st_mtime_ns == before[
      "text-00000-of-00003.array_record"]
  assert os.stat(one / "text-00002-of-00003.array_record").st_mtime_ns == before[
      "text-00002-of-00003.array_record"]
  assert records.sha256(str(one / removed)) == digest
  manifest = records.read_manifest(str(one))
  assert manifest["records"] == 18 and len(manifest["shards"]) == 3
  # Other arguments for the same output: refused instead of mixing shards.
  with pytest.raises(FileExistsError, match="other inputs or arguments"):
    prepare.main(base + ["--output", str(one), "--source", "text", "--text-field", "body"])
  with pytest.raises(FileExistsError, match="shards of another run"):
    prepare.main(["text", "--input", str(src), "--shards", "2", "--output", str(one)])


def test_max_records_and_auto_shards(tmp_path):
  src = tmp_path / "many"
  src.mkdir()
  for i in range(4):
    (src / f"f{i}.jsonl").write_text("".join(json.dumps({"text": f"d{i}{j}"}) + "\n"
                                             for j in range(5)))
  out = tmp_path / "cap"
  assert prepare.main(["text", "--input", str(src), "--output", str(out), "--shards", "2",
                       "--max-records", "3", "--source", "web"]) == 0
  got = _records(out)
  assert [r["id"] for r in got] == ["f0.jsonl:1", "f0.jsonl:2", "f2.jsonl:1"]
  assert {r["source"] for r in got} == {"web"}
  auto = tmp_path / "auto"
  assert prepare.main(["text", "--input", str(src), "--output", str(auto)]) == 0
  assert records.read_manifest(str(auto))["shards"][0]["name"] == "text-00000-of-00001.array_record"


def test_nothing_written_is_an_error(tmp_path):
  src = tmp_path / "e.txt"
  src.write_text("   ")
  assert prepare.main(["text", "--input", str(src), "--output", str(tmp_path / "o")]) == 1
  with pytest.raises(FileNotFoundError, match="names no file"):
    prepare.main(["text", "--input", str(tmp_path / "nothing*.txt"), "--output", str(tmp_path)])


def test_script_help_lists_formats(tmp_path):
  run = subprocess.run([sys.executable, os.path.join(ROOT, "data", "prepare.py"), "--help"],
                       capture_output=True, text=True, cwd=ROOT, check=True)
  for name in ("text", "webdataset", "parquet-pairs", "obelics", "mmc4", "html", "tfds"):
    assert f"\n  {name} " in run.stdout
  assert "common" not in run.stdout and "runner" not in run.stdout
  run = subprocess.run([sys.executable, "data/prepare.py", "parquet-pairs", "--help"],
                       capture_output=True, text=True, cwd=ROOT, check=True)
  assert "--image-column" in run.stdout and "--workers" in run.stdout
  run = subprocess.run([sys.executable, "data/prepare.py", "nope"], capture_output=True,
                       text=True, cwd=ROOT)
  assert run.returncode == 2 and "unknown format 'nope'" in run.stderr


def test_crash_mid_run_resumes(tmp_path, monkeypatch):
  from kosmos.data.convert import text
  src = tmp_path / "many"
  src.mkdir()
  for i in range(6):
    (src / f"f{i}.jsonl").write_text(json.dumps({"text": f"doc {i}"}) + "\n")
  args = ["text", "--input", str(src), "--shards", "3"]
  clean = tmp_path / "clean"
  assert prepare.main(args + ["--output", str(clean)]) == 0
  real = text.convert_unit

  def failing(unit, a, ctx):
    if unit.key == "f3.jsonl":
      raise OSError("disk went away")
    return real(unit, a, ctx)

  out = tmp_path / "out"
  monkeypatch.setattr(text, "convert_unit", failing)
  with pytest.raises(RuntimeError, match="'f3.jsonl'.*disk went away"):
    prepare.main(args + ["--output", str(out)])
  # Shard 0 finished; shard 1 failed and left no shard file behind.
  assert sorted(f for f in os.listdir(out) if f.endswith(".array_record")) == [
      "text-00000-of-00003.array_record"]
  first = os.stat(out / "text-00000-of-00003.array_record").st_mtime_ns
  monkeypatch.setattr(text, "convert_unit", real)
  assert prepare.main(args + ["--output", str(out)]) == 0
  assert os.stat(out / "text-00000-of-00003.array_record").st_mtime_ns == first
  assert records.read_manifest(str(out))["shards"] == records.read_manifest(str(clean))["shards"]
  assert list(records.read_dir(str(out))) == list(records.read_dir(str(clean)))
