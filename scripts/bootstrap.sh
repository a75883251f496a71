#!/usr/bin/env bash
# Create .venv and install mmesh with the given extras, only when needed.
#
# Sourced by scripts/up.sh and scripts/test.sh so that each README command does
# its own set-up on a fresh clone. The install is redone when pyproject.toml
# or the requested extras change (a stamp file records what was installed).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
extras="${1:-}"
venv="$root/.venv"
python="${MMESH_PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
  "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || { echo "mmesh needs Python >= 3.11 (set MMESH_PYTHON)" >&2; exit 1; }
  "$python" -m venv "$venv"
fi

stamp="$venv/.mmesh-install"
want="$(sha256sum "$root/pyproject.toml" | cut -d' ' -f1) [$extras]"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  "$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
  spec="$root"
  [ -n "$extras" ] && spec="$root[$extras]"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -e "$spec"
  echo "$want" > "$stamp"
fi
