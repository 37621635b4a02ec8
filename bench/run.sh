#!/usr/bin/env bash
# Holds deltapush-mda against its targets (issue 6) and against what it competes with: /bin/true
# (the floor for a process start), curl (the obvious shell-script alternative), cat (a pipe).
# Every case first checks that the binary does the right thing, then times it; a wrong result
# or a crash fails the script in every mode, a missed target only with --strict.
#
# usage: bench/run.sh [--quick] [--strict] [--out FILE]
#   (default)  full run, a few minutes; writes doc/benchmarks.md
#   --quick    few runs, for CI: correctness is checked in full, timings are reported, not gated;
#              writes target/bench/benchmarks-quick.md unless --out is given
#   --strict   exit 2 when a target is missed
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

quick=false
strict=false
out=
while (($#)); do
  case $1 in
    --quick) quick=true ;;
    --strict) strict=true ;;
    --out) out=${2:?--out needs a file}; shift ;;
    -h | --help) sed -n '2,/^set -e/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;;
    *) echo "bench/run.sh: unknown argument $1 (see --help)" >&2; exit 64 ;;
  esac
  shift
done
if $quick; then
  out=${out:-target/bench/benchmarks-quick.md}
  warmup=5 runs=30 pipe_runs=3 seq_n=100 seq_runs=3
else
  out=${out:-doc/benchmarks.md}
  warmup=50 runs=300 pipe_runs=10 seq_n=1000 seq_runs=10
fi
notify_runs=$((runs / 3)) # each notify run is a round trip: fewer suffice

die() {
  echo "bench/run.sh: $*" >&2
  exit 1
}

# hyperfine 1.15 (Debian's) lacks --input, and start-up must be timed without a shell in between.
hyperfine_version=1.20.0
find_hyperfine() {
  local h
  for h in "${HYPERFINE:-}" "${CARGO_HOME:-$HOME/.cargo}/bin/hyperfine" "$(command -v hyperfine || true)"; do
    if [[ -x $h ]] && "$h" --help 2>/dev/null | grep -q -- '--input'; then
      echo "$h"
      return
    fi
  done
  return 1
}
if ! hf=$(find_hyperfine); then
  echo "bench/run.sh: installing hyperfine $hyperfine_version (Debian's has no --input)" >&2
  cargo install --quiet --locked --version "$hyperfine_version" hyperfine
  hf=$(find_hyperfine) || die "hyperfine with --input not found after cargo install"
fi
for tool in python3 curl cc strace /usr/bin/time; do
  command -v "$tool" >/dev/null || die "$tool is missing: run .ci/setup"
done

