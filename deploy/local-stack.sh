#!/usr/bin/env bash
# The stack of docker-compose.yml without Docker: a local S3-protocol server and a Runnel
# node tiering to it, as plain processes, until Ctrl-C (which stops both).
#
#   deploy/local-stack.sh            # data in ./runnel-stack
#   STACK_DIR=/tmp/s deploy/local-stack.sh
#
# The S3 server is MinIO if a `minio` binary is on PATH (its console on :9001), else
# moto's server from PyPI, installed once into a venv under the stack directory. Either
# way the bucket `runnel` is created and the node keeps each topic's history in it under
# cluster/topics/<topic>/partition=<p>/. The node is `runnel` from PATH, or this checkout's
# release build (built if missing).
#
# Settings: STACK_DIR (data), STACK_S3_PORT (default 9000), STACK_VENV
# (a venv that has moto[server]), STACK_NODE_ARGS (more flags for `runnel dev`,
# e.g. "--set kafka.listen=127.0.0.1:19092").
set -euo pipefail
cd "$(dirname "$0")/.."

stack_dir="${STACK_DIR:-$PWD/runnel-stack}"
s3_port="${STACK_S3_PORT:-9000}"
mkdir -p "$stack_dir"
say() { printf 'local-stack: %s\n' "$*" >&2; }

export AWS_ACCESS_KEY_ID=minioadmin AWS_SECRET_ACCESS_KEY=minioadmin AWS_REGION=us-east-1
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

if command -v minio >/dev/null; then
  say "starting MinIO on 127.0.0.1:$s3_port (console http://127.0.0.1:9001)"
  MINIO_ROOT_USER=minioadmin MINIO_ROOT_PASSWORD=minioadmin \
    minio server "$stack_dir/minio" --address "127.0.0.1:$s3_port" \
    --console-address 127.0.0.1:9001 >"$stack_dir/s3.log" 2>&1 &
  pids+=("$!")
else
  venv="${STACK_VENV:-$stack_dir/venv}"
  if [ ! -x "$venv/bin/moto_server" ]; then
    say "installing moto's S3 server into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet "moto[server]==5.2.5"
  fi
  say "starting moto's S3 server on 127.0.0.1:$s3_port"
  "$venv/bin/moto_server" -H 127.0.0.1 -p "$s3_port" >"$stack_dir/s3.log" 2>&1 &
  pids+=("$!")
fi

# The bucket, once the server answers: moto takes an unsigned PUT; MinIO refuses one, so
# with MinIO the bucket is made by `mc` when it is on PATH (or must exist already).
for _ in $(seq 1 100); do
  code=$(curl -s -o /dev/null -w '%{http_code}' -X PUT "http://127.0.0.1:$s3_port/runnel" || true)
  [ "$code" != "000" ] && break
  sleep 0.1
done
if command -v minio >/dev/null && command -v mc >/dev/null; then
  mc alias set runnel-stack "http://127.0.0.1:$s3_port" minioadmin minioadmin >/dev/null
  mc mb --ignore-existing runnel-stack/runnel >/dev/null
fi

if command -v runnel >/dev/null; then
  runnel_bin=$(command -v runnel)
else
  runnel_bin="${CARGO_TARGET_DIR:-$PWD/target}/release/runnel"
  if [ ! -x "$runnel_bin" ]; then
    say "building runnel (release)"
    cargo build --release --locked -p runnel
  fi
fi

say "starting the node (data in $stack_dir/node); Ctrl-C stops the stack"
"$runnel_bin" dev --data-dir "$stack_dir/node" \
  --set tier.url=s3://runnel/cluster \
  --set "tier.endpoint=http://127.0.0.1:$s3_port" \
  --set tier.allow_http=true ${STACK_NODE_ARGS:-} &
pids+=("$!")
wait "${pids[-1]}"
