"""kosmos-compile: topology names, AOT compile of the real train step for TPU chips on a CPU host."""

import json
import math
import os

import numpy as np
import pytest

import tiny
import train_fixture
from kosmos import defaults
from kosmos.model import summary
from kosmos.train import compile as compile_lib
from kosmos.train import compile_memory
from kosmos.train import flops as flops_lib

GIB = 1024 ** 3
TINY_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny_train_config.py")


@pytest.mark.parametrize("name, topology_name, config, chips, host, hbm_gib", [
    ("v4-8", "v4:2x2x1", "megacore", 4, (2, 2, 1), 32),
    ("v4-128", "v4:4x4x4", "megacore", 64, (2, 2, 1), 32),
    ("v5p-8", "v5p:2x2x1", "megacore", 4, (2, 2, 1), 95),
    ("v5p-16", "v5p:2x2x2", "megacore", 8, (2, 2, 1), 95),
    ("v5p-32", "v5p:2x2x4", "megacore", 16, (2, 2, 1), 95),
    ("v5p-64", "v5p:2x4x4", "megacore", 32, (2, 2, 1), 95),
    ("v5p-256", "v5p:4x4x8", "megacore", 128, (2, 2, 1), 95),
    ("v5p-1024", "v5p:8x8x8", "megacore", 512, (2, 2, 1), 95),
    ("v5p-2048", "v5p:8x8x16", "megacore", 1024, (2, 2, 1), 95),
    ("v5e-1", "v5e:1x1", "default", 1, (1, 1, 1), 16),
    ("v5e-8", "v5e:2x4", "default", 8, (2, 4, 1), 16),
    ("v5e-16", "v5e:4x4", "default", 16, (2, 2, 1), 16),
    ("v5e-128", "v5e:8x16", "default", 128, (2, 2, 1), 16),
    ("v5litepod-256", "v5e:16x16", "default", 256, (2, 2, 1), 16),
    ("v6e-256", "v6e:16x16", "default", 256, (2, 2, 1), 32),
])
def test_topology_names(name, topology_name, config, chips, host, hbm_gib):
  topo = compile_lib.parse_topology(name)
  assert (topo.topology_name, topo.chip_config, topo.chips, topo.chips_per_host_bounds,
          topo.hbm_bytes, topo.num_slices) == (topology_name, config, chips, host,
                                               hbm_gib * GIB, 1)


def test_multislice_name():
  topo = compile_lib.parse_topology("2xv5p-256")
  assert (topo.topology_name, topo.num_slices, topo.chips_per_slice, topo.chips) == (
      "v5p:4x4x8", 2, 128, 256)


@pytest.mark.parametrize("name", ["v3-8", "v5p-12", "v5p-2", "v5e-512", "v6e-2", "tpu", "v5p256"])
def test_unknown_topology_lists_valid_names(name):
  with pytest.raises(compile_lib.TopologyError) as info:
    compile_lib.parse_topology(name)
  message = str(info.value)
  assert repr(name) in message
  gen = name.split("-")[0]
  # Names the generation's valid sizes, or every valid name for an unknown generation.
  expected = {"v5p": "v5p-256", "v5e": "v5e-256", "v6e": "v6e-256"}.get(gen, "v4-8")
  assert expected in message


def test_valid_names_all_parse():
  names = compile_lib.valid_names()
  assert {"v4-8", "v5p-8", "v5p-256", "v5e-256", "v6e-256", "v5e-1"} <= set(names)
  for name in names:
    topo = compile_lib.parse_topology(name)
    assert math.prod(int(s) for s in topo.topology_name.split(":")[1].split("x")) == topo.chips


def test_topology_devices_come_from_libtpu():
  devices = compile_lib.topology_devices(compile_lib.parse_topology("v5e-16"))
  assert len(devices) == 16 and devices[0].device_kind == "TPU v5 lite"
  devices = compile_lib.topology_devices(compile_lib.parse_topology("v5p-8"))
  assert len(devices) == 4 and devices[0].device_kind == "TPU v5"
  assert flops_lib.peak_flops(devices[0].device_kind) == 459e12


