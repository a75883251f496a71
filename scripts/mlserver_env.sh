#!/usr/bin/env bash
# Create .venv-mlserver with MLServer (for the external-runtime tests and the
# MLServer benchmark), only when scripts/mlserver-requirements.txt changed.
# Sourced by scripts/test.sh; prints nothing on success.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv-mlserver"
requirements="$root/scripts/mlserver-requirements.txt"
python="${MMESH_PYTHON:-python3}"
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
stamp="$venv/.mmesh-install"
want="$(sha256sum "$requirements" | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$requirements"
  echo "$want" > "$stamp"
fi
