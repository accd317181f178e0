#!/usr/bin/env bash
# Runs turnd, coturn (Debian's package), a minimal Binding responder and a minimal relay
# (turnd-load's ceilings: batched I/O, no other logic) back to back on this
# machine, each pinned to one core with the load generator (turnd-load) on the other, and
# writes the figures and their ratios into BENCHMARKS.md.
#
#   bash benches/compare.sh                  # 2 rounds, 5 s per measurement
#   ROUNDS=3 DURATION=10 bash benches/compare.sh
#   WRITE=0 bash benches/compare.sh          # print the table, leave BENCHMARKS.md alone
#   TOPOLOGY=veth bash benches/compare.sh    # on a veth link, with XDP (root; compare-veth.sh)
#
# Every server is started fresh for every workload, on 127.0.0.1:3478, and stopped (and
# waited for) before the next one starts. Servers alternate: turnd first in odd rounds,
# coturn first in even rounds. The figure reported for each is the median of its rounds.
# All traffic stays on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
# TOPOLOGY=veth: the relay on a link between two network namespaces, with the XDP fast path
# and its ceiling (benches/compare-veth.sh; needs root).
if [ "${TOPOLOGY:-loopback}" = veth ]; then
  exec bash benches/compare-veth.sh "$@"
fi

ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
HOLD=${HOLD:-10000}
# p99 is sensitive to scheduling noise on a shared VM, so the latency point runs more rounds.
LAT_ROUNDS=${LAT_ROUNDS:-4}
WRITE=${WRITE:-1}
SERVER_CORE=${SERVER_CORE:-0}
LOAD_CORE=${LOAD_CORE:-1}
ADDR=127.0.0.1:3478

# The comparator: the current coturn release built from source with -O2
# (benches/build-coturn.sh), else Debian's package.
COTURN=${COTURN:-$(ls benches/coturn/bin/turnserver 2>/dev/null || command -v turnserver || true)}
[ -n "$COTURN" ] || { echo "compare.sh: coturn is not installed (bash .ci/deps installs it)" >&2; exit 1; }
command -v taskset >/dev/null || { echo "compare.sh: taskset (util-linux) is missing" >&2; exit 1; }

cargo build --release --quiet -p turnd -p turnd-load
TURND=target/release/turnd
LOAD=target/release/turnd-load

OUT=$(mktemp -d)
RESULTS=$OUT/results.txt
: >"$RESULTS"
PID=""
SERVER=""
cleanup() {
  if [ -n "$PID" ]; then stop; fi
}
trap cleanup EXIT

start() { # server
  case $1 in
    turnd)
      taskset -c "$SERVER_CORE" "$TURND" serve --config benches/turnd-bench.toml >"$OUT/turnd.log" 2>&1 &
      ;;
    coturn)
      # Defaults, but for what a loopback benchmark needs: one user, loopback peers allowed,
      # and no CLI/TLS/DTLS listeners (turnd serves none of them here either).
      taskset -c "$SERVER_CORE" "$COTURN" -n --listening-ip=127.0.0.1 --listening-port=3478 \
        --relay-ip=127.0.0.1 --lt-cred-mech --user=bench:bench --realm=bench \
        --allow-loopback-peers --no-cli --no-tls --no-dtls >"$OUT/coturn.log" 2>&1 &
      ;;
    responder)
      taskset -c "$SERVER_CORE" "$LOAD" responder --listen "$ADDR" >"$OUT/responder.log" 2>&1 &
      ;;
    responder-nogso)
      taskset -c "$SERVER_CORE" "$LOAD" responder --no-gso --listen "$ADDR" >"$OUT/responder-nogso.log" 2>&1 &
      ;;
    relay)
      taskset -c "$SERVER_CORE" "$LOAD" relay --listen "$ADDR" >"$OUT/relay.log" 2>&1 &
      ;;
  esac
  PID=$!
  SERVER=$1
  # Ready when it answers a Binding request.
  for _ in $(seq 50); do
    if taskset -c "$LOAD_CORE" "$LOAD" binding --server "$ADDR" --sockets 1 --window 1 --warmup 0 \
      --duration 0.05 2>/dev/null | grep -q '"received":[1-9]'; then
      return 0
    fi
    kill -0 "$PID" 2>/dev/null || { echo "compare.sh: $1 exited at start" >&2; cat "$OUT/$1.log" >&2; exit 1; }
    sleep 0.1
  done
  echo "compare.sh: $1 did not answer on $ADDR" >&2
  exit 1
}

