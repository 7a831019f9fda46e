"""Tests run on 8 fake CPU devices so mesh code is exercised without accelerators."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def pytest_xdist_make_scheduler(config, log):
  """`--dist loadfile` (each test file on one worker, its module fixtures made once), except
  that the seeds of `test_demo_short` are work units of their own, so the two whole demo
  runs need not follow each other on one worker (measured: 183 s and 167 s in the suite
  instead of 300 s and 278 s; the suite's total unchanged; docs/performance.md, "Demo,
  eleventh session")."""
  if config.getoption("dist", "no") != "loadfile":
    return None
  from xdist.scheduler import LoadFileScheduling  # pylint: disable=import-outside-toplevel

  class _Scheduling(LoadFileScheduling):

    def _split_scope(self, nodeid: str) -> str:
      if "::test_demo_short[" in nodeid:
        return nodeid
      return super()._split_scope(nodeid)

  return _Scheduling(config, log)
