#!/usr/bin/env bash
# Builds the Debian package and checks it as an operator meets it: lintian, install, the
# installed config, STUN served by the installed binary as the turnd user, the man page,
# and purge. Installs into this machine, so it needs root (CI runs as root).
set -euo pipefail
cd "$(dirname "$0")/.."

bash packaging/build-deb.sh
deb="$(ls -t target/debian/turnd_*_amd64.deb | head -1)"

echo "== lintian"
# Errors and warnings fail; the overrides shipped in the package explain the rest, one line
# each (packaging/debian/lintian-overrides).
lintian --fail-on error,warning --tag-display-limit 0 "$deb"

echo "== install"
dpkg --purge turnd >/dev/null 2>&1 || true
dpkg -i "$deb"
test -x /usr/bin/turnd
getent passwd turnd >/dev/null
test "$(stat -c '%U %a' /var/lib/turnd)" = "turnd 700"
test "$(stat -c '%U:%G %a' /etc/turnd/turnd.toml)" = "root:turnd 640"

echo "== check-config on the installed config"
/usr/bin/turnd check-config --config /etc/turnd/turnd.toml >/dev/null

echo "== STUN from the installed binary, as the turnd user"
work="$(mktemp -d)"
chown turnd:turnd "$work"
cat > "$work/turnd.toml" <<CONF
[[listen]]
address = "127.0.0.1:0"
protocols = ["udp"]
[metrics]
listen = "off"
[admin]
socket = "$work/admin.sock"
[auth]
users_file = "$work/users.toml"
CONF
chown turnd:turnd "$work/turnd.toml"
setpriv --reuid=turnd --regid=turnd --init-groups /usr/bin/turnd serve --config "$work/turnd.toml" 2>"$work/log" &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 100); do grep -q "turnd ready" "$work/log" && break; sleep 0.1; done
grep -q "turnd ready" "$work/log" || { cat "$work/log"; exit 1; }
test "$(ps -o user= -p "$pid")" = "turnd"
# Port 0 picks a free port; the log says which.
port="$(grep -o 'transport=udp address=127.0.0.1:[0-9]*' "$work/log" | head -1 | sed 's/.*://')"
test -n "$port"
turnutils_stunclient -p "$port" 127.0.0.1 | tee "$work/stun" | grep -q "UDP reflexive addr: 127.0.0.1:"
kill -TERM "$pid"
wait "$pid"

echo "== man turnd"
man -P cat turnd | grep -q "turnd-serve"
man -P cat turnd-user-add | grep -q -- "--password-stdin"
test -s /usr/share/bash-completion/completions/turnd

echo "== purge"
dpkg --purge turnd
for gone in /usr/bin/turnd /etc/turnd /var/lib/turnd /lib/systemd/system/turnd.service /usr/share/man/man1/turnd.1.gz; do
  if [ -e "$gone" ]; then echo "$gone is left after purge" >&2; exit 1; fi
done
# Debian policy keeps the system user (its uid may own files elsewhere).
getent passwd turnd >/dev/null
echo "package OK: $deb"
