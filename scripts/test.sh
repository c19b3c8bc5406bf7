#!/usr/bin/env bash
# Sets up .venv if needed, then runs the test suite on the CPU.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup_env.sh"
cd "$root"
export JAX_PLATFORMS=cpu
exec .venv/bin/python -m pytest -q "$@"
