#!/usr/bin/env bash
# benches/compare.sh TOPOLOGY=veth: the relay measured on a link, not on loopback. Needs root.
#
#   TOPOLOGY=veth bash benches/compare.sh
#   ROUNDS=3 DURATION=5 TOPOLOGY=veth bash benches/compare.sh
#   WRITE=0 TOPOLOGY=veth bash benches/compare.sh     # print, leave BENCHMARKS.md alone
#
# Two network namespaces, "load" (turnd-load: clients and the echoing peer) and "srv" (the
# server), joined by a veth pair, addresses from 198.18.0.0/15 only. Both ends have GRO on
# and NAPI in threaded mode; the server end's NAPI thread is pinned to the server's core and
# the load end's to the load core, so the server's core pays for its own receive work, as
# with a NIC interrupt on its core, and for none of the generator's. The load end sends full
# UDP checksums (tx checksum offload off, as a wire carries them) and carries an XDP_PASS
# program (a veth drops XDP_TX frames unless its peer has a program): every server is
# measured with both, so all alike. The script makes and removes the namespaces itself.
#
# Servers: coturn (default, and --multiplex-peer), turnd on sockets, turnd with [xdp],
# turnd-load's minimal socket relay, and the XDP ceiling (bpf/xdp_ceiling.c with the minimal
# relay as control plane). The headline figure is the server core's time per relayed packet:
# its busy share (NAPI thread included) over the packets relayed, at one offered load for
# every server (half of coturn's saturation, measured in the same run).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "compare.sh TOPOLOGY=veth: needs root (namespaces, XDP)" >&2; exit 1; }
for t in ip ethtool clang bpftool taskset python3; do
  command -v "$t" >/dev/null || { echo "compare.sh TOPOLOGY=veth: $t is missing (bash .ci/deps)" >&2; exit 1; }
done

ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
WRITE=${WRITE:-1}
SERVER_CORE=${SERVER_CORE:-0}
LOAD_CORE=${LOAD_CORE:-1}
COTURN=${COTURN:-$(ls "$PWD"/benches/coturn/bin/turnserver 2>/dev/null || command -v turnserver || true)}
[ -n "$COTURN" ] || { echo "compare.sh: coturn is not installed (bash benches/build-coturn.sh)" >&2; exit 1; }

cargo build --release --quiet -p turnd -p turnd-load
TURND=$PWD/target/release/turnd
LOAD=$PWD/target/release/turnd-load
"$TURND" --version | grep -q '; XDP)' || { echo "compare.sh: $TURND was built without XDP (install clang)" >&2; exit 1; }

OUT=$(mktemp -d)
RESULTS=$OUT/results.txt
: >"$RESULTS"
TAG=tb$$
NL=$TAG-load
NS=$TAG-srv
LIF=bl0
SIF=bs0
SRV_IP=198.18.0.2
LOAD_IP=198.18.0.1
ADDR=$SRV_IP:3478
PEER_PORT=3480
# A peer per allocation: coturn --multiplex-peer shares relay ports and tells allocations
# apart by peer. Every server gets the same.
PEERS=8
PID=""
SERVER=""

cleanup() {
  [ -n "$PID" ] && kill -9 "$PID" 2>/dev/null
  for ns in "$NL" "$NS"; do
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  done
}
trap cleanup EXIT
trap "exit 1" INT TERM

ip netns add "$NL"
ip netns add "$NS"
ip link add "$LIF" netns "$NL" type veth peer name "$SIF" netns "$NS"
ip -n "$NL" addr add "$LOAD_IP/24" dev "$LIF"
ip -n "$NS" addr add "$SRV_IP/24" dev "$SIF"
for pair in "$NL $LIF" "$NS $SIF"; do
  set -- $pair
  ip -n "$1" link set lo up
  ip -n "$1" link set "$2" up
  ip netns exec "$1" ethtool -K "$2" gro on >/dev/null
  ip netns exec "$1" sh -c "echo 1 > /sys/class/net/$2/threaded"
