#!/usr/bin/env bash
# Fill launch/gke/jobset.yaml.tmpl for a TPU slice type and slice count, and apply it.
# `launch/gke/launch.sh --help` explains; launch/README.md has the full walk-through.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=launch/tpu_topology.sh
source "$HERE/../tpu_topology.sh"

usage() {
  cat <<'EOF'
Usage: launch/gke/launch.sh --image IMAGE --workdir gs://... [options] [-- kosmos-train args]

Renders a JobSet (one Job per TPU slice, one pod per TPU host) running kosmos-train and
applies it with `kubectl apply -f -` on the current kubectl context. The cluster needs
the JobSet controller and TPU node pools of the requested type and topology.

Options:
  --type TYPE          slice type, e.g. v5p-256 (default), v4-32, v5litepod-16, v6e-64
  --num-slices N       slices (JobSet replicas; default 1); N > 1 also passes
                       --config.mesh.dcn_data=N to kosmos-train
  --name NAME          JobSet name (default kosmos-train)
  --image IMAGE        container image with kosmos installed (launch/gke/Dockerfile)
  --config FILE[:ARG]  kosmos config inside the image (default configs/kosmos1.py)
  --workdir gs://...   shared workdir (the pods' service account must write it)
  --env KEY=VALUE      extra container environment (repeatable)
  --spot               schedule on spot TPU node pools (cloud.google.com/gke-spot)
  --max-restarts N     JobSet failurePolicy.maxRestarts (default 3); a restart resumes
                       from the latest checkpoint in --workdir
  --chips-per-host N   override chips per pod (e.g. 4 for a multi-host v5e 2x4 node pool)
  --out FILE           also write the manifest to FILE
  --cluster C --project P --zone Z
                       print the equivalent `xpk workload create` command too
  --dry-run            print the manifest and the commands instead of running them
  -h, --help           this text

Example (KOSMOS-1 on two v5p-256 slices):
  launch/gke/launch.sh --type v5p-256 --num-slices 2 --name kosmos1 \
    --image us-docker.pkg.dev/my-proj/kosmos/kosmos:latest --workdir gs://my-bucket/kosmos1
EOF
}

TYPE=v5p-256 NUM_SLICES=1 NAME=kosmos-train IMAGE="" CONFIG=configs/kosmos1.py WORKDIR=""
SPOT=0 MAX_RESTARTS=3 CHIPS_OVERRIDE="" OUT="" CLUSTER="" PROJECT="" ZONE="" DRY_RUN=0
ENVS=() TRAIN_ARGS=()

need_value() { [[ $# -ge 2 && -n "$2" ]] || tpu_die "$1 needs a value (see --help)"; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --type) need_value "$@"; TYPE=$2; shift 2 ;;
    --num-slices) need_value "$@"; NUM_SLICES=$2; shift 2 ;;
    --name) need_value "$@"; NAME=$2; shift 2 ;;
    --image) need_value "$@"; IMAGE=$2; shift 2 ;;
    --config) need_value "$@"; CONFIG=$2; shift 2 ;;
    --workdir) need_value "$@"; WORKDIR=$2; shift 2 ;;
    --env) need_value "$@"
      [[ "$2" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || tpu_die "--env '$2' must be KEY=VALUE"
      ENVS+=("$2"); shift 2 ;;
    --spot) SPOT=1; shift ;;
    --max-restarts) need_value "$@"; MAX_RESTARTS=$2; shift 2 ;;
    --chips-per-host) need_value "$@"; CHIPS_OVERRIDE=$2; shift 2 ;;
    --out) need_value "$@"; OUT=$2; shift 2 ;;
    --cluster) need_value "$@"; CLUSTER=$2; shift 2 ;;
    --project) need_value "$@"; PROJECT=$2; shift 2 ;;
    --zone) need_value "$@"; ZONE=$2; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; TRAIN_ARGS=("$@"); break ;;
    *) tpu_die "unknown argument '$1' (see --help)" ;;
  esac
done

