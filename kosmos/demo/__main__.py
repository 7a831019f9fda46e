"""`python -m kosmos.demo`: see kosmos.demo.runner."""

from kosmos.demo import runner

if __name__ == "__main__":
  raise SystemExit(runner.main())
