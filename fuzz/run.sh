#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 20: the CI smoke run).
# Long runs:  bash fuzz/run.sh 3600
# Needs cargo-fuzz (cargo install cargo-fuzz). The stable toolchain is enough:
# RUSTC_BOOTSTRAP=1 lets cargo-fuzz use the sanitizer flags it needs.
# The XDP program's fuzzer is BPF_PROG_TEST_RUN, not libFuzzer: as root,
#   XDP_FUZZ_RUNS=10000000 cargo test --test xdp the_programs_parser
set -euo pipefail
cd "$(dirname "$0")"
SECONDS_EACH="${1:-20}"
export RUSTC_BOOTSTRAP=1
targets=(stun_message stream_framing engine config proxy_header)
cargo fuzz build -O
logdir="$(mktemp -d)"
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  echo "== fuzz $t for ${SECONDS_EACH}s"
  # A finding exits non-zero and leaves the input in artifacts/$t/.
  if ! cargo fuzz run -O "$t" "corpus/$t" -- -max_total_time="$SECONDS_EACH" -print_final_stats=1 >"$logdir/$t.log" 2>&1; then
    tail -60 "$logdir/$t.log"
    echo "fuzz target $t FAILED; reproducer in fuzz/artifacts/$t/" >&2
    exit 1
  fi
  grep -E "^(Done|stat::number_of_executed_units)" "$logdir/$t.log" || true
done
