"""Initialising multi-process JAX for every place kosmos runs.

- Local rehearsal (launch/local.sh): KOSMOS_COORDINATOR=host:port, KOSMOS_NUM_PROCESSES,
  KOSMOS_PROCESS_ID; CPU collectives through gloo.
- TPU VMs / GKE TPU slices: `jax.distributed.initialize()` discovers everything.
- SLURM GPU clusters (launch/slurm_gpu.sbatch): `jax.distributed.initialize()` reads the
  SLURM environment; with one process per node, KOSMOS_LOCAL_DEVICE_IDS=0,1,... gives the
  process all the node's GPUs (jax would otherwise take only GPU SLURM_LOCALID).
- Otherwise a single process.

KOSMOS_LOCAL_DEVICES=K (fake CPU devices per process) must reach XLA_FLAGS before jax is
imported: `set_local_devices_from_env()` does that and is called first by main.
"""

from __future__ import annotations

import logging
import os


def set_local_devices_from_env() -> None:
  count = os.environ.get("KOSMOS_LOCAL_DEVICES")
  if not count:
    return
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  flags.append(f"--xla_force_host_platform_device_count={int(count)}")
  os.environ["XLA_FLAGS"] = " ".join(flags)


def _local_device_ids() -> list[int] | None:
  ids = os.environ.get("KOSMOS_LOCAL_DEVICE_IDS")
  return [int(i) for i in ids.split(",")] if ids else None


def initialize() -> str:
  """Initialises jax.distributed as the environment says; returns which way was taken."""
  import jax  # pylint: disable=g-import-not-at-top
  coordinator = os.environ.get("KOSMOS_COORDINATOR")
  if coordinator:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator, num_processes=int(os.environ["KOSMOS_NUM_PROCESSES"]),
                               process_id=int(os.environ["KOSMOS_PROCESS_ID"]),
                               local_device_ids=_local_device_ids())
    how = "local coordinator"
  elif int(os.environ.get("SLURM_NTASKS", "1")) > 1:
    jax.distributed.initialize(local_device_ids=_local_device_ids())
    how = "slurm"
  elif os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",") > 0 or os.environ.get("MEGASCALE_COORDINATOR_ADDRESS"):
    jax.distributed.initialize()
    how = "tpu"
  else:
    how = "single process"
  logging.info("jax.distributed: %s; process %d of %d, %d local devices", how,
               jax.process_index(), jax.process_count(), jax.local_device_count())
  return how
