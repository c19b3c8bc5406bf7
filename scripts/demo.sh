#!/usr/bin/env bash
# The one-command demo: sets up .venv if needed, then trains a small IRRM on scikit-image's sample photographs,
# evaluates it against bicubic on held-out ones and writes results/demo/ (a few minutes on a 2-core CPU).
# Usage: bash scripts/demo.sh [--steps N] [--out DIR] [--draws K] [--eval-size PX]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup_env.sh"
cd "$root"
exec .venv/bin/python -m irrm_jax.demo "$@"
