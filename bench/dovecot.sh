#!/usr/bin/env bash
# Instant push on your own Dovecot (issue 13): delivery-to-POST latency of the Sieve route next to
# the getmail IDLE route, and LMTP deliveries per second with and without the Sieve setup, with
# the files of examples/dovecot/ as shipped. The work is done by bench/dovecot.py, which starts
# and stops a Dovecot of its own on 127.0.0.1 and checks every case before it reports it.
#
# usage: bench/dovecot.sh [--quick] [--out FILE]
#   (default)  full run, about a minute; writes doc/dovecot.md
#   --quick    few samples, for CI; writes target/bench/dovecot-quick.md unless --out is given
set -euo pipefail
cd "$(dirname "$0")/.."

quick=()
out=
while (($#)); do
  case $1 in
    --quick) quick=(--quick) ;;
    --out) out=${2:?--out needs a file}; shift ;;
    -h | --help) sed -n '2,/^set -e/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;;
    *) echo "bench/dovecot.sh: unknown argument $1 (see --help)" >&2; exit 64 ;;
  esac
  shift
done
if ((${#quick[@]})); then
  out=${out:-target/bench/dovecot-quick.md}
else
  out=${out:-doc/dovecot.md}
fi
mkdir -p "$(dirname "$out")"

for tool in python3 dovecot doveadm sievec getmail openssl; do
  PATH=$PATH:/usr/sbin command -v "$tool" >/dev/null || {
    echo "bench/dovecot.sh: $tool is missing: run .ci/setup" >&2
    exit 1
  }
done
cargo build --release --locked --quiet
# Wherever CARGO_TARGET_DIR or a cargo config puts it.
target=$(cargo metadata --format-version 1 --no-deps --locked |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
PATH=$PATH:/usr/sbin exec python3 bench/dovecot.py "$target/release/deltapush-mda" "$out" "${quick[@]}"
