#!/usr/bin/env bash
# Regenerates the protobuf/gRPC code of protos/bkv/v1 (our API) and protos/bkv/etcd (the subset
# of etcd's v3 API that etcd_client/ speaks) from the .proto sources. `--check` fails when the
# generated code of either is stale.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
packages=(v1 etcd)
for pkg in "${packages[@]}"; do
  "$py" -m grpc_tools.protoc -I protos --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
    protos/bkv/"$pkg"/*.proto
done
if [ "${1:-}" = "--check" ]; then
  for pkg in "${packages[@]}"; do
    for f in "$out"/bkv/"$pkg"/*; do
      if ! cmp -s "$f" "protos/bkv/$pkg/$(basename "$f")"; then
        echo "generated code is stale: protos/bkv/$pkg/$(basename "$f") (run scripts/gen_protos.sh)" >&2
        exit 1
      fi
    done
  done
  echo "generated protobuf code is up to date"
else
  for pkg in "${packages[@]}"; do
    cp "$out"/bkv/"$pkg"/* protos/bkv/"$pkg"/
    echo "regenerated protos/bkv/$pkg"
  done
fi
