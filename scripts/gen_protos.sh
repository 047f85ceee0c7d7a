#!/usr/bin/env bash
# Regenerates the protobuf/gRPC code of protos/bkv/v1 (our public wire API), protos/bkv/store/v1
# (the vault node's private storage formats: messages only, no services) and protos/bkv/etcd (the
# subset of etcd's v3 API that etcd_client/ speaks) from the .proto sources. `--check` fails when
# the generated code of any of them is stale, or when a generated file has no .proto left.
set -euo pipefail
cd "$(dirname "$0")/.."
# $PYTHON, else the repository's .venv, else the python on PATH (a worktree without a .venv).
py=${PYTHON:-.venv/bin/python}
if [ -z "${PYTHON:-}" ] && [ ! -x "$py" ]; then
  py=python
fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
packages=(v1 store/v1 etcd)
grpc_packages=" v1 etcd " # the packages that define services
for pkg in "${packages[@]}"; do
  grpc_out=()
  if [[ "$grpc_packages" == *" $pkg "* ]]; then
    grpc_out=(--grpc_python_out="$out")
  fi
  "$py" -m grpc_tools.protoc -I protos --python_out="$out" --pyi_out="$out" "${grpc_out[@]}" \
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
    for f in protos/bkv/"$pkg"/*_pb2*; do
      if [ ! -e "$out/bkv/$pkg/$(basename "$f")" ]; then
        echo "generated code without a source: $f (remove it)" >&2
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
