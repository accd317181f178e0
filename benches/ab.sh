#!/usr/bin/env bash
# A/B of two turnd binaries on the socket path: each started fresh per workload on
# 127.0.0.1:3478, pinned to core 0, with turnd-load on core 1; the two alternate in every
# round. Prints one line per run: label, workload, rate, server core busy %, loss %.
#
#   A=/path/to/old/turnd B=target/release/turnd bash benches/ab.sh
#   ROUNDS=4 DURATION=5 A_CONFIG=old.toml bash benches/ab.sh
#
# A_CONFIG/B_CONFIG default to benches/turnd-bench.toml (an older binary may need a copy
# without the keys it does not know). Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
A=${A:?set A to the first turnd binary}
B=${B:-target/release/turnd}
A_CONFIG=${A_CONFIG:-benches/turnd-bench.toml}
B_CONFIG=${B_CONFIG:-benches/turnd-bench.toml}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-4}
LOAD=target/release/turnd-load
cargo build --release --quiet -p turnd-load
LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT

run() { # binary config label workload [args]
  local bin=$1 cfg=$2 label=$3 mode=$4
  shift 4
  taskset -c 0 "$bin" serve --config "$cfg" >"$LOG" 2>&1 &
  local pid=$!
  for _ in $(seq 100); do grep -q "turnd ready" "$LOG" && break; sleep 0.1; done
  local line
  line=$(taskset -c 1 "$LOAD" "$mode" --server 127.0.0.1:3478 --duration "$DURATION" --warmup 1 \
    --label "$label" "$@" 2>/dev/null | grep '^RESULT ' | sed 's/^RESULT //' || true)
  kill -INT "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  python3 -c 'import json,sys; r=json.loads(sys.argv[1] or "{}"); print(sys.argv[2], sys.argv[3], r.get("rate"), r.get("server_core_busy_pct"), r.get("loss_pct"))' \
    "$line" "$label" "$mode${*:+ $*}"
}

for _ in $(seq "$ROUNDS"); do
  for side in A B; do
    if [ "$side" = A ]; then bin=$A cfg=$A_CONFIG; else bin=$B cfg=$B_CONFIG; fi
    run "$bin" "$cfg" "$side" binding
    run "$bin" "$cfg" "$side" channel
    run "$bin" "$cfg" "$side" send
    run "$bin" "$cfg" "$side" channel --sockets 256 --window 1
  done
done
