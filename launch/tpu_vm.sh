#!/usr/bin/env bash
# Run kosmos-train on a Cloud TPU VM slice (or several slices, multislice) with gcloud.
# `launch/tpu_vm.sh --help` explains; launch/README.md has the full walk-through.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$HERE/.." && pwd)
# shellcheck source=launch/tpu_topology.sh
source "$HERE/tpu_topology.sh"

usage() {
  cat <<'EOF'
Usage: launch/tpu_vm.sh COMMAND --name NAME --zone ZONE --project PROJECT [options] [-- kosmos-train args]

Commands (run them in order, or `up` for create+install+train):
  create    create the TPU VM (or queued resource); reuses it when NAME already exists
  install   copy this repo's HEAD commit (or clone --repo at --ref) to every worker and
            `pip install -e .[tpu]` into ~/kosmos-venv (Python 3.11 via uv)
  train     start kosmos-train on every worker, detached (log: ~/kosmos-train.log on
            each worker); with --foreground (implied by --teardown) it streams the
            output of all workers and returns when they finish
  logs      follow ~/kosmos-train.log of one worker (--worker N, --node M)
  stop      stop kosmos-train on every worker (kills the process group it started)
  delete    delete the TPU VM / queued resource (all slices)
  up        create, install, train

Options:
  --name NAME           TPU VM / queued-resource name (multislice nodes: NAME-0, NAME-1, ...)
  --zone ZONE           e.g. us-east5-a
  --project PROJECT     Google Cloud project
  --type TYPE           slice type, e.g. v5p-256 (default), v4-32, v5litepod-16, v6e-64
  --num-slices N        N slices over DCN (default 1); N > 1 uses a queued resource with
                        --node-count=N and passes --config.mesh.dcn_data=N to kosmos-train
  --queued              use a queued resource even for one slice
  --spot | --reserved   capacity: spot or reserved (default: on-demand)
  --runtime-version V   TPU software version (default per family, v5p: v2-alpha-tpuv5)
  --config FILE[:ARG]   kosmos config (default configs/kosmos1.py)
  --workdir gs://...    shared workdir for checkpoints and metrics (train, required)
  --repo URL --ref REF  clone this repository on the workers instead of copying HEAD
  --env KEY=VALUE       export on every worker before kosmos-train (repeatable),
                        e.g. --env LIBTPU_INIT_ARGS=--xla_tpu_enable_async_collective_fusion=true
  --foreground          train: stay attached and stream all workers' output
  --teardown            train/up: run in the foreground, then delete the slice(s)
                        (also when training fails)
  --worker N, --node M  logs: which worker (default 0) of which slice (default 0)
  --dry-run             print every command instead of running it, one per line
                        (assumes NAME does not exist yet and becomes ready at once)
  -h, --help            this text

Multi-host contract: every worker runs the same kosmos-train command; on TPU,
jax.distributed.initialize() needs no arguments. On a multislice queued resource the
TPU runtime sets MEGASCALE_COORDINATOR_ADDRESS, MEGASCALE_NUM_SLICES, MEGASCALE_SLICE_ID
and MEGASCALE_PORT on every worker, so nothing is passed by hand.

Example (KOSMOS-1 on one v5p-256 slice, spot):
  launch/tpu_vm.sh up --name kosmos1 --type v5p-256 --zone us-east5-a --project my-proj \
    --spot --workdir gs://my-bucket/kosmos1 --config configs/kosmos1.py
EOF
}

# ---- arguments ------------------------------------------------------------------------
COMMAND=""
NAME="" ZONE="" PROJECT="" TYPE="v5p-256" NUM_SLICES=1 QUEUED=0 CAPACITY="" RUNTIME=""
CONFIG="configs/kosmos1.py" WORKDIR="" REPO_URL="" REPO_REF="" FOREGROUND=0 TEARDOWN=0
WORKER=0 NODE=0 DRY_RUN=0
ENVS=() TRAIN_ARGS=()

