#!/usr/bin/env bash
# Instant push on your own Dovecot (issue 16), on the host's Dovecot 2.3 and on Debian 13's 2.4
# (the root .ci/setup makes, under chroot: needs root), with the files of examples/dovecot/ as
# shipped: delivery to POST, and whether every POST came after its message was in the Maildir;
# the LMTP reply of a delivery that posts, of one that does not, of a stock Dovecot, and with a
# relay that never answers; LMTP deliveries per second against stock. The work is done by
# bench/dovecot.py, which starts and stops Dovecots of its own on 127.0.0.1 and checks every
# case before it reports it. Exits 1 when a POST came before its message, or a delivery waited
# 1 s or more for a relay that never answers (in every mode).
#
# usage: bench/dovecot.sh [--quick] [--only 2.3|2.4] [--out FILE]
#   (default)  full run, about 2 minutes; writes doc/dovecot.md
#   --quick    few samples and no getmail comparison, for CI (.ci/run); writes
#              target/bench/dovecot-quick.md unless --out is given
#   --only     one version (2.3 needs no root)
set -euo pipefail
cd "$(dirname "$0")/.."

opts=()
out=
while (($#)); do
  case $1 in
    --quick) opts+=(--quick) ;;
    --only) opts+=(--only "${2:?--only needs 2.3 or 2.4}"); shift ;;
    --out) out=${2:?--out needs a file}; shift ;;
    -h | --help) sed -n '2,/^set -e/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;;
    *) echo "bench/dovecot.sh: unknown argument $1 (see --help)" >&2; exit 64 ;;
  esac
  shift
done
if [[ " ${opts[*]-} " == *" --quick "* ]]; then
  out=${out:-target/bench/dovecot-quick.md}
else
  out=${out:-doc/dovecot.md}
fi

for tool in python3 unshare openssl; do
  command -v "$tool" >/dev/null || {
    echo "bench/dovecot.sh: $tool is missing: run .ci/setup" >&2
    exit 1
  }
done
cargo build --release --locked --quiet
# Wherever CARGO_TARGET_DIR or a cargo config puts it.
target=$(cargo metadata --format-version 1 --no-deps --locked |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
PATH=$PATH:/usr/sbin exec python3 bench/dovecot.py "$target/release/deltapush-mda" "$out" "${opts[@]}"
