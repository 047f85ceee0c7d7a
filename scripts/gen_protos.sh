#!/usr/bin/env bash
# Regenerates protos/bkv/v1/*_pb2*.py from the .proto sources. `--check` fails when they are stale.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
"$py" -m grpc_tools.protoc -I protos --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" protos/bkv/v1/*.proto
if [ "${1:-}" = "--check" ]; then
  for f in "$out"/bkv/v1/*; do
    if ! cmp -s "$f" "protos/bkv/v1/$(basename "$f")"; then
      echo "generated code is stale: protos/bkv/v1/$(basename "$f") (run scripts/gen_protos.sh)" >&2
      exit 1
    fi
  done
  echo "generated protobuf code is up to date"
else
  cp "$out"/bkv/v1/* protos/bkv/v1/
  echo "regenerated protos/bkv/v1"
fi
