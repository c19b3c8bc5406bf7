#!/usr/bin/env bash
# Creates .venv with a Python >= 3.12 and installs irrm_jax into it (idempotent).
# Usage: source scripts/setup_env.sh   (or run it; it prints the interpreter it chose)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"

find_python() {
  local candidates=("${PYTHON:-}" python3.13 python3.12)
  if command -v pyenv >/dev/null 2>&1 || [ -d "${PYENV_ROOT:-$HOME/.pyenv}/versions" ]; then
    for p in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.1[2-9]*/bin/python3; do candidates+=("$p"); done
  fi
  candidates+=(python3 python)
  for c in "${candidates[@]}"; do
    [ -n "$c" ] || continue
    command -v "$c" >/dev/null 2>&1 || [ -x "$c" ] || continue
    if "$c" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' 2>/dev/null; then
      echo "$c"; return 0
    fi
  done
  return 1
}

if [ ! -x "$venv/bin/python" ]; then
  if ! py="$(find_python)"; then
    echo "error: irrm_jax needs Python >= 3.12 (jax >= 0.11 and flax 0.12 require it)." >&2
    echo "Install one (e.g. 'pyenv install 3.12' or your OS package) or set PYTHON=/path/to/python3.12." >&2
    exit 1
  fi
  echo "Creating $venv with $py ($("$py" --version))"
  "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
fi
stamp="$venv/.installed"
if [ ! -f "$stamp" ] || [ "$root/setup.cfg" -nt "$stamp" ]; then
  echo "Installing irrm_jax and its dependencies into $venv"
  "$venv/bin/python" -m pip install -q -e "$root[dev]"
  touch "$stamp"
fi
