"""Launch scripts (shellcheck, golden dry-runs, TPU topologies, local.sh) and start-up checks."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import textwrap
import time

import jax
import ml_collections
import numpy as np
import pytest

from kosmos.train import startup

ROOT = pathlib.Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden"
SCRIPTS = ["launch/tpu_vm.sh", "launch/tpu_topology.sh", "launch/gke/launch.sh",
           "launch/local.sh", "launch/slurm_gpu.sbatch"]
# Set KOSMOS_UPDATE_GOLDEN=1 to rewrite the golden files from the current scripts.
UPDATE_GOLDEN = os.environ.get("KOSMOS_UPDATE_GOLDEN") == "1"


def _run(args: list[str], env: dict[str, str] | None = None, timeout: float = 60):
  return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                        env={**os.environ, **(env or {})})


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


# ---- shellcheck ---------------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("shellcheck") is None,
                    reason="shellcheck not installed (Debian: apt-get install -y shellcheck)")
@pytest.mark.parametrize("script", SCRIPTS)
def test_shellcheck_passes(script):
  out = _run(["shellcheck", "-x", "--severity=style", script])
  assert out.returncode == 0, out.stdout + out.stderr


# ---- TPU slice facts ------------------------------------------------------------------------

@pytest.mark.parametrize("tpu_type, expected", [
    # type: (chips, topology, hosts, chips per host, GKE accelerator, runtime version)
    ("v5p-8", ("4", "2x2x1", "1", "4", "tpu-v5p-slice", "v2-alpha-tpuv5")),
    ("v5p-256", ("128", "4x4x8", "32", "4", "tpu-v5p-slice", "v2-alpha-tpuv5")),
    ("v5p-512", ("256", "4x8x8", "64", "4", "tpu-v5p-slice", "v2-alpha-tpuv5")),
    ("v5p-1024", ("512", "8x8x8", "128", "4", "tpu-v5p-slice", "v2-alpha-tpuv5")),
    ("v4-32", ("16", "2x2x4", "4", "4", "tpu-v4-podslice", "tpu-ubuntu2204-base")),
    ("v4-128", ("64", "4x4x4", "16", "4", "tpu-v4-podslice", "tpu-ubuntu2204-base")),
    ("v5litepod-16", ("16", "4x4", "4", "4", "tpu-v5-lite-podslice", "v2-alpha-tpuv5-lite")),
    ("v5e-256", ("256", "16x16", "64", "4", "tpu-v5-lite-podslice", "v2-alpha-tpuv5-lite")),
    ("v6e-8", ("8", "2x4", "1", "8", "tpu-v6e-slice", "v2-alpha-tpuv6e")),
    ("v6e-64", ("64", "8x8", "16", "4", "tpu-v6e-slice", "v2-alpha-tpuv6e")),
])
def test_tpu_slice_info(tpu_type, expected):
  script = ("source launch/tpu_topology.sh; tpu_slice_info \"$1\"; echo $TPU_CHIPS $TPU_TOPOLOGY"
            " $TPU_HOSTS $TPU_CHIPS_PER_HOST $TPU_GKE_ACCELERATOR $TPU_RUNTIME_VERSION")
  out = _run(["bash", "-c", script, "_", tpu_type])
  assert out.returncode == 0, out.stderr
  assert tuple(out.stdout.split()) == expected


@pytest.mark.parametrize("tpu_type, message", [
    ("v5p-12", "valid: v5p-8 v5p-16 v5p-32 v5p-64 v5p-128 v5p-256 v5p-384 v5p-512"),
    ("v5p-7", "N must be even"),
    ("v9-8", "unknown TPU type 'v9-8'"),
    ("v5p-x", "must end in a number"),
])
def test_tpu_slice_info_rejects(tpu_type, message):
  out = _run(["bash", "-c", "source launch/tpu_topology.sh; tpu_slice_info \"$1\"", "_", tpu_type])
  assert out.returncode == 2
  assert message in out.stderr


# ---- golden dry-runs ------------------------------------------------------------------------

TPU_BASE = ["launch/tpu_vm.sh", "--dry-run", "--name", "kosmos1", "--type", "v5p-256",
            "--zone", "us-east5-a", "--project", "my-project", "--config", "configs/kosmos1.py",
            "--workdir", "gs://my-bucket/kosmos1"]
GKE_BASE = ["launch/gke/launch.sh", "--dry-run", "--type", "v5p-256", "--name", "kosmos1",
            "--image", "us-docker.pkg.dev/my-project/kosmos/kosmos:latest",
            "--workdir", "gs://my-bucket/kosmos1", "--config", "configs/kosmos1.py",
            "--cluster", "my-cluster", "--project", "my-project", "--zone", "us-east5-a"]
GOLDEN_CASES = {
    "tpu_vm_v5p256_up.txt": [TPU_BASE + ["up", "--spot"]],
    "tpu_vm_v5p256x2_up.txt": [TPU_BASE + ["up", "--num-slices", "2", "--reserved", "--env",
                                           "LIBTPU_INIT_ARGS=--xla_enable_async_all_gather=true"]],
    "tpu_vm_v5p256_ops.txt": [TPU_BASE + ["logs", "--worker", "3"], TPU_BASE + ["stop"],
                              TPU_BASE + ["train", "--teardown", "--", "--config.train.steps=100"],
                              TPU_BASE + ["delete"]],
    "gke_v5p256.txt": [GKE_BASE],
    "gke_v5p256x2.txt": [GKE_BASE + ["--num-slices", "2", "--spot", "--", "--config.train.steps=100"]],
}


def _dry_run_output(commands: list[list[str]]) -> str:
  parts = []
  for argv in commands:
    out = _run(argv)
    assert out.returncode == 0, f"{argv}: {out.stderr}"
    parts.append(out.stdout)
  return "".join(parts)


@pytest.mark.parametrize("golden", sorted(GOLDEN_CASES))
def test_dry_run_matches_golden(golden):
  text = _dry_run_output(GOLDEN_CASES[golden])
  assert text == _dry_run_output(GOLDEN_CASES[golden])  # deterministic
  path = GOLDEN / golden
  if UPDATE_GOLDEN:
    path.write_text(text)
  assert text == path.read_text(), f"dry-run output differs from {path} (KOSMOS_UPDATE_GOLDEN=1 rewrites)"


def test_tpu_vm_multislice_uses_queued_resource_and_dcn_mesh():
  text = (GOLDEN / "tpu_vm_v5p256x2_up.txt").read_text()
  lines = text.splitlines()
  create = [l for l in lines if " queued-resources create " in l]
  assert len(create) == 1 and "--node-count=2 --node-prefix=kosmos1" in create[0]
  assert "--accelerator-type=v5p-256" in create[0] and "--reserved" in create[0]
  ssh = [l for l in lines if " queued-resources ssh " in l]
  assert len(ssh) == 2 and all("--node=all --worker=all" in l for l in ssh)
  assert "--config.mesh.dcn_data=2" in ssh[-1]


def test_gke_manifest_structure():
  yaml = pytest.importorskip("yaml")
  text = (GOLDEN / "gke_v5p256x2.txt").read_text()
  manifest = yaml.safe_load(text.split("\n---\n")[0])
  assert manifest["kind"] == "JobSet"
  job = manifest["spec"]["replicatedJobs"][0]
  assert job["replicas"] == 2
  assert job["template"]["spec"]["parallelism"] == 32
  assert job["template"]["spec"]["completions"] == 32
  pod = job["template"]["spec"]["template"]["spec"]
  assert pod["nodeSelector"] == {"cloud.google.com/gke-tpu-accelerator": "tpu-v5p-slice",
                                 "cloud.google.com/gke-tpu-topology": "4x4x8",
                                 "cloud.google.com/gke-spot": "true"}
  container = pod["containers"][0]
  assert container["resources"]["limits"]["google.com/tpu"] == 4
  assert container["command"] == ["kosmos-train", "--config", "configs/kosmos1.py", "--workdir",
                                  "gs://my-bucket/kosmos1", "--config.mesh.dcn_data=2",
                                  "--config.train.steps=100"]
  assert "kubectl apply -f -" in text.split("\n---\n")[1]
  assert "xpk workload create" in text and "--tpu-type=v5p-256 --num-slices=2" in text


@pytest.mark.parametrize("argv, message", [
    (["launch/tpu_vm.sh", "up", "--name", "x", "--project", "p"], "--zone is required"),
    (["launch/tpu_vm.sh", "up", "--name", "x", "--zone", "z", "--project", "p", "--type", "v5p-12",
      "--dry-run"], "no known topology"),
    (["launch/tpu_vm.sh", "train", "--name", "x", "--zone", "z", "--project", "p", "--dry-run"],
     "--workdir is required"),
    (["launch/tpu_vm.sh", "up", "--name", "x", "--zone", "z", "--project", "p", "--spot",
      "--reserved"], "exclude each other"),
    (["launch/tpu_vm.sh", "logs", "--name", "x", "--zone", "z", "--project", "p", "--worker", "32"],
     "workers 0..31"),
    (["launch/gke/launch.sh", "--workdir", "gs://b"], "--image is required"),
    (["launch/gke/launch.sh", "--image", "i", "--workdir", "gs://b", "--type", "v6e-8",
      "--num-slices", "2"], "needs multi-host slices"),
])
def test_launch_scripts_reject_bad_arguments(argv, message):
  out = _run(argv)
  assert out.returncode == 2
  assert message in out.stderr
  assert out.stdout == ""


# ---- local.sh process plumbing --------------------------------------------------------------

ENTRY = textwrap.dedent("""\
    import os, sys
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if os.environ.get("FAIL_BEFORE_INIT") == os.environ["KOSMOS_PROCESS_ID"]:
      sys.exit(7)
    jax.distributed.initialize(os.environ["KOSMOS_COORDINATOR"],
                               int(os.environ["KOSMOS_NUM_PROCESSES"]),
                               int(os.environ["KOSMOS_PROCESS_ID"]))
    print("RESULT", jax.process_index(), jax.process_count(), jax.local_device_count(),
          jax.device_count(), " ".join(sys.argv[1:]))
    """)


def test_local_sh_runs_every_process(tmp_path):
  entry = tmp_path / "entry.py"
  entry.write_text(ENTRY)
  out = _run(["launch/local.sh", "2", "--devices", "3", "--", "--workdir", str(tmp_path / "wd"),
              "--config.x=1"], env={"KOSMOS_LOCAL_ENTRY": f"{sys.executable} {entry}"},
             timeout=120)
  assert out.returncode == 0, out.stderr
  for k in range(2):
    log = (tmp_path / "wd" / "logs" / f"process_{k}.log").read_text()
    result = [l for l in log.splitlines() if l.startswith("RESULT")]
    assert result == [f"RESULT {k} 2 3 6 --workdir {tmp_path / 'wd'} --config.x=1"], log


def test_local_sh_stops_the_others_when_one_fails(tmp_path):
  entry = tmp_path / "entry.py"
  entry.write_text(ENTRY)
  start = time.monotonic()
  # Process 1 dies before joining; process 0 would wait for it until jax's timeout.
  out = _run(["launch/local.sh", "2", "--", "--workdir", str(tmp_path)],
             env={"KOSMOS_LOCAL_ENTRY": f"{sys.executable} {entry}", "FAIL_BEFORE_INIT": "1"},
             timeout=120)
  assert out.returncode == 7
  assert time.monotonic() - start < 60
  assert "process 1 exited with 7; stopping the others" in out.stderr


def test_local_sh_needs_a_workdir():
  out = _run(["launch/local.sh", "2", "--", "--config", "configs/demo.py"])
  assert out.returncode == 2 and "pass --workdir DIR" in out.stderr


# ---- start-up checks ------------------------------------------------------------------------

def _config(global_batch: int) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({"data": {"global_batch_size": global_batch},
                                    "mesh": {"data": -1, "fsdp": 2, "tensor": 1, "dcn_data": 1}})


def test_startup_single_process_summary():
  mesh = jax.make_mesh((4, 2), ("data", "fsdp"))
  lines: list[str] = []
  summary = startup.summarize_and_check(_config(16), mesh, "/tmp/run/", printer=lines.append)
  assert summary["process_count"] == 1
  assert summary["versions"]["jax"] == jax.__version__
  assert summary["versions"]["kosmos_commit"] == startup.kosmos_commit()
  assert summary["devices_per_process"] == jax.local_device_count() == 8
  assert summary["mesh_shape"] == {"data": 4, "fsdp": 2}
  assert summary["global_batch"] == 16 and summary["per_process_batch"] == 16
  assert summary["checkpoint_dir"] == "/tmp/run/checkpoints"
  assert lines == startup.format_summary(summary)
  assert "  mesh: data=4 fsdp=2" in lines and "  checkpoints: /tmp/run/checkpoints" in lines


def test_record_round_trip_and_size_limit():
  record = startup.local_record()
  row = startup.encode_record(record)
  assert row.shape == (startup.RECORD_BYTES,) and row.dtype == np.uint8
  assert startup.decode_record(row) == record
  with pytest.raises(ValueError, match="more than RECORD_BYTES"):
    startup.encode_record({"x": "y" * startup.RECORD_BYTES})


def test_find_mismatches_names_processes_and_values():
  base = startup.local_record()
  records = [dict(base, process_index=i) for i in range(8)]
  records[5]["jax"] = "0.0.1"
  records[6]["local_device_count"] = 2
  records[7]["local_device_count"] = 2
  assert startup.find_mismatches(records) == [
      f"jax differs: processes 0-4, 6-7: {base['jax']}; process 5: 0.0.1",
      f"local_device_count differs: processes 0-5: {base['local_device_count']}; "
      "processes 6-7: 2",
  ]
  assert startup.find_mismatches(records[:5]) == []


def test_batch_must_divide_over_processes(monkeypatch):
  base = startup.local_record()
  monkeypatch.setattr(startup, "gather_records", lambda: [base, base, base])
  with pytest.raises(ValueError, match="global_batch_size=8 does not divide over 3 processes"):
    startup.summarize_and_check(_config(8), jax.make_mesh((8,), ("data",)))


def test_fake_version_hook_rejects_unknown_fields(monkeypatch):
  monkeypatch.setenv(startup.FAKE_VERSION_ENV, "numpy=1")
  with pytest.raises(ValueError, match="NAME one of"):
    startup.local_record()


PROBE = textwrap.dedent("""\
    import json, os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
    import ml_collections
    from kosmos.train import startup
    config = ml_collections.ConfigDict({"data": {"global_batch_size": 12}, "mesh": {"data": -1}})
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    try:
      summary = startup.summarize_and_check(config, mesh, "gs://bucket/run")
    except startup.StartupMismatchError as e:
      print("MISMATCH", json.dumps(str(e)))
      sys.exit(3)
    print("SUMMARY", json.dumps(summary, sort_keys=True))
    """)


def _run_two_processes(tmp_path, fake_for_process_1: str | None):
  probe = tmp_path / "probe.py"
  probe.write_text(PROBE)
  address = f"127.0.0.1:{_free_port()}"
  procs = []
  for i in range(2):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop(startup.FAKE_VERSION_ENV, None)
    if i == 1 and fake_for_process_1:
      env[startup.FAKE_VERSION_ENV] = fake_for_process_1
    procs.append(subprocess.Popen([sys.executable, str(probe), address, str(i)], cwd=ROOT,
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True))
  outs = []
  try:
    for p in procs:
      stdout, stderr = p.communicate(timeout=120)
      outs.append((p.returncode, stdout, stderr))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  return outs


def test_startup_two_processes_agree(tmp_path):
  outs = _run_two_processes(tmp_path, None)
  summaries = []
  for code, stdout, stderr in outs:
    assert code == 0, stderr
    summaries.append(json.loads(stdout.split("SUMMARY ", 1)[1].splitlines()[0]))
  assert summaries[0] == summaries[1]
  s = summaries[0]
  assert s["process_count"] == 2 and s["devices_per_process"] == 2
  assert s["global_device_count"] == 4 and s["mesh_shape"] == {"data": 4}
  assert s["global_batch"] == 12 and s["per_process_batch"] == 6
  assert s["checkpoint_dir"] == "gs://bucket/run/checkpoints"
  # Only process 0 prints the human summary.
  assert "kosmos start-up: all processes agree" in outs[0][1]
  assert "  batch: global 12, per process 6" in outs[0][1]
  assert "kosmos start-up" not in outs[1][1]


def test_startup_two_processes_version_mismatch_stops(tmp_path):
  outs = _run_two_processes(tmp_path, "jax=0.0.1")
  for code, stdout, _ in outs:
    assert code == 3
    message = json.loads(stdout.split("MISMATCH ", 1)[1].splitlines()[0])
    assert f"jax differs: process 0: {jax.__version__}; process 1: 0.0.1" in message
    assert "the 2 processes of this run do not agree" in message