done
ip netns exec "$NL" ethtool -K "$LIF" tx off >/dev/null
# The kernel's route lookup from XDP answers only on a forwarding interface.
ip netns exec "$NS" sysctl -qw "net.ipv4.conf.$SIF.forwarding=1"
clang -O2 -g -target bpf -I/usr/include/"$(uname -m)"-linux-gnu -c bpf/xdp_pass.c -o "$OUT/pass.o"
clang -O2 -g -target bpf -I/usr/include/"$(uname -m)"-linux-gnu -c bpf/xdp_ceiling.c -o "$OUT/ceiling.o"
ip -n "$NL" link set dev "$LIF" xdpdrv obj "$OUT/pass.o" sec xdp

# NAPI threads ("napi/<dev>-<id>"): the server end's on the server core, the load end's on
# the load core. They exist once the interface is up with GRO or XDP; re-pinned before each
# measurement, since attaching a program can restart them.
pin_napi() {
  for p in $(pgrep "^napi/$SIF-" || true); do taskset -pc "$SERVER_CORE" "$p" >/dev/null; done
  for p in $(pgrep "^napi/$LIF-" || true); do taskset -pc "$LOAD_CORE" "$p" >/dev/null; done
}

cat >"$OUT/turnd.toml" <<EOF
threads = 1
realm = "bench"
shutdown_grace = "0s"
[[listen]]
address = "$ADDR"
protocols = ["udp"]
[relay]
addresses = ["$SRV_IP"]
max_allocations_per_user = 20000
[limits]
unauthenticated_rate = 0
[auth]
users = [{ name = "bench", password = "bench" }]
users_file = "$OUT/users.toml"
[peers]
allow = ["198.18.0.0/15"]
[metrics]
listen = "off"
[admin]
socket = "$OUT/admin.sock"
EOF
sed 's/^\[metrics\]/[xdp]\ninterfaces = ["'"$SIF"'"]\n\n[metrics]/' "$OUT/turnd.toml" >"$OUT/turnd-xdp.toml"

# Each server is the process `$!` names (ip netns exec and taskset exec into it).
SRV=(ip netns exec "$NS" taskset -c "$SERVER_CORE")

start() { # server
  case $1 in
    turnd) "${SRV[@]}" "$TURND" serve --config "$OUT/turnd.toml" >"$OUT/$1.log" 2>&1 & ;;
    turnd-xdp) "${SRV[@]}" "$TURND" serve --config "$OUT/turnd-xdp.toml" >"$OUT/$1.log" 2>&1 & ;;
    coturn | coturn-multiplex)
      local extra=()
      [ "$1" = coturn-multiplex ] && extra=(--multiplex-peer)
      "${SRV[@]}" "$COTURN" -n --listening-ip="$SRV_IP" --listening-port=3478 --relay-ip="$SRV_IP" \
        --lt-cred-mech --user=bench:bench --realm=bench --no-cli --no-tls --no-dtls \
        --allowed-peer-ip=198.18.0.0-198.19.255.255 "${extra[@]}" >"$OUT/$1.log" 2>&1 &
      ;;
    relay | xdp-ceiling) "${SRV[@]}" "$LOAD" relay --listen "$ADDR" >"$OUT/$1.log" 2>&1 & ;;
  esac
  PID=$!
  for _ in $(seq 50); do
    if ip netns exec "$NL" "$LOAD" binding --server "$ADDR" --sockets 1 --window 1 --warmup 0 --duration 0.05 \
      2>/dev/null | grep -q '"received":[1-9]'; then
      break
    fi
    kill -0 "$PID" 2>/dev/null || { echo "compare.sh: $1 exited at start" >&2; cat "$OUT/$1.log" >&2; exit 1; }
    sleep 0.1
  done
  if [ "$1" = turnd-xdp ]; then
    grep -q "XDP fast path attached" "$OUT/$1.log" || { echo "compare.sh: turnd did not attach XDP" >&2; cat "$OUT/$1.log" >&2; exit 1; }
  fi
  if [ "$1" = xdp-ceiling ]; then
    ip -n "$NS" link set dev "$SIF" xdpdrv obj "$OUT/ceiling.o" sec xdp
    local id
    id=$(bpftool -j map show | python3 -c "import json,sys; print([m['id'] for m in json.load(sys.stdin) if m.get('name')=='ceiling_config'][-1])")
    # listen port 3478, first peer port, channel 0x4000 (turnd-load's) in network byte
    # order, then the number of peers (little-endian: host order).
    bpftool map update id "$id" key 0 0 0 0 value 0x0d 0x96 $((PEER_PORT >> 8)) $((PEER_PORT & 255)) 0x40 0x00 $PEERS 0
  fi
  pin_napi
}