need_value() { [[ $# -ge 2 && -n "$2" ]] || tpu_die "$1 needs a value (see --help)"; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    create|install|train|logs|stop|delete|up)
      [[ -z "$COMMAND" ]] || tpu_die "two commands given: '$COMMAND' and '$1'"
      COMMAND=$1; shift ;;
    --name) need_value "$@"; NAME=$2; shift 2 ;;
    --zone) need_value "$@"; ZONE=$2; shift 2 ;;
    --project) need_value "$@"; PROJECT=$2; shift 2 ;;
    --type) need_value "$@"; TYPE=$2; shift 2 ;;
    --num-slices) need_value "$@"; NUM_SLICES=$2; shift 2 ;;
    --queued) QUEUED=1; shift ;;
    --spot) [[ "$CAPACITY" != reserved ]] || tpu_die "--spot and --reserved exclude each other"
      CAPACITY=spot; shift ;;
    --reserved) [[ "$CAPACITY" != spot ]] || tpu_die "--spot and --reserved exclude each other"
      CAPACITY=reserved; shift ;;
    --runtime-version) need_value "$@"; RUNTIME=$2; shift 2 ;;
    --config) need_value "$@"; CONFIG=$2; shift 2 ;;
    --workdir) need_value "$@"; WORKDIR=$2; shift 2 ;;
    --repo) need_value "$@"; REPO_URL=$2; shift 2 ;;
    --ref) need_value "$@"; REPO_REF=$2; shift 2 ;;
    --env) need_value "$@"
      [[ "$2" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || tpu_die "--env '$2' must be KEY=VALUE"
      ENVS+=("$2"); shift 2 ;;
    --foreground) FOREGROUND=1; shift ;;
    --teardown) TEARDOWN=1; FOREGROUND=1; shift ;;
    --worker) need_value "$@"; WORKER=$2; shift 2 ;;
    --node) need_value "$@"; NODE=$2; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; TRAIN_ARGS=("$@"); break ;;
    *) tpu_die "unknown argument '$1' (see --help)" ;;
  esac
done

[[ -n "$COMMAND" ]] || { usage >&2; tpu_die "no command given"; }
[[ -n "$NAME" ]] || tpu_die "--name is required"
[[ "$NAME" =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] ||
  tpu_die "--name '$NAME' must be lowercase letters, digits and '-', starting with a letter"
[[ -n "$ZONE" ]] || tpu_die "--zone is required (e.g. us-east5-a)"
[[ -n "$PROJECT" ]] || tpu_die "--project is required"
[[ "$NUM_SLICES" =~ ^[1-9][0-9]*$ ]] || tpu_die "--num-slices '$NUM_SLICES' must be a positive integer"
[[ "$WORKER" =~ ^[0-9]+$ ]] || tpu_die "--worker '$WORKER' must be a worker index"
[[ "$NODE" =~ ^[0-9]+$ && "$NODE" -lt "$NUM_SLICES" ]] ||
  tpu_die "--node '$NODE' must be a slice index below --num-slices=$NUM_SLICES"
[[ -z "$REPO_REF" || -n "$REPO_URL" ]] || tpu_die "--ref needs --repo"
tpu_slice_info "$TYPE"
RUNTIME=${RUNTIME:-$TPU_RUNTIME_VERSION}
if (( NUM_SLICES > 1 )); then QUEUED=1; fi
if (( WORKER >= TPU_HOSTS )); then
  tpu_die "--worker $WORKER: a $TYPE slice has workers 0..$((TPU_HOSTS - 1))"
fi
echo "# $TYPE: $TPU_CHIPS chips ($TPU_TOPOLOGY), $TPU_HOSTS hosts x $TPU_CHIPS_PER_HOST chips;" \
  "$NUM_SLICES slice(s); $( ((QUEUED)) && echo queued resource || echo TPU VM) $NAME" >&2

# ---- running or printing ----------------------------------------------------------------
# Shell-quotes one word so that the printed line can be pasted back into a shell.
quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=,@%+^-]+$ ]]; then
    printf '%s' "$1"
  elif [[ "$1" =~ ^(--[a-z0-9-]+=)(.*)$ ]]; then
    printf '%s' "${BASH_REMATCH[1]}"
    quote "${BASH_REMATCH[2]}"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