def _tiny_config(**data):
  config = defaults.base()
  config.model = tiny.model_config()
  config.data.update(dict(seq_len=32, global_batch_size=8, max_images_per_row=2), **data)
  config.mesh.update(data=-1, fsdp=1, tensor=1)
  return config


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
  """The CLI on the trainer tests' tiny config for v5p-8 with an override (one compile).
  The config's data directory is never read: only shapes matter."""
  path = tmp_path_factory.mktemp("compile") / "report.json"
  assert compile_lib.main(["--config", f"{TINY_CONFIG}:/nonexistent", "--topology", "v5p-8",
                           "--config.data.global_batch_size=16", "--out", str(path)]) == 0
  return json.loads(path.read_text())


def test_report_invariants(tiny_report):
  r = tiny_report
  mem = r["memory_per_chip"]
  assert mem["source"] == "memory_analysis"
  for part in ("argument", "output", "temporary", "generated_code"):
    assert mem[part] > 0, part
  assert mem["total"] == (mem["argument"] + mem["output"] - mem["alias"] + mem["temporary"]
                          + mem["generated_code"])
  assert mem["hbm"] == 95 * GIB
  assert r["fits"] is mem["fits"] is (mem["total"] <= mem["hbm"]) is True
  assert r["suggestions"] == []
  assert r["mesh"] == {"data": 4, "fsdp": 1, "tensor": 1}
  assert r["topology"]["device_kind"] == "TPU v5" and r["topology"]["chips"] == 4
  assert r["batch"]["global_batch_size"] == 16 and r["overrides"] == [
      "--config.data.global_batch_size=16"]
  assert r["params"]["total"] == summary.count(train_fixture.config("/nonexistent").model)["total"]
  assert r["params"]["trainable"] == r["params"]["total"]


def test_report_flops_and_mfu(tiny_report):
  r = tiny_report
  config = train_fixture.config("/nonexistent")
  config.data.global_batch_size = 16
  analytic = flops_lib.step_flops(config)
  assert r["analytic_flops"]["total"] == pytest.approx(analytic["total"])
  assert r["analytic_flops"]["per_chip"] == pytest.approx(analytic["total"] / 4)
  cost = r["xla_cost_per_chip"]
  assert cost["flops"] > 0 and "per chip" in cost["scope"]
  # XLA counts one chip's partition: more than the model's matmuls (elementwise ops,
  # optimizer) but the same order as the analytic count per chip, not 4x it.
  assert 0.5 * r["analytic_flops"]["per_chip"] < cost["flops"] < 4 * r["analytic_flops"]["per_chip"]
  assert r["step_seconds"] > 0 and r["step_seconds_source"].startswith("xla")
  assert r["step_seconds"] == cost["optimal_seconds"]
  assert 0 < r["mfu"] <= 1 and r["mfu_reason"] is None
  assert r["mfu"] == pytest.approx(analytic["total"] / (r["step_seconds"] * 459e12 * 4))
  assert r["compile_seconds"]["compile"] > 0
  assert r["host"]["libtpu"] and r["host"]["date"]


def test_report_kernels_and_collectives(tiny_report):
  """No Pallas kernel in the tiny config (XLA attention), so nothing is added to XLA's step
  time; data-parallel gradients are all-reduced in float32: at least 4 bytes per parameter."""
  r = tiny_report
  assert r["kernels"]["per_kernel"] == [] and r["kernels"]["seconds"] == 0
  assert r["kernels"]["hbm_bandwidth"] == 2.765e12 and not r["mfu_is_upper_bound"]
  assert r["xla_cost_per_chip"]["flops_with_kernels"] == r["xla_cost_per_chip"]["flops"]
  assert r["xla_step_seconds"] == r["step_seconds"]
  coll = r["collectives_per_chip"]
  trainable = r["params"]["trainable"]
  assert 4 * trainable <= coll["all-reduce"]["bytes"] < 6 * trainable
  assert coll["total_bytes"] == sum(v["bytes"] for v in coll.values() if isinstance(v, dict))
  assert "all-gather" not in coll  # nothing is sharded over fsdp here


