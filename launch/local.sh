#!/usr/bin/env bash
# Rehearse a multi-host run on this machine: N kosmos-train processes on fake CPU devices.
#
#   launch/local.sh N [--devices K] [--port P] -- --config configs/demo.py --workdir DIR [...]
#
# Every process gets KOSMOS_COORDINATOR=127.0.0.1:PORT, KOSMOS_NUM_PROCESSES=N,
# KOSMOS_PROCESS_ID=k and KOSMOS_LOCAL_DEVICES=K (kosmos-train then uses K fake CPU devices
# and gloo collectives, and calls jax.distributed.initialize with these). Process k logs to
# DIR/logs/process_k.log (or $KOSMOS_LOG_DIR/process_k.log). The script waits for all;
# when one fails it stops the others and exits with that process's status.
#
# Entry point: $KOSMOS_LOCAL_ENTRY if set (a command line, e.g. "python probe.py"), else
# the repo's .venv/bin/kosmos-train, else kosmos-train on PATH, else
# `$PYTHON -m kosmos.train.main` ($PYTHON defaults to the repo's .venv python, else python3).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$HERE/.." && pwd)

die() { echo "error: $*" >&2; exit 2; }

usage() { sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

[[ $# -ge 1 ]] || { usage >&2; die "give the number of processes"; }
case "$1" in -h|--help) usage; exit 0 ;; esac
NUM=$1; shift
[[ "$NUM" =~ ^[1-9][0-9]*$ ]] || die "number of processes '$NUM' must be a positive integer"
DEVICES=${KOSMOS_LOCAL_DEVICES:-2} PORT="" ARGS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --devices) [[ $# -ge 2 ]] || die "--devices needs a value"; DEVICES=$2; shift 2 ;;
    --port) [[ $# -ge 2 ]] || die "--port needs a value"; PORT=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; ARGS=("$@"); break ;;
    *) die "unknown argument '$1'; kosmos-train arguments go after --" ;;
  esac
done
[[ "$DEVICES" =~ ^[1-9][0-9]*$ ]] || die "--devices '$DEVICES' must be a positive integer"

# The workdir from the kosmos-train arguments: logs go under it.
WORKDIR=""
for ((i = 0; i < ${#ARGS[@]}; i++)); do
  case "${ARGS[i]}" in
    --workdir) WORKDIR=${ARGS[i + 1]:-} ;;
    --workdir=*) WORKDIR=${ARGS[i]#--workdir=} ;;
  esac
done
LOG_DIR=${KOSMOS_LOG_DIR:-}
if [[ -z "$LOG_DIR" ]]; then
  [[ -n "$WORKDIR" ]] || die "pass --workdir DIR after -- (logs go to DIR/logs) or set KOSMOS_LOG_DIR"
  [[ "$WORKDIR" != *://* ]] || die "--workdir '$WORKDIR' is remote; set KOSMOS_LOG_DIR to a local directory"
  LOG_DIR=$WORKDIR/logs
fi
mkdir -p "$LOG_DIR"

if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$REPO_ROOT/.venv/bin/python" ]]; then PYTHON=$REPO_ROOT/.venv/bin/python; else PYTHON=python3; fi
fi
if [[ -n "${KOSMOS_LOCAL_ENTRY:-}" ]]; then
  read -r -a ENTRY <<<"$KOSMOS_LOCAL_ENTRY"
elif [[ -x "$REPO_ROOT/.venv/bin/kosmos-train" ]]; then
  ENTRY=("$REPO_ROOT/.venv/bin/kosmos-train")
elif command -v kosmos-train >/dev/null 2>&1; then
  ENTRY=(kosmos-train)
else
  ENTRY=("$PYTHON" -m kosmos.train.main)
fi

if [[ -z "$PORT" ]]; then
  PORT=$("${PYTHON}" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fi
[[ "$PORT" =~ ^[0-9]+$ ]] || die "--port '$PORT' must be a port number"

# Replace any device-count flag the caller's XLA_FLAGS carry (e.g. a test runner's 8).
XLA=""
for flag in ${XLA_FLAGS:-}; do
  [[ "$flag" == --xla_force_host_platform_device_count=* ]] || XLA+="$flag "
done
XLA+="--xla_force_host_platform_device_count=$DEVICES"

PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
}
trap 'cleanup; exit 130' INT TERM

echo "local.sh: $NUM processes x $DEVICES CPU devices, coordinator 127.0.0.1:$PORT, logs in $LOG_DIR" >&2
cd "$REPO_ROOT"
for ((k = 0; k < NUM; k++)); do
  KOSMOS_COORDINATOR=127.0.0.1:$PORT KOSMOS_NUM_PROCESSES=$NUM KOSMOS_PROCESS_ID=$k \
    KOSMOS_LOCAL_DEVICES=$DEVICES XLA_FLAGS=$XLA JAX_PLATFORMS=cpu \
    "${ENTRY[@]}" "${ARGS[@]}" >"$LOG_DIR/process_$k.log" 2>&1 &
  PIDS+=($!)
done

# Wait for all; on the first failure stop the rest (they would wait for the dead peer).
STATUS=0 FAILED="" LEFT=$NUM
EXIT_CODES=()
while (( LEFT > 0 )); do
  for ((k = 0; k < NUM; k++)); do
    [[ -z "${EXIT_CODES[k]:-}" ]] || continue
    if ! kill -0 "${PIDS[k]}" 2>/dev/null; then
      code=0
      wait "${PIDS[k]}" || code=$?
      EXIT_CODES[k]=$code
      LEFT=$((LEFT - 1))
      if (( code != 0 && STATUS == 0 )); then
        STATUS=$code FAILED=$k
        echo "local.sh: process $k exited with $code; stopping the others" >&2
        cleanup
      fi
    fi
  done
  (( LEFT == 0 )) || sleep 0.2
done

for ((k = 0; k < NUM; k++)); do
  echo "local.sh: process $k exit ${EXIT_CODES[k]} log $LOG_DIR/process_$k.log" >&2
done
if (( STATUS != 0 )); then
  echo "local.sh: last lines of process $FAILED:" >&2
  tail -n 20 "$LOG_DIR/process_$FAILED.log" >&2
fi
exit "$STATUS"