[[ -n "$IMAGE" ]] || tpu_die "--image is required (build it with launch/gke/Dockerfile)"
[[ -n "$WORKDIR" ]] || tpu_die "--workdir is required (a gs:// path all pods can write)"
[[ "$NAME" =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ && ${#NAME} -le 40 ]] ||
  tpu_die "--name '$NAME' must be at most 40 lowercase letters, digits and '-', starting with a letter"
[[ "$NUM_SLICES" =~ ^[1-9][0-9]*$ ]] || tpu_die "--num-slices '$NUM_SLICES' must be a positive integer"
[[ "$MAX_RESTARTS" =~ ^[0-9]+$ ]] || tpu_die "--max-restarts '$MAX_RESTARTS' must be a count"
tpu_slice_info "$TYPE"
if [[ -n "$CHIPS_OVERRIDE" ]]; then
  if ! [[ "$CHIPS_OVERRIDE" =~ ^[1-9][0-9]*$ ]] || (( TPU_CHIPS % CHIPS_OVERRIDE )); then
    tpu_die "--chips-per-host '$CHIPS_OVERRIDE' must divide the $TPU_CHIPS chips of $TYPE"
  fi
  TPU_CHIPS_PER_HOST=$CHIPS_OVERRIDE
  TPU_HOSTS=$((TPU_CHIPS / TPU_CHIPS_PER_HOST))
fi
if (( NUM_SLICES > 1 && TPU_HOSTS == 1 )); then
  tpu_die "multislice on GKE needs multi-host slices; $TYPE is one host (pick a larger type)"
fi

# A YAML double-quoted scalar (JSON string rules: escape backslash and double quote).
yaml_str() {
  local s=${1//\\/\\\\}
  s=${s//\"/\\\"}
  printf '"%s"' "$s"
}

# Shell-quotes one word for the printed commands.
quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=,@%+^-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

TRAIN=(kosmos-train --config "$CONFIG" --workdir "$WORKDIR")
(( NUM_SLICES == 1 )) || TRAIN+=(--config.mesh.dcn_data="$NUM_SLICES")
TRAIN+=("${TRAIN_ARGS[@]}")

# shellcheck disable=SC2016  # '${NAME}' etc. are the template's literal placeholders
render() {
  local command="" extra_env="" spot="" word key text
  for word in "${TRAIN[@]}"; do command+="              - $(yaml_str "$word")"$'\n'; done
  for word in "${ENVS[@]}"; do
    key=${word%%=*}
    extra_env+="              - name: $key"$'\n'"                value: $(yaml_str "${word#*=}")"$'\n'
  done
  (( ! SPOT )) || spot="              cloud.google.com/gke-spot: \"true\""$'\n'
  text=$(<"$HERE/jobset.yaml.tmpl")
  text=${text//'${COMMAND}'$'\n'/$command}
  text=${text//'${EXTRA_ENV}'/$extra_env}
  text=${text//'${SPOT_SELECTOR}'/$spot}
  text=${text//'${NAME}'/$NAME}
  text=${text//'${NUM_SLICES}'/$NUM_SLICES}
  text=${text//'${TPU_TYPE}'/$TYPE}
  text=${text//'${TPU_CHIPS}'/$TPU_CHIPS}
  text=${text//'${TOPOLOGY}'/$TPU_TOPOLOGY}
  text=${text//'${MAX_RESTARTS}'/$MAX_RESTARTS}
  text=${text//'${HOSTS_PER_SLICE}'/$TPU_HOSTS}
  text=${text//'${GKE_ACCELERATOR}'/$TPU_GKE_ACCELERATOR}
  text=${text//'${IMAGE}'/$IMAGE}
  text=${text//'${CHIPS_PER_HOST}'/$TPU_CHIPS_PER_HOST}
  if [[ "$text" == *'${'* ]]; then
    tpu_die "unfilled placeholder in jobset.yaml.tmpl: $(grep -o '\${[A-Z_]*}' <<<"$text" | head -1)"
  fi
  printf '%s\n' "$text"
}

xpk_line() {
  local train_line="" word
  for word in "${ENVS[@]}"; do train_line+="${word%%=*}=$(quote "${word#*=}") "; done
  for word in "${TRAIN[@]}"; do train_line+="$(quote "$word") "; done
  local args=(xpk workload create --cluster="$CLUSTER" --project="$PROJECT" --zone="$ZONE"
    --workload="$NAME" --tpu-type="$TYPE" --num-slices="$NUM_SLICES"
    --docker-image="$IMAGE" --max-restarts="$MAX_RESTARTS")
  printf '%s' "${args[*]} --command=$(quote "${train_line% }")"
}

MANIFEST=$(render)
LOG_SELECTOR="jobset.sigs.k8s.io/jobset-name=$NAME,jobset.sigs.k8s.io/job-index=0,batch.kubernetes.io/job-completion-index=0"
echo "# $NUM_SLICES x $TYPE: $TPU_CHIPS chips ($TPU_TOPOLOGY) per slice, $TPU_HOSTS pods x" \
  "$TPU_CHIPS_PER_HOST chips ($TPU_GKE_ACCELERATOR)" >&2
if [[ -n "$OUT" ]]; then printf '%s\n' "$MANIFEST" >"$OUT"; fi
if ((DRY_RUN)); then
  printf '%s\n' "$MANIFEST"
  echo "---"
  echo "# apply (the manifest above on stdin):"
  echo "kubectl apply -f -"
  echo "# follow process 0:"
  echo "kubectl logs -f -l $LOG_SELECTOR"
  if [[ -n "$CLUSTER" ]]; then
    echo "# or the same run with xpk:"
    xpk_line; echo
  fi
  exit 0
fi
printf '%s\n' "$MANIFEST" | kubectl apply -f -
echo "# submitted; follow process 0 with: kubectl logs -f -l $LOG_SELECTOR" >&2