print_cmd() {
  local word sep=""
  for word in "$@"; do printf '%s' "$sep"; quote "$word"; sep=" "; done
  printf '\n'
}

# Runs a command, or prints it under --dry-run.
run() {
  if ((DRY_RUN)); then print_cmd "$@"; else "$@"; fi
}

# Runs a read-only probe quietly; under --dry-run prints it and reports "not found".
probe() {
  if ((DRY_RUN)); then print_cmd "$@"; return 1; fi
  "$@" >/dev/null 2>&1
}

LOC=(--zone="$ZONE" --project="$PROJECT")
if ((QUEUED)); then GROUP=queued-resources; else GROUP=tpu-vm; fi

# ssh_all CMD: the same command on every worker of every slice.
ssh_all() {
  if ((QUEUED)); then
    run gcloud compute tpus queued-resources ssh "$NAME" "${LOC[@]}" --node=all --worker=all \
      --command="$1"
  else
    run gcloud compute tpus tpu-vm ssh "$NAME" "${LOC[@]}" --worker=all --command="$1"
  fi
}

# ---- commands ---------------------------------------------------------------------------
do_create() {
  if probe gcloud compute tpus "$GROUP" describe "$NAME" "${LOC[@]}"; then
    echo "# $NAME exists: reusing it" >&2
  else
    local capacity=()
    [[ -z "$CAPACITY" ]] || capacity=("--$CAPACITY")
    if ((QUEUED)); then
      local nodes=(--node-id="$NAME")
      (( NUM_SLICES == 1 )) || nodes=(--node-count="$NUM_SLICES" --node-prefix="$NAME")
      run gcloud compute tpus queued-resources create "$NAME" "${LOC[@]}" \
        --accelerator-type="$TYPE" --runtime-version="$RUNTIME" "${nodes[@]}" "${capacity[@]}"
    else
      run gcloud compute tpus tpu-vm create "$NAME" "${LOC[@]}" \
        --accelerator-type="$TYPE" --version="$RUNTIME" "${capacity[@]}"
    fi
  fi
  if ((QUEUED)); then wait_active; fi
}

# Polls the queued resource every 60 s until it is ACTIVE (fails on FAILED/SUSPENDED).
wait_active() {
  local state=""
  while true; do
    if ((DRY_RUN)); then
      print_cmd gcloud compute tpus queued-resources describe "$NAME" "${LOC[@]}" \
        --format='value(state.state)'
      return 0
    fi
    state=$(gcloud compute tpus queued-resources describe "$NAME" "${LOC[@]}" \
      --format='value(state.state)')
    case "$state" in
      ACTIVE) echo "# $NAME is ACTIVE" >&2; return 0 ;;
      FAILED|SUSPENDED) tpu_die "queued resource $NAME is $state; see" \
        "gcloud compute tpus queued-resources describe $NAME --zone=$ZONE --project=$PROJECT" ;;
      *) echo "# $NAME is ${state:-unknown}; waiting" >&2; sleep 60 ;;
    esac
  done
}

VENV_SETUP='python3 -m pip install -q --user uv && ~/.local/bin/uv venv -q --allow-existing --python 3.11 ~/kosmos-venv && cd ~/kosmos && ~/.local/bin/uv pip install -q --python ~/kosmos-venv/bin/python -e ".[tpu]"'