cargo build --release --locked --quiet
# Wherever CARGO_TARGET_DIR or a cargo config puts it.
target=$(cargo metadata --format-version 1 --no-deps --locked |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
bin=$target/release/deltapush-mda
# The builds the shipped one was chosen over, timed side by side in full runs: name, RUSTFLAGS.
alt_names=("static glibc, static-pie (+crt-static)"
  "static glibc, not PIE (+crt-static, relocation-model=static)")
alt_flags=("-C target-feature=+crt-static"
  "-C target-feature=+crt-static -C relocation-model=static")
alt_bins=()
if ! $quick; then
  host=$(rustc -vV | sed -n 's/^host: //p')
  for i in "${!alt_names[@]}"; do
    # --target keeps RUSTFLAGS off the host build: a proc-macro cannot be linked statically.
    RUSTFLAGS=${alt_flags[i]} cargo build --release --locked --quiet \
      --target "$host" --target-dir "$target/bench-alt$i"
    alt_bins+=("$target/bench-alt$i/$host/release/deltapush-mda")
  done
fi

work=$(mktemp -d)
relay_pid=
cleanup() {
  [[ -n $relay_pid ]] && kill "$relay_pid" 2>/dev/null
  # The deferred senders of the 1 h interval would wait for an hour.
  pkill -f -- "--send-deferred .*--cache-dir $work/" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
cd "$work"

# Realistic notify tokens (openpgp, 920 bytes, as in tests/common), kept in files: a token is
# never shown whole, and getmail setups use --token-file too.
token() {
  local t="openpgp:wcFMA$(printf %04d "$1")x/y+z"
  while ((${#t} < 920)); do t+="AbCdEf0123+/"; done
  echo "$t=="
}
token 1 >one
for n in 1 2 3 4 5; do token "$n"; done >five
token 6 >limited
cat five limited >all
printf %s "$(cat one)" >one.raw # curl posts the file as is: no newline

coproc RELAY { exec python3 "$root/bench/relay.py" all; }
relay_pid=$RELAY_PID
read -r -t 10 port <&"${RELAY[0]}" || die "the stand-in relay did not start"
url=http://127.0.0.1:$port/notify

relay_seen=0
# Checks that the relay got exactly $1 more good posts since the last check, and no bad one.
expect_posts() {
  local want=$1 what=$2 posts bad
  read -r posts bad < <(curl -sf "http://127.0.0.1:$port/count") || die "relay count unreadable"
  ((bad == 0)) || die "$what: the relay got $bad posts that are not a known token"
  ((posts - relay_seen == want)) || die "$what: the relay got $((posts - relay_seen)) posts, expected $want"
  relay_seen=$posts
}

printf 'From: alice@example.org\nTo: bob@example.net\nSubject: hi\nMessage-ID: <1@example.org>\nDate: Tue, 1 Oct 2024 10:00:00 +0000\n\nhello\n' >plain.eml
printf 'From: mailer-daemon@example.net\nTo: bob@example.net\nSubject: Out of office\nAuto-Submitted: auto-replied\nDate: Tue, 1 Oct 2024 10:00:00 +0000\n\naway\n' >auto.eml

# The command lines timed below. Everything goes through the relay URL, so a skip that wrongly
# posts shows up in the count.
args_skip=(--url "$url" --token-file one --cache-dir cache-skip)
# Inside a 1 h interval with a sender already waiting: the path of every message but the first
# in a burst.
args_limited=(--url "$url" --token-file limited --cache-dir cache-limited --interval 1h)
args_one=(--url "$url" --token-file one --cache-dir cache-notify --interval 0)
args_five=(--url "$url" --token-file five --cache-dir cache-notify --interval 0)

# Runs the binary once on stdin $1 and insists on exit 0 and a stderr matching the glob $2.
check() {
  local input=$1 want=$2 err rc=0
  shift 2
  err=$("$@" <"$input" 2>&1 >/dev/null) || rc=$?
  ((rc == 0)) || die "$* <$input: exit $rc, stderr: $err"
  # shellcheck disable=SC2053 # a glob on purpose
  [[ $err == $want ]] || die "$* <$input: stderr was '$err', expected '$want'"
}

# A path that sends nothing must not touch the network or the certificate store.
check_no_tls() {
  local input=$1
  shift
  strace -f -qq -o trace -e trace=openat,open,socket,connect "$@" <"$input" >/dev/null 2>&1 \
    || die "$* under strace failed"
  if grep -E 'socket\(|connect\(|/etc/ssl|ca-certificates|\.pem|\.crt' trace; then
    die "$*: the non-sending path opened a socket or the certificate store (above)"
  fi
}

bins=("$bin")
bins+=("${alt_bins[@]}")
for b in "${bins[@]}"; do
  check auto.eml "" "$b" "${args_skip[@]}"
  check auto.eml "deltapush-mda: skipped: auto-submitted (auto-replied)" "$b" -v "${args_skip[@]}"
  check_no_tls auto.eml "$b" "${args_skip[@]}"
  check plain.eml "" "$b" "${args_limited[@]}" # notifies once: the interval starts
  expect_posts 1 "first notification of the deferred token"
  # Starts the sender (strace -f below would follow one into its hour of sleep).
  check plain.eml "deltapush-mda: token openpgp#????????: deferred by 3[56][0-9][0-9] s" "$b" -v "${args_limited[@]}"
  pgrep -f -- "--send-deferred .*--cache-dir $work/cache-limited" >/dev/null || die "no deferred sender waits"
  check_no_tls plain.eml "$b" "${args_limited[@]}"
  check plain.eml "" "$b" "${args_five[@]}"
  expect_posts 5 "five tokens"
  # A host name, not an address: getaddrinfo and NSS (/etc/hosts) work in this build too.
  check plain.eml "" "$b" --url "http://localhost:$port/notify" --token-file one \
    --cache-dir cache-notify --interval 0
  expect_posts 1 "notify through a host name"
  rm -f cache-limited/*
done
check plain.eml "" "$bin" "${args_limited[@]}"
expect_posts 1 "the interval for the deferral cases"
check plain.eml "" "$bin" "${args_limited[@]}"
expect_posts 0 "checks"

# hyperfine ... into JSON file $1 (a failing run fails the script: hyperfine checks exit codes).
bench() {
  local json=$1
  shift
  "$hf" --style basic --export-json "$json" "$@"
}
# The medians in seconds, one per command, of JSON file $1.
medians() {
  python3 -c 'import json,sys; print(*(r["median"] for r in json.load(open(sys.argv[1]))["results"]))' "$1"
}
q() { printf '%q ' "$@"; }

rows=()
missed=0
# row CASE AGAINST OURS THEIRS RATIO TARGET PASS(1/0)
row() {
  local verdict=pass
  if (($7 == 0)); then
    verdict="**missed**"
    missed=$((missed + 1))
  fi
  rows+=("| $1 | $2 | $3 | $4 | $5 | $6 | $verdict |")
}
ms() { awk -v s="$1" 'BEGIN { printf "%.3f ms", s * 1000 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f×", a / b }'; }
le() { awk -v a="$1" -v b="$2" -v t="$3" 'BEGIN { print (a / b <= t) ? 1 : 0 }'; }

start_cases() {
  local label=$1 b=$2
  # Skip of automatic mail.
  bench skip.json -N --input auto.eml --warmup "$warmup" --runs "$runs" \
    -n "deltapush-mda$label, Auto-Submitted" "$(q "$b" "${args_skip[@]}")" \
    -n "/bin/true" /bin/true
  read -r ours theirs < <(medians skip.json)
  expect_posts 0 "Auto-Submitted skip"
  row "Auto-Submitted skip, small message on stdin$label" "\`/bin/true\`, same stdin" \
    "$(ms "$ours")" "$(ms "$theirs")" "$(ratio "$ours" "$theirs")" "≤ 1.25×" "$(le "$ours" "$theirs" 1.25)"

  bench limited.json -N --input plain.eml --warmup "$warmup" --runs "$runs" \
    -n "deltapush-mda$label, deferred" "$(q "$b" "${args_limited[@]}")" \
    -n "/bin/true" /bin/true
  read -r ours theirs < <(medians limited.json)
  expect_posts 0 "deferral"
  row "deferral to a waiting sender$label" "\`/bin/true\`, same stdin" \
    "$(ms "$ours")" "$(ms "$theirs")" "$(ratio "$ours" "$theirs")" "≤ 1.25×" "$(le "$ours" "$theirs" 1.25)"

  # Sequential invocations, spawned by a minimal caller (no shell per run on either side).
  bench seq.json -N --warmup 1 --runs "$seq_runs" \
    -n "$seq_n × deltapush-mda$label" "$(q ./repeat "$seq_n" plain.eml "$b" "${args_limited[@]}")" \
    -n "$seq_n × /bin/true" "$(q ./repeat "$seq_n" plain.eml /bin/true)"
  read -r ours theirs < <(medians seq.json)
  expect_posts 0 "$seq_n sequential deferred runs"
  row "$seq_n sequential invocations, deferred$label" "$seq_n × \`/bin/true\`" \
    "$(ms "$ours")" "$(ms "$theirs")" "$(ratio "$ours" "$theirs")" "≤ 1.25×" "$(le "$ours" "$theirs" 1.25)"
}

cc -O2 -o repeat "$root/bench/repeat.c"

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
start_cases "" "$bin"

# Notify: one token vs curl, and five tokens over one connection vs five single runs.
bench notify.json -N --input plain.eml --warmup "$warmup" --runs "$notify_runs" \
  -n "deltapush-mda, 1 token" "$(q "$bin" "${args_one[@]}")" \
  -n "deltapush-mda, 5 tokens" "$(q "$bin" "${args_five[@]}")" \
  -n "curl, 1 token" "curl -sf -o /dev/null --data-binary @one.raw $url"
read -r one five curl < <(medians notify.json)
expect_posts $(((warmup + notify_runs) * 7)) "notify cases"
row "notify one token to a local relay (http)" "\`curl -s -o /dev/null --data-binary TOKEN URL\`" \
  "$(ms "$one")" "$(ms "$curl")" "$(ratio "$one" "$curl")" "≤ 0.4×" "$(le "$one" "$curl" 0.4)"
five_single=$(awk -v s="$one" 'BEGIN { print 5 * s }')
row "notify 5 tokens (connection reuse)" "5 × the one-token case" \
  "$(ms "$five")" "$(ms "$five_single")" "$(ratio "$five" "$five_single")" "≤ 0.5×" "$(le "$five" "$five_single" 0.5)"

# 150 MB through a pipe; the writer must not see EPIPE, so cat must exit 0.
python3 - <<'EOF'
line = b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAxMjM0NTY3\n"
with open("big.eml", "wb") as f:
    f.write(b"From: alice@example.org\nTo: bob@example.net\nSubject: video\n"
            b"MIME-Version: 1.0\nContent-Type: video/mp4\nContent-Transfer-Encoding: base64\n\n")
    chunk = line * (1024 * 1024 // len(line))
    for _ in range(150):
        f.write(chunk)
EOF
set +e
cat big.eml | /usr/bin/time -f %M -o rss "$bin" "${args_limited[@]}"
status=("${PIPESTATUS[@]}")
set -e
[[ ${status[*]} == "0 0" ]] || die "150 MB pipe: exit statuses (cat, deltapush-mda) were ${status[*]}"
rss_kib=$(tail -n1 rss)
bench pipe.json --warmup 1 --runs "$pipe_runs" \
  -n "cat big.eml | deltapush-mda" "cat big.eml | $(q "$bin" "${args_limited[@]}")" \
  -n "cat big.eml | cat" "cat big.eml | cat >/dev/null"
read -r ours theirs < <(medians pipe.json)
expect_posts 0 "150 MB pipe"
size_mb=$(awk -v b="$(stat -c %s big.eml)" 'BEGIN { printf "%.0f", b / 1048576 }')
row "$size_mb MiB message through a pipe (wall)" "\`cat big.eml \\| cat > /dev/null\`" \
  "$(ms "$ours")" "$(ms "$theirs")" "$(ratio "$ours" "$theirs")" "≤ 1.3×" "$(le "$ours" "$theirs" 1.3)"
row "$size_mb MiB message through a pipe (peak RSS)" "—" \
  "$(awk -v k="$rss_kib" 'BEGIN { printf "%.1f MiB", k / 1024 }')" "—" "—" "≤ 8 MiB" \
  "$(awk -v k="$rss_kib" 'BEGIN { print (k <= 8192) ? 1 : 0 }')"

size=$(stat -c %s "$bin")
row "stripped release binary" "—" "$(awk -v b="$size" 'BEGIN { printf "%.2f MB", b / 1e6 }')" "—" "—" "≤ 4 MB" \
  "$(awk -v b="$size" 'BEGIN { print (b <= 4e6) ? 1 : 0 }')"

alt_rows=()
if ((${#alt_bins[@]})); then
  shipped_rows=("${rows[@]}")
  rows=()
  saved_missed=$missed
  for i in "${!alt_bins[@]}"; do
    start_cases ", ${alt_names[i]}" "${alt_bins[i]}"
    alt_size=$(stat -c %s "${alt_bins[i]}")
    row "release binary, ${alt_names[i]}" "—" "$(awk -v b="$alt_size" 'BEGIN { printf "%.2f MB", b / 1e6 }')" "—" "—" "≤ 4 MB" \
      "$(awk -v b="$alt_size" 'BEGIN { print (b <= 4e6) ? 1 : 0 }')"
  done
  alt_rows=("${rows[@]}")
  rows=("${shipped_rows[@]}")
  missed=$saved_missed # the alternatives are for comparison, not what ships
fi
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)
virt=$(lscpu 2>/dev/null | sed -n 's/^Hypervisor vendor:[[:space:]]*//p')
cd "$root"
mkdir -p "$(dirname "$out")"
{
  echo "# Benchmarks"
  echo
  echo "Generated by \`bash bench/run.sh$($quick && echo ' --quick')\` on $(date -u '+%Y-%m-%d %H:%M UTC'). Times are medians"
  echo "of $runs runs ($notify_runs for notify, $pipe_runs for the pipe, $seq_runs for the sequential case),"
  echo "after $warmup warm-up runs; each case is checked for the right result (exit status, stderr, posts"
  echo "received by the stand-in relay) before it is timed."
  echo
  echo "| case | compared against | deltapush-mda | baseline | ratio | target | result |"
  echo "|---|---|---|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
  if ((${#alt_rows[@]})); then
    echo
    echo "The start-up cases for the builds not shipped (see README, Performance):"
    echo
    echo "| case | compared against | deltapush-mda | baseline | ratio | target | result |"
    echo "|---|---|---|---|---|---|---|"
    printf '%s\n' "${alt_rows[@]}"
  fi
  echo
  echo "Machine: $cpu${virt:+ ($virt guest)}, $(nproc) cores, $(uname -sr), $(ldd --version | head -n1 | sed 's/^ldd //'),"
  echo "$(rustc -V), $("$hf" --version), load average $load_before before and $load_after after."
} >"$out"
cat "$out"
echo "bench/run.sh: wrote $out; $missed target(s) missed" >&2
if $strict && ((missed > 0)); then
  exit 2
fi