stop() {
  [ "$SERVER" = xdp-ceiling ] && ip -n "$NS" link set dev "$SIF" xdpdrv off
  kill -TERM "$PID" 2>/dev/null || true
  wait "$PID" 2>/dev/null || true
  PID=""
}

measure() { # round server label [turnd-load args]
  local round=$1 server=$2 label=$3
  shift 3
  SERVER=$server
  start "$server"
  local line
  line=$(ip netns exec "$NL" taskset -c "$LOAD_CORE" "$LOAD" channel --server "$ADDR" --duration "$DURATION" \
    --warmup "$WARMUP" --server-core "$SERVER_CORE" --peer-port "$PEER_PORT" --peers "$PEERS" --label "$server" "$@" |
    tee /dev/stderr | grep '^RESULT ' | sed 's/^RESULT //')
  stop
  echo "{\"round\":$round,\"server\":\"$server\",\"workload\":\"$label\",\"r\":$line}" >>"$RESULTS"
}

read -r -a SERVERS <<<"${SERVERS:-coturn coturn-multiplex turnd turnd-xdp relay xdp-ceiling}"
for round in $(seq "$ROUNDS"); do
  [ "${OFFERED_ONLY:-0}" = 1 ] && break
  for server in "${SERVERS[@]}"; do
    measure "$round" "$server" saturation --sockets 8 --window 8
    measure "$round" "$server" saturation-1200 --sockets 8 --window 8 --payload 1200
  done
done
# One offered load for every server: half of coturn's saturation (the better of its two
# modes), in round trips per second (two relayed packets each).
RATE=${RATE:-$(python3 - "$RESULTS" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
sat = [statistics.median(v) for s in ("coturn", "coturn-multiplex")
       if (v := [r["r"]["rate"] for r in rows if r["server"] == s and r["workload"] == "saturation"])]
best = max(sat or [200000])
print(int(best / 2 / 2))
EOF
)}
for round in $(seq "$ROUNDS"); do
  for server in "${SERVERS[@]}"; do
    measure "$round" "$server" offered --sockets 8 --rate "$RATE"
    measure "$round" "$server" offered-1200 --sockets 8 --rate "$RATE" --payload 1200
  done
done

TABLE=$OUT/table.md
python3 - "$RESULTS" "$ROUNDS" "$DURATION" "$RATE" >"$TABLE" <<'EOF'
import json, statistics, sys, subprocess, datetime
path, rounds, duration, rate = sys.argv[1:]
rows = [json.loads(l) for l in open(path)]
def med(server, workload, key):
    v = [r["r"][key] for r in rows if r["server"] == server and r["workload"] == workload and r["r"].get(key) is not None]
    return statistics.median(v) if v else None
def cost(server, workload):
    """Server core µs per relayed packet: busy share of one core over relayed packets/s."""
    busy, pps = med(server, workload, "server_core_busy_pct"), med(server, workload, "rate")
    return busy / 100 * 1e6 / pps if busy is not None and pps else None
def f(v, d=0):
    return "n/a" if v is None else f"{v:,.{d}f}"