stop() {
  # turnd drains on SIGTERM; SIGINT ends it at once. Background jobs of a script ignore
  # SIGINT unless they install a handler, so the others get SIGTERM.
  local sig=TERM
  [ "$SERVER" = turnd ] && sig=INT
  kill -"$sig" "$PID" 2>/dev/null || true
  wait "$PID" 2>/dev/null || true
  PID=""
}

measure() { # round server mode [extra args]
  local round=$1 server=$2 mode=$3
  shift 3
  start "$server"
  local extra=()
  [ "$mode" = hold ] && extra=(--pid "$PID" --sockets "$HOLD")
  local line
  line=$(taskset -c "$LOAD_CORE" "$LOAD" "$mode" --server "$ADDR" --duration "$DURATION" --warmup "$WARMUP" \
    --label "$server" "${extra[@]}" "$@" | tee /dev/stderr | grep '^RESULT ' | sed 's/^RESULT //')
  stop
  echo "{\"round\":$round,\"server\":\"$server\",\"workload\":\"$mode${*:+ $*}\",\"r\":$line}" >>"$RESULTS"
}

for round in $(seq "$ROUNDS"); do
  if ((round % 2)); then order=(turnd coturn); else order=(coturn turnd); fi
  measure "$round" responder binding
  measure "$round" responder-nogso binding
  measure "$round" relay channel
  measure "$round" relay send
  for mode in binding channel send alloc hold; do
    for server in "${order[@]}"; do
      measure "$round" "$server" "$mode"
    done
  done
  # One request or round trip in flight per socket: nothing for GSO to coalesce.
  measure "$round" responder binding --sockets 256 --window 1
  measure "$round" relay channel --sockets 256 --window 1
  for mode in binding channel; do
    for server in "${order[@]}"; do
      measure "$round" "$server" "$mode" --sockets 256 --window 1
    done
  done
done

# Latency at half of coturn's saturation rate (ChannelData round trips, open loop).
RATE=$(python3 - "$RESULTS" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
rates = [r["r"]["rate"] for r in rows if r["server"] == "coturn" and r["workload"] == "channel"]
# rate is relayed packets/s (two per round trip); half of saturation, in round trips/s.
print(int(statistics.median(rates) / 2 / 2))
EOF
)
for round in $(seq "$LAT_ROUNDS"); do
  if ((round % 2)); then order=(turnd coturn); else order=(coturn turnd); fi
  for server in "${order[@]}"; do
    measure "$round" "$server" channel --rate "$RATE"
  done
done

TABLE=$OUT/table.md
python3 - "$RESULTS" "$ROUNDS" "$DURATION" "$HOLD" "$RATE" "$LAT_ROUNDS" >"$TABLE" <<'EOF'
import json, statistics, sys, subprocess, datetime
path, rounds, duration, hold, rate, lat_rounds = sys.argv[1:]
rows = [json.loads(l) for l in open(path)]
def med(server, workload, key):
    v = [r["r"][key] for r in rows if r["server"] == server and r["workload"] == workload
         and r["r"].get(key) is not None]
    return statistics.median(v) if v else None
def fmt(v, unit=""):
    if v is None: return "n/a"
    return f"{v:,.0f}{unit}" if v >= 100 else f"{v:.1f}{unit}"
def pct(v):
    return "n/a" if v is None else f"{v:.3f}%"
def ratio(a, b):
    return f"{a / b:.2f}×" if a and b else "n/a"
rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
print(f"{datetime.date.today()}, commit {rev}, {rounds} rounds of {duration} s per measurement "
      f"({lat_rounds} for the latency point), medians. Server on core 0, turnd-load on core 1.\n")
print("| figure | turnd | coturn | turnd / coturn | target | ceiling: minimal responder or relay | turnd / ceiling |")
print("|---|---|---|---|---|---|---|")
b = [med(s, "binding", "rate") for s in ("turnd", "coturn", "responder", "responder-nogso")]
print(f"| STUN Binding responses/s | {fmt(b[0])} | {fmt(b[1])} | {ratio(b[0], b[1])} | ≥ 2.0× and ≥ 90% of responder "
      f"| {fmt(b[2])} (without GSO: {fmt(b[3])}) | {ratio(b[0], b[2])} |")
for wl, name in (("channel", "ChannelData relayed packets/s (100 B)"), ("send", "Send/Data relayed packets/s (100 B)")):
    t, c = med("turnd", wl, "rate"), med("coturn", wl, "rate")
    lt, lc = med("turnd", wl, "loss_pct"), med("coturn", wl, "loss_pct")
    m = med("relay", wl, "rate")
    print(f"| {name} | {fmt(t)} (loss {pct(lt)}) | {fmt(c)} (loss {pct(lc)}) | {ratio(t, c)} | ≥ 2.0× "
          f"| {fmt(m)} (relay: {ratio(m, c)} coturn) | {ratio(t, m)} |")
