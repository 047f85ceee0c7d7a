#!/usr/bin/env bash
# The README's test command: sets everything up, checks generated code and lint, runs every test tier.
# Extra arguments go to pytest (e.g. `scripts/test.sh -m unit`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

echo "== generated code"
bash scripts/gen_protos.sh --check
echo "== ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy"
.venv/bin/mypy
echo "== doctests"
.venv/bin/python -m pytest -q -p no:cacheprovider --doctest-modules vault_protocol vault_common client bkv_bench
echo "== pytest"
# -p no:randomly is not used: tests must pass in any order; hypothesis is bounded by its profiles.
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: that is a failure here" >&2
  exit 1
fi
exit "$rc"