do_install() {
  local fetch
  if [[ -n "$REPO_URL" ]]; then
    fetch="rm -rf ~/kosmos && git clone -q $(quote "$REPO_URL") ~/kosmos"
    [[ -z "$REPO_REF" ]] || fetch+=" && git -C ~/kosmos checkout -q $(quote "$REPO_REF")"
  else
    local tarball="/tmp/kosmos-src-$NAME.tar.gz"
    if ((!DRY_RUN)) && [[ -n "$(git -C "$REPO_ROOT" status --porcelain --untracked-files=no)" ]]; then
      echo "# warning: uncommitted changes are not copied; install sends HEAD only" >&2
    fi
    run git archive --format=tar.gz --output="$tarball" HEAD
    if ((QUEUED)); then
      run gcloud compute tpus queued-resources scp "$tarball" "$NAME:kosmos-src.tar.gz" \
        "${LOC[@]}" --node=all --worker=all
    else
      run gcloud compute tpus tpu-vm scp "$tarball" "$NAME:kosmos-src.tar.gz" "${LOC[@]}" \
        --worker=all
    fi
    # git-archive stores the commit in the tar header; startup checks compare it.
    fetch="rm -rf ~/kosmos && mkdir -p ~/kosmos && tar -xzf ~/kosmos-src.tar.gz -C ~/kosmos && (gzip -dc ~/kosmos-src.tar.gz | git get-tar-commit-id > ~/kosmos/KOSMOS_COMMIT || true)"
  fi
  ssh_all "set -e; $fetch; $VENV_SETUP"
}

# The kosmos-train command line every worker runs (one string for the remote shell).
train_line() {
  local line="" word args=(--config "$CONFIG" --workdir "$WORKDIR")
  (( NUM_SLICES == 1 )) || args+=(--config.mesh.dcn_data="$NUM_SLICES")
  args+=("${TRAIN_ARGS[@]}")
  for word in "${ENVS[@]}"; do line+="export $(quote "$word"); "; done
  line+="cd ~/kosmos && ~/kosmos-venv/bin/kosmos-train"
  for word in "${args[@]}"; do line+=" $(quote "$word")"; done
  printf '%s' "$line"
}

do_train() {
  [[ -n "$WORKDIR" ]] || tpu_die "--workdir is required for train (a gs:// path every worker can write)"
  [[ "$WORKDIR" == gs://* ]] ||
    echo "# warning: --workdir '$WORKDIR' is not gs://; every worker must see the same directory" >&2
  if ((FOREGROUND)); then
    local status=0
    ssh_all "set -o pipefail; $(train_line) 2>&1 | tee ~/kosmos-train.log" || status=$?
    if ((TEARDOWN)); then do_delete; fi
    return "$status"
  fi
  # setsid: the run survives the ssh session and leads its own process group (for stop).
  ssh_all "if [ -f ~/kosmos-train.pid ] && kill -0 \"\$(cat ~/kosmos-train.pid)\" 2>/dev/null; then echo \"kosmos-train already runs (pid \$(cat ~/kosmos-train.pid)); use stop first\" >&2; exit 1; fi; setsid nohup bash -c $(quote "$(train_line)") > ~/kosmos-train.log 2>&1 < /dev/null & echo \$! > ~/kosmos-train.pid"
}

do_logs() {
  local cmd="tail -n 200 -F ~/kosmos-train.log"
  if ((QUEUED)); then
    run gcloud compute tpus queued-resources ssh "$NAME" "${LOC[@]}" --node="$NODE" \
      --worker="$WORKER" --command="$cmd"
  else
    run gcloud compute tpus tpu-vm ssh "$NAME" "${LOC[@]}" --worker="$WORKER" --command="$cmd"
  fi
}

do_stop() {
  ssh_all "if [ -f ~/kosmos-train.pid ]; then kill -TERM -- -\"\$(cat ~/kosmos-train.pid)\" 2>/dev/null || kill -TERM \"\$(cat ~/kosmos-train.pid)\" 2>/dev/null || true; rm -f ~/kosmos-train.pid; fi"
}

do_delete() {
  if ((QUEUED)); then
    run gcloud compute tpus queued-resources delete "$NAME" "${LOC[@]}" --force --quiet
  else
    run gcloud compute tpus tpu-vm delete "$NAME" "${LOC[@]}" --quiet
  fi
}

cd "$REPO_ROOT"
case "$COMMAND" in
  create) do_create ;;
  install) do_install ;;
  train) do_train ;;
  logs) do_logs ;;
  stop) do_stop ;;
  delete) do_delete ;;
  up) do_create; do_install; do_train ;;
esac
