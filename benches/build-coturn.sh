#!/usr/bin/env bash
# Builds the comparator for benches/compare.sh and benches/tcp_relay.sh: a coturn release
# from its source, with -O2, into benches/coturn/ (ignored by git). Both scripts use it when
# it is there, else Debian's turnserver (4.6.1, two years behind).
#
#   COTURN_SRC=/path/to/coturn-4.17.1 bash benches/build-coturn.sh
#
# COTURN_SRC is an unpacked release: the tarball from github.com/coturn/coturn/releases, or
# `git archive 4.17.1` of a clone. Needs libevent-dev and libssl-dev (apt).
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=${COTURN_SRC:?set COTURN_SRC to an unpacked coturn release}
for p in libevent-dev libssl-dev; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || {
    echo "build-coturn.sh: $p is missing (apt-get install $p)" >&2
    exit 1
  }
done
DEST=$PWD/benches/coturn
LOG=$(mktemp)
(cd "$SRC" && CFLAGS=-O2 ./configure --prefix="$DEST" && make -j"$(nproc)") >"$LOG" 2>&1 || { tail -30 "$LOG" >&2; exit 1; }
mkdir -p "$DEST/bin"
cp "$SRC"/bin/turnserver "$SRC"/bin/turnutils_uclient "$DEST/bin/"
"$DEST/bin/turnserver" --version