def _report(total, argument, temporary, *, mesh=(1, 4, 1), chips=4, hbm=16 * GIB, remat="none",
            batch=64):
  return {
      "memory_per_chip": {"total": total, "argument": argument, "temporary": temporary},
      "topology": {"hbm_bytes": hbm, "chips": chips, "generation": "v5e"},
      "mesh": dict(zip(("data", "fsdp", "tensor"), mesh)),
      "remat": {"decoder": remat, "vision": remat},
      "batch": {"global_batch_size": batch},
  }


def test_suggestions_when_temporaries_dominate():
  out = compile_memory.suggestions(_report(total=40 * GIB, argument=4 * GIB, temporary=36 * GIB))
  assert any("remat=full" in s for s in out)
  # 4 + 36/4 = 13 GiB <= 0.9 * 16: accumulating over 4 micro-batches is the first that fits.
  assert any("--config.optim.accum_steps=4" in s for s in out)
  # 40 / 14.4 = 2.8 -> 4x the chips.
  assert any("more chips: about 16" in s for s in out)
  done = compile_memory.suggestions(_report(total=40 * GIB, argument=4 * GIB, temporary=36 * GIB,
                                         remat="full"))
  assert not any("remat" in s for s in done)


def test_suggestions_when_arguments_dominate():
  out = compile_memory.suggestions(_report(total=30 * GIB, argument=24 * GIB, temporary=6 * GIB,
                                        mesh=(4, 1, 1)))
  assert any("--config.mesh.data=1 --config.mesh.fsdp=-1" in s for s in out)
  assert any("more chips: about 12" in s or "more chips: about 16" in s for s in out)
  assert not any("accum_steps" in s for s in out)


def test_oom_message_parsing():
  """The message XLA:TPU gave for the test below (v5e, 16 GiB chips; G = GiB)."""
  message = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
             "temporaries (16.17G) exceeds available HBM (15.75G).")
  mem = compile_memory.oom_memory(message, arguments=3 * 1024 ** 2)
  assert mem["temporary"] == int(16.17 * GIB) and mem["xla_usable_hbm"] == int(15.75 * GIB)
  assert mem["total"] == 3 * 1024 ** 2 + int(16.17 * GIB) and mem["total_is_lower_bound"]
  used = compile_memory.oom_memory(
      "Ran out of memory in memory space hbm. Used 20.5G of 15.75G hbm.", arguments=GIB)
  assert used["total"] == int(20.5 * GIB) and used["xla_usable_hbm"] == int(15.75 * GIB)
  assert compile_memory.oom_memory("INTERNAL: something else", 0) is None


def test_too_large_config_is_reported_not_fitting():
  """A huge vocabulary's logits (64 x 1024 x 262144 float32 = 64 GiB) on v5e-4 (16 GiB chips)."""
  config = _tiny_config(seq_len=1024, global_batch_size=64)
  config.model.decoder.update(vocab_size=262144, max_len=1024)
  report = compile_lib.compile_report(config, "v5e-4")
  mem = report["memory_per_chip"]
  assert mem["source"] == "oom_error" and mem["total_is_lower_bound"]
  assert mem["xla_usable_hbm"] <= 16 * GIB and mem["hbm"] == 16 * GIB
  assert mem["total"] == mem["argument"] + mem["temporary"] > mem["xla_usable_hbm"]
  assert report["fits"] is mem["fits"] is False
  assert report["mfu"] is None and report["mfu_reason"]
  assert report["suggestions"]
  assert any("accum_steps" in s or "more chips" in s for s in report["suggestions"])


def test_cli_unknown_topology_exits_with_valid_names(capsys):
  with pytest.raises(SystemExit) as info:
    compile_lib.main(["--config", f"{TINY_CONFIG}:/nonexistent", "--topology", "v3-8"])
  assert info.value.code == 2
  err = capsys.readouterr().err
  assert "'v3-8'" in err and "v5p-256" in err and "v5e-256" in err


