#!/usr/bin/env bash
# Run the whole test suite (installs the dev extra into .venv when needed).
# Extra arguments go to pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/bootstrap.sh" "dev"
source "$root/scripts/mlserver_env.sh"
cd "$root"
exec "$root/.venv/bin/python" -m pytest "$@"
