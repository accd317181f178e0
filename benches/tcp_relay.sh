#!/usr/bin/env bash
# TCP relay throughput (RFC 6062), turnd beside coturn: MB/s from clients to a sink peer
# through one TCP relay, and through 100 at once. Each server alone on core 0, turnd-load
# (the clients and the sink) on core 1; loopback only. Writes its table into BENCHMARKS.md.
#
#   bash benches/tcp_relay.sh                 # 2 rounds, 5 s per measurement
#   ROUNDS=3 DURATION=10 bash benches/tcp_relay.sh
#   WRITE=0 bash benches/tcp_relay.sh         # print the table only
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
WRITE=${WRITE:-1}
SERVER_CORE=${SERVER_CORE:-0}
LOAD_CORE=${LOAD_CORE:-1}
ADDR=127.0.0.1:3478

# The comparator: the current coturn release built from source with -O2
# (benches/build-coturn.sh), else Debian's package.
COTURN=${COTURN:-$(ls benches/coturn/bin/turnserver 2>/dev/null || command -v turnserver || true)}
[ -n "$COTURN" ] || { echo "tcp_relay.sh: coturn is not installed (bash .ci/deps installs it)" >&2; exit 1; }
command -v taskset >/dev/null || { echo "tcp_relay.sh: taskset (util-linux) is missing" >&2; exit 1; }

cargo build --release --quiet -p turnd -p turnd-load
TURND=target/release/turnd
LOAD=target/release/turnd-load
OUT=$(mktemp -d)
RESULTS=$OUT/results.txt
: >"$RESULTS"
PID=""

stop() {
  if [ -n "$PID" ]; then
    kill "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
    PID=""
  fi
}
trap stop EXIT

start() { # server
  case $1 in
    turnd)
      taskset -c "$SERVER_CORE" "$TURND" serve --config benches/turnd-bench.toml >"$OUT/turnd.log" 2>&1 &
      ;;
    coturn)
      taskset -c "$SERVER_CORE" "$COTURN" -n --listening-ip=127.0.0.1 --listening-port=3478 \
        --relay-ip=127.0.0.1 --lt-cred-mech --user=bench:bench --realm=bench \
        --allow-loopback-peers --no-cli --no-tls --no-dtls >"$OUT/coturn.log" 2>&1 &
      ;;
  esac
  PID=$!
  # Ready when it accepts a TCP connection (bounded wait).
  for _ in $(seq 100); do
    if (exec 3<>/dev/tcp/127.0.0.1/3478) 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "tcp_relay.sh: $1 did not start" >&2
  exit 1
}

for round in $(seq "$ROUNDS"); do
  if ((round % 2)); then order=(turnd coturn); else order=(coturn turnd); fi
  for server in "${order[@]}"; do
    for n in 1 100; do
      start "$server"
      line=$(taskset -c "$LOAD_CORE" "$LOAD" tcprelay --server "$ADDR" --sockets "$n" --duration "$DURATION" \
        --warmup "$WARMUP" --label "$server" | tee /dev/stderr | grep '^RESULT ' | sed 's/^RESULT //')
      echo "{\"round\": $round, \"server\": \"$server\", \"r\": $line}" >>"$RESULTS"
      stop
    done
  done
done

TABLE=$OUT/table.md
VERSION=$("$COTURN" --version 2>/dev/null | head -1)
python3 - "$RESULTS" "$ROUNDS" "$DURATION" "$VERSION" >"$TABLE" <<'PY'
import json, statistics, sys, subprocess, datetime
path, rounds, duration, version = sys.argv[1:]
rows = [json.loads(l) for l in open(path)]
def med(server, n):
    v = [r["r"]["mb_per_s"] for r in rows if r["server"] == server and r["r"]["connections"] == n]
    return statistics.median(v) if v else None
rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
print(f"{datetime.date.today()}, commit {rev}, coturn {version}, {rounds} rounds of {duration} s, medians. "
      "Server on core 0, turnd-load (clients and sink) on core 1; client to peer through TCP relays (RFC 6062).\n")
print("| figure | turnd | coturn | turnd / coturn |")
print("|---|---|---|---|")
for n, name in ((1, "MB/s through one TCP relay"), (100, "MB/s through 100 TCP relays at once")):
    t, c = med("turnd", n), med("coturn", n)
    r = f"{t / c:.2f}×" if t and c else "n/a"
    f = lambda v: "n/a" if v is None else f"{v:,.0f}"
    print(f"| {name} | {f(t)} | {f(c)} | {r} |")
PY
cat "$TABLE"
if [ "$WRITE" = 1 ]; then
  python3 - "$TABLE" "ROUNDS=$ROUNDS DURATION=$DURATION bash benches/tcp_relay.sh" <<'PY'
import sys, re
table, cmd = open(sys.argv[1]).read(), sys.argv[2]
begin, end = "<!-- tcprelay:begin -->", "<!-- tcprelay:end -->"
block = f"{begin}\nCommand: `{cmd}`\n\n{table}{end}"
text = open("BENCHMARKS.md").read()
if begin in text:
    text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
else:
    text = text.rstrip() + "\n\n## TCP relays (RFC 6062): turnd and coturn (benches/tcp_relay.sh)\n\n" + block + "\n"
open("BENCHMARKS.md", "w").write(text)
PY
  echo "tcp_relay.sh: BENCHMARKS.md updated" >&2
fi