names = {"coturn": "coturn 4.17.1", "coturn-multiplex": "coturn 4.17.1 --multiplex-peer", "turnd": "turnd, sockets",
         "turnd-xdp": "turnd, XDP", "relay": "minimal socket relay", "xdp-ceiling": "minimal XDP program (ceiling)"}
rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
print(f"{datetime.date.today()}, commit {rev}, {rounds} rounds of {duration} s per measurement, medians. veth between "
      f"two namespaces; server and its NAPI thread on core 0, turnd-load and its NAPI thread on core 1. Offered load: "
      f"{int(rate):,} round trips/s ({2 * int(rate):,} relayed packets/s), half of coturn's saturation.\n")
print("| server | server-core µs per relayed packet, 100 B at the offered load | same, 1,200 B | most relayed packets/s (100 B, closed loop) | loss at most | Gbit/s relayed at 1,200 B (closed loop) | p50 / p99 round trip at the offered load, µs |")
print("|---|---|---|---|---|---|---|")
for s in names:
    sat = med(s, "saturation", "rate")
    loss = max([r["r"]["loss_pct"] for r in rows if r["server"] == s and r["workload"] == "saturation"] or [0])
    g = med(s, "saturation-1200", "rate")
    gbps = g * 1200 * 8 / 1e9 if g else None
    print(f"| {names[s]} | {f(cost(s, 'offered'), 2)} | {f(cost(s, 'offered-1200'), 2)} | {f(sat)} | {loss:.3f}% | {f(gbps, 2)} "
          f"| {f(med(s, 'offered', 'p50_us'))} / {f(med(s, 'offered', 'p99_us'))} |")
c_best = min([x for x in (cost("coturn", "offered"), cost("coturn-multiplex", "offered")) if x] or [None], key=lambda v: v or 0)
t, x, ceil = cost("turnd", "offered"), cost("turnd-xdp", "offered"), cost("xdp-ceiling", "offered")
def r(a, b):
    return f"{a / b:.2f}×" if a and b else "n/a"
print()
print("| figure (server-core time per relayed packet, 100 B) | measured | target |")
print("|---|---|---|")
print(f"| turnd XDP / the better coturn | {r(x, c_best)} | ≤ 0.35× |")
print(f"| turnd XDP / turnd on sockets | {r(x, t)} | ≤ 0.5× |")
print(f"| turnd XDP / minimal XDP program | {r(x, ceil)} | ≤ 1.25× |")
print()
print("Every run (rate: relayed packets/s; busy: the server core's busy share):\n")
print("| round | server | workload | rate | busy % | p50 µs | p99 µs | loss % |")
print("|---|---|---|---|---|---|---|---|")
for r in rows:
    x = r["r"]
    print(f"| {r['round']} | {r['server']} | {r['workload']} | {f(x.get('rate'))} | {x.get('server_core_busy_pct')} "
          f"| {f(x.get('p50_us'), 1)} | {f(x.get('p99_us'), 1)} | {x.get('loss_pct')} |")
EOF

cat "$TABLE"
if [ "$WRITE" = 1 ]; then
  python3 - "$TABLE" "ROUNDS=$ROUNDS DURATION=$DURATION TOPOLOGY=veth bash benches/compare.sh" <<'EOF'
import sys, re
table, cmd = open(sys.argv[1]).read(), sys.argv[2]
begin, end = "<!-- compare-veth:begin -->", "<!-- compare-veth:end -->"
block = f"{begin}\nCommand: `{cmd}`\n\n{table}{end}"
text = open("BENCHMARKS.md").read()
if begin in text:
    text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
else:
    text = text.rstrip() + "\n\n## On a link: veth between two namespaces (benches/compare.sh TOPOLOGY=veth)\n\n" + block + "\n"
open("BENCHMARKS.md", "w").write(text)
EOF
  echo "compare.sh: BENCHMARKS.md updated" >&2
fi
