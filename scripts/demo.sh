#!/usr/bin/env bash
# The README's main command: sets everything up, brings up a local three-data-centre cluster,
# runs the main scenario against it through the client library, and stops the cluster.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m deploy.demo "$@"