one = "--sockets 256 --window 1"
b1 = [med(s, f"binding {one}", "rate") for s in ("turnd", "coturn", "responder")]
print(f"| STUN Binding responses/s, 1 in flight on each of 256 sockets | {fmt(b1[0])} | {fmt(b1[1])} | {ratio(b1[0], b1[1])} "
      f"| (not a target) | {fmt(b1[2])} | {ratio(b1[0], b1[2])} |")
t, c = med("turnd", f"channel {one}", "rate"), med("coturn", f"channel {one}", "rate")
lt, lc = med("turnd", f"channel {one}", "loss_pct"), med("coturn", f"channel {one}", "loss_pct")
m = med("relay", f"channel {one}", "rate")
print(f"| ChannelData relayed packets/s, 1 round trip in flight on each of 256 allocations | {fmt(t)} (loss {pct(lt)}) "
      f"| {fmt(c)} (loss {pct(lc)}) | {ratio(t, c)} | (not a target) | {fmt(m)} | {ratio(t, m)} |")
t, c = med("turnd", "alloc", "rate"), med("coturn", "alloc", "rate")
print(f"| Allocation setup rate (401 + Allocate + Refresh 0), /s | {fmt(t)} | {fmt(c)} | {ratio(t, c)} | ≥ 2.0× | | |")
t, c = med("turnd", "hold", "bytes_per_allocation"), med("coturn", "hold", "bytes_per_allocation")
print(f"| Server RSS per idle allocation ({int(hold):,} held), bytes | {fmt(t)} | {fmt(c)} | {ratio(t, c)} | ≤ 0.2× | | |")
wl = f"channel --rate {rate}"
t, c = med("turnd", wl, "p99_us"), med("coturn", wl, "p99_us")
t50, c50 = med("turnd", wl, "p50_us"), med("coturn", wl, "p50_us")
def spread(server):
    v = [r["r"]["p99_us"] for r in rows if r["server"] == server and r["workload"] == wl]
    return f"{fmt(min(v))}–{fmt(max(v))}" if v else "n/a"
print(f"| p99 ChannelData round trip at half coturn's saturation ({int(rate):,} round trips/s, "
      f"median of {lat_rounds} runs), µs | {fmt(t)} (runs {spread('turnd')}; p50 {fmt(t50)}) "
      f"| {fmt(c)} (runs {spread('coturn')}; p50 {fmt(c50)}) | {ratio(t, c)} | ≤ 1.0× | | |")
print()
print("Latency under saturation (closed loop, 64 sockets × 4 in flight), p50 / p99 µs:\n")
print("| workload | turnd | coturn | minimal responder or relay |")
print("|---|---|---|---|")
for wl in ("binding", "channel", "send", "alloc"):
    cells = []
    for s in ("turnd", "coturn", "responder" if wl == "binding" else "relay"):
        p50, p99 = med(s, wl, "p50_us"), med(s, wl, "p99_us")
        cells.append(f"{fmt(p50)} / {fmt(p99)}" if p50 is not None else "")
    print(f"| {wl} | " + " | ".join(cells) + " |")
print()
print("Every run (rate: responses, relayed packets or allocations per second):\n")
print("| round | server | workload | rate | p50 µs | p99 µs | loss % | bytes/allocation |")
print("|---|---|---|---|---|---|---|---|")
for r in rows:
    x = r["r"]
    print(f"| {r['round']} | {r['server']} | {r['workload']} | {fmt(x.get('rate'))} | {fmt(x.get('p50_us'))} "
          f"| {fmt(x.get('p99_us'))} | {x.get('loss_pct', '')} | {fmt(x.get('bytes_per_allocation'))} |")
EOF

cat "$TABLE"
if [ "$WRITE" = 1 ]; then
  python3 - "$TABLE" "ROUNDS=$ROUNDS DURATION=$DURATION LAT_ROUNDS=$LAT_ROUNDS bash benches/compare.sh" <<'EOF'
import sys, re
table, cmd = open(sys.argv[1]).read(), sys.argv[2]
begin, end = "<!-- compare:begin -->", "<!-- compare:end -->"
block = f"{begin}\nCommand: `{cmd}`\n\n{table}{end}"
text = open("BENCHMARKS.md").read()
if begin in text:
    text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
else:
    text = text.rstrip() + "\n\n## turnd and coturn side by side (benches/compare.sh)\n\n" + block + "\n"
open("BENCHMARKS.md", "w").write(text)
EOF
  echo "compare.sh: BENCHMARKS.md updated" >&2
fi
