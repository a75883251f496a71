#!/usr/bin/env bash
# Start a local mesh: embedded etcd, one sidecar with the in-process ONNX
# runtime, example models registered. Extra arguments go to `mmesh up`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/bootstrap.sh" "sim"  # the simulator's plots and scenario files too
exec "$root/.venv/bin/mmesh" up "$@"
