#!/usr/bin/env bash
# deltapush-mda --watch against getmail --idle (issue 17, "Measure"), side by side in one run on
# one Dovecot 2.3 of the bench's own (IMAP over TLS on 127.0.0.1, a CA made for the run), each
# contender with an account and a stand-in relay of its own: delivery → POST (median, p99) and
# missed messages over singles, close pairs, a chat message right after an automatic one and
# bursts; CPU seconds, peak RSS and wakeups over an idle period and over a stream of messages.
# The work is done by bench/watch.py, which starts and stops every server and process itself.
# Exits 1 when the watcher missed a message, its idle peak RSS is above 8 MiB, or a check failed.
#
# usage: bench/watch.sh [--quick] [--out FILE] [--bin FILE]
#   (default)  10 minutes idle and 1000 messages, about 20 minutes; writes doc/watch.md
#   --quick    30 s idle, fewer messages, about 80 s, for CI (.ci/run); writes
#              target/bench/watch-quick.md unless --out is given
#   --bin      bench this deltapush-mda instead of building target/release's (say, a build of
#              a clean checkout while the work tree has changes)
set -euo pipefail
cd "$(dirname "$0")/.."
# The command line, for the report.
export DELTAPUSH_BENCH_CMD="bash bench/watch.sh${*:+ $*}"

opts=()
out=
bin=
while (($#)); do
  case $1 in
    --quick) opts+=(--quick) ;;
    --out) out=${2:?--out needs a file}; shift ;;
    --bin) bin=${2:?--bin needs a file}; shift ;;
    -h | --help) sed -n '2,/^set -e/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;;
    *) echo "bench/watch.sh: unknown argument $1 (see --help)" >&2; exit 64 ;;
  esac
  shift
done
if [[ " ${opts[*]-} " == *" --quick "* ]]; then
  out=${out:-target/bench/watch-quick.md}
else
  out=${out:-doc/watch.md}
fi

for tool in python3 openssl getmail strace /usr/sbin/dovecot; do
  command -v "$tool" >/dev/null || {
    echo "bench/watch.sh: $tool is missing: run .ci/setup" >&2
    exit 1
  }
done
if [[ -z $bin ]]; then
  cargo build --release --locked --quiet
  # Wherever CARGO_TARGET_DIR or a cargo config puts it.
  target=$(cargo metadata --format-version 1 --no-deps --locked |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
  bin=$target/release/deltapush-mda
  # What was built, for the report: the commit, and whether the sources had changes on top.
  if rev=$(git rev-parse --short HEAD 2>/dev/null); then
    git diff --quiet HEAD -- src Cargo.toml Cargo.lock build.rs 2>/dev/null || rev+=" with uncommitted changes"
    export DELTAPUSH_BENCH_REV=${DELTAPUSH_BENCH_REV:-commit $rev}
  fi
fi
[[ -x $bin ]] || { echo "bench/watch.sh: $bin is not an executable" >&2; exit 1; }
exec python3 bench/watch.py "$bin" "$out" "${opts[@]}"