def test_cli_bad_override_names_the_field(capsys):
  with pytest.raises(SystemExit):
    compile_lib.main(["--config", f"{TINY_CONFIG}:/nonexistent", "--topology", "v5p-8",
                      "--config.mesh.fsdpp=2"])
  err = capsys.readouterr().err
  assert "fsdpp" in err and "fsdp" in err


def test_trainable_vision_layers_counts_from_first_trained_block():
  leaf = np.zeros((2,), np.float32)
  kosmos1_like = {"vision": {"blocks": {23: {"mlp": {"kernel": leaf}}}, "post_norm": {"scale": leaf}},
                  "decoder": {"embed": leaf}}
  assert flops_lib.trainable_vision_layers(kosmos1_like, depth=24) == 1
  assert flops_lib.trainable_vision_layers({"decoder": {"embed": leaf}}, depth=24) == 0
  everything = {"vision": {"blocks": {i: {"k": leaf} for i in (0, 5, 23)}}}
  assert flops_lib.trainable_vision_layers(everything, depth=24) == 24


def test_search_ranks_candidates_and_writes_the_winner(tmp_path, capsys):
  """2 meshes x 2 remat policies x 2 accum values on v5p-8: the 4 with accum 3 (16 rows do
  not split in 3) are skipped and the 2 with an unknown policy fail, without compiling;
  the 2 that compile are ranked by MFU and the best one's overrides are written."""
  out = tmp_path / "search.json"
  code = compile_lib.main([
      "--config", f"{TINY_CONFIG}:/nonexistent", "--topology", "v5p-8",
      "--config.data.global_batch_size=16", "--search", "--search-mesh", "fsdp,data2_fsdp",
      "--search-remat", "full,bogus", "--search-attention=", "--search-accum", "1,3",
      "--jobs", "2", "--out", str(out)])
  assert code == 0
  result = json.loads(out.read_text())
  rows = result["candidates"]
  assert [r["status"] for r in rows] == ["fits"] * 2 + ["failed"] * 2 + ["skipped"] * 4
  fits = rows[:2]
  assert fits[0]["mfu"] >= fits[1]["mfu"] > 0
  assert {r["choice"]["mesh"] for r in fits} == {"fsdp", "data2_fsdp"}
  assert all(r["choice"] == {"mesh": r["choice"]["mesh"], "remat": "full", "accum": "1"}
             for r in fits)
  assert all("bogus" in r["reason"] for r in rows[2:4])
  assert all("16" in r["reason"] and "3 micro-batches" in r["reason"] for r in rows[4:])
  winner = result["winner"]
  assert winner["overrides"] == fits[0]["overrides"]
  assert winner["report"]["mfu"] == fits[0]["mfu"] and winner["report"]["fits"]
  mesh = {"fsdp": (1, 4, 1), "data2_fsdp": (2, 2, 1)}[winner["choice"]["mesh"]]
  assert winner["report"]["mesh"] == dict(zip(("data", "fsdp", "tensor"), mesh))
  assert "--config.model.decoder.remat=full" in winner["overrides"]
  assert "--config.optim.accum_steps=1" in winner["overrides"]
  # The printed table lists the fitting candidates in the same order, ranked 1 and 2.
  table = [l for l in capsys.readouterr().out.splitlines() if l[:2] in ("1 ", "2 ")]
  assert [l.split()[1] for l in table] == [r["choice"]["mesh"] for r in fits]


def test_search_mesh_names():
  assert compile_lib.compile_search.mesh_overrides("fsdp_tensor2") == [
      "--config.mesh.data=1", "--config.mesh.fsdp=-1", "--config.mesh.tensor=2"]
  assert compile_lib.compile_search.mesh_overrides("data2_fsdp") == [
      "--config.mesh.data=2", "--config.mesh.fsdp=-1", "--config.mesh.tensor=1"]
  with pytest.raises(ValueError, match="pipeline2"):
    compile_lib.compile_search.mesh_overrides("pipeline2")
