#!/usr/bin/env bash
# Builds target/debian/turnd_<version>-1_amd64.deb: the release binary, its man pages and
# shell completions (generated from the clap definitions), the systemd unit pointing at
# /usr/bin/turnd, the sysusers file, the example config as a conffile and the Grafana
# dashboard. Needs cargo-deb (cargo install cargo-deb), which .ci/deps installs.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked -p turnd --bin turnd
rm -rf target/package
mkdir -p target/package/man target/package/completions
target/release/turnd manpages target/package/man
gzip -9n target/package/man/*.1
for shell in bash zsh fish; do
  target/release/turnd completions "$shell" > "target/package/completions/$(
    case "$shell" in bash) echo turnd ;; zsh) echo _turnd ;; fish) echo turnd.fish ;; esac)"
done
sed 's|/usr/local/bin/turnd|/usr/bin/turnd|' deploy/turnd.service > target/package/turnd.service
cargo deb --no-build --strip -p turnd "$@"
ls target/debian/turnd_*.deb
