# shellcheck shell=bash disable=SC2034  # the TPU_* variables are this file's output
# TPU slice facts shared by launch/tpu_vm.sh and launch/gke/launch.sh (sourced, not run).
#
# tpu_slice_info TYPE sets, for one slice of TYPE:
#   TPU_FAMILY            v4 | v5p | v5e | v6e
#   TPU_CHIPS             chips in the slice
#   TPU_TOPOLOGY          chip topology (GKE's cloud.google.com/gke-tpu-topology)
#   TPU_HOSTS             TPU VM hosts (= Kubernetes pods on GKE)
#   TPU_CHIPS_PER_HOST    chips per host (= google.com/tpu per pod on GKE)
#   TPU_GKE_ACCELERATOR   GKE's cloud.google.com/gke-tpu-accelerator label
#   TPU_RUNTIME_VERSION   TPU VM software version for `gcloud ... create`
#
# Naming: v4-N and v5p-N count TensorCores (2 per chip, so N/2 chips); v5litepod-N (alias
# v5e-N) and v6e-N count chips (1 TensorCore each). Hosts have 4 chips, except that slices
# of up to 8 chips of v5e/v6e sit on one host (1, 4 or 8 chips). Topologies follow the
# Cloud TPU docs (v5p-256 = 128 chips = 4x4x8); sizes not listed here are rejected with
# the list of valid ones.

# chips -> topology, 3D torus families (v4, v5p).
TPU_TOPOLOGIES_V4="4:2x2x1 8:2x2x2 16:2x2x4 32:2x4x4 64:4x4x4 128:4x4x8 256:4x8x8 512:8x8x8 768:8x8x12 1024:8x8x16 2048:8x16x16"
TPU_TOPOLOGIES_V5P="4:2x2x1 8:2x2x2 16:2x2x4 32:2x4x4 64:4x4x4 128:4x4x8 192:4x4x12 256:4x8x8 384:4x8x12 512:8x8x8 768:8x8x12 1024:8x8x16 1536:8x12x16 2048:8x16x16 3072:12x16x16 4096:16x16x16"
# chips -> topology, 2D families (v5e, v6e).
TPU_TOPOLOGIES_2D="1:1x1 4:2x2 8:2x4 16:4x4 32:4x8 64:8x8 128:8x16 256:16x16"

tpu_die() {
  echo "error: $*" >&2
  exit 2
}

# Prints the valid type names of a family, e.g. "v5p-8 v5p-16 ...".
_tpu_valid_types() {
  local prefix=$1 per_chip=$2 table=$3 entry out=""
  for entry in $table; do
    out+="${prefix}-$((${entry%%:*} * per_chip)) "
  done
  echo "${out% }"
}

tpu_slice_info() {
  local type=$1 prefix size cores_per_chip table entry
  case "$type" in
    v4-*) TPU_FAMILY=v4; prefix=v4; cores_per_chip=2; table=$TPU_TOPOLOGIES_V4
      TPU_GKE_ACCELERATOR=tpu-v4-podslice; TPU_RUNTIME_VERSION=tpu-ubuntu2204-base ;;
    v5p-*) TPU_FAMILY=v5p; prefix=v5p; cores_per_chip=2; table=$TPU_TOPOLOGIES_V5P
      TPU_GKE_ACCELERATOR=tpu-v5p-slice; TPU_RUNTIME_VERSION=v2-alpha-tpuv5 ;;
    v5litepod-*|v5e-*) TPU_FAMILY=v5e; prefix=${type%-*}; cores_per_chip=1
      table=$TPU_TOPOLOGIES_2D
      TPU_GKE_ACCELERATOR=tpu-v5-lite-podslice; TPU_RUNTIME_VERSION=v2-alpha-tpuv5-lite ;;
    v6e-*) TPU_FAMILY=v6e; prefix=v6e; cores_per_chip=1; table=$TPU_TOPOLOGIES_2D
      TPU_GKE_ACCELERATOR=tpu-v6e-slice; TPU_RUNTIME_VERSION=v2-alpha-tpuv6e ;;
    *) tpu_die "unknown TPU type '$type'; valid families: v4-N, v5p-N (N TensorCores)," \
      "v5litepod-N / v5e-N, v6e-N (N chips)" ;;
  esac
  size=${type##*-}
  [[ "$size" =~ ^[0-9]+$ ]] || tpu_die "TPU type '$type' must end in a number, e.g. v5p-256"
  if (( size % cores_per_chip )); then
    tpu_die "TPU type '$type': $prefix counts TensorCores ($cores_per_chip per chip), so N must be even"
  fi
  TPU_CHIPS=$((size / cores_per_chip))
  TPU_TOPOLOGY=""
  for entry in $table; do
    if [[ "${entry%%:*}" == "$TPU_CHIPS" ]]; then TPU_TOPOLOGY=${entry#*:}; fi
  done
  if [[ -z "$TPU_TOPOLOGY" ]]; then
    tpu_die "TPU type '$type' ($TPU_CHIPS chips) has no known topology; valid:" \
      "$(_tpu_valid_types "$prefix" "$cores_per_chip" "$table")"
  fi
  if [[ "$TPU_FAMILY" == v5e || "$TPU_FAMILY" == v6e ]] && (( TPU_CHIPS <= 8 )); then
    TPU_CHIPS_PER_HOST=$TPU_CHIPS
  else
    TPU_CHIPS_PER_HOST=4
  fi
  TPU_HOSTS=$((TPU_CHIPS / TPU_CHIPS_PER_HOST))
}
