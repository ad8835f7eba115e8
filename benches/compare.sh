#!/usr/bin/env bash
# Side by side on loopback: `wasmgate run` and `wasmtime serve` (wasmtime-cli of the very
# wasmtime version wasmgate is built on) serve the same `plain-hello` component; `wrk` drives
# both with the same connections and duration, in alternating runs. Prints requests/s,
# p50 / p99 latency, start and peak RSS and reserved address space of both, and the ratios.
#
#   benches/compare.sh                      # defaults below
#   ROUNDS=5 DURATION=15 CONNECTIONS=32 benches/compare.sh
#   GATE_ARGS="--reuse 128" benches/compare.sh   # wasmgate with instance reuse
#
# Needs: cargo (builds wasmgate in release and, once, wasmtime-cli into $PEER_DIR, outside the
# repository), wrk (installed with apt-get when missing and running as root), curl, Linux /proc.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD

PEER_DIR=${PEER_DIR:-/tmp/wasmgate-peer}
CONNECTIONS=${CONNECTIONS:-16}
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
WRK_THREADS=${WRK_THREADS:-1}
WARMUP=${WARMUP:-3}
PEER_PORT=${PEER_PORT:-18181}
GATE_PORT=${GATE_PORT:-18182}
# Extra arguments of `wasmgate run` (word-split), e.g. `--reuse 128`.
GATE_ARGS=${GATE_ARGS:-}

say() { printf '==> %s\n' "$*" >&2; }

# --- tools -------------------------------------------------------------------------------
if ! command -v wrk >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        say "installing wrk (apt-get)"
        apt-get install -y wrk >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y wrk >/dev/null; }
    else
        echo "error: wrk is required (Debian/Ubuntu: sudo apt-get install wrk)" >&2
        exit 1
    fi
fi
command -v curl >/dev/null 2>&1 || { echo "error: curl is required" >&2; exit 1; }

# The wasmtime version wasmgate is built with, from Cargo.lock.
WASMTIME_VERSION=$(awk '$0 == "name = \"wasmtime\"" { getline; gsub(/"/, "", $3); print $3; exit }' Cargo.lock)
[ -n "$WASMTIME_VERSION" ] || { echo "error: no wasmtime in Cargo.lock" >&2; exit 1; }
WASMTIME="$PEER_DIR/bin/wasmtime"
if ! "$WASMTIME" --version 2>/dev/null | grep -q "^wasmtime $WASMTIME_VERSION\b"; then
    say "building wasmtime-cli $WASMTIME_VERSION into $PEER_DIR (once; takes a while)"
    cargo install wasmtime-cli --version "$WASMTIME_VERSION" --locked --root "$PEER_DIR"
fi

say "building wasmgate (release) and the example guests"
cargo build --release -p wasmgate
cargo build -p wasmgate-examples
GATE="$ROOT/target/release/wasmgate"
GUEST="$ROOT/target/guests/wasm32-wasip2/release/plain_hello.wasm"
[ -f "$GUEST" ] || { echo "error: $GUEST was not built" >&2; exit 1; }

# --- servers -----------------------------------------------------------------------------
WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

wait_ready() { # url
    for _ in $(seq 1 600); do
        if curl -sf -o /dev/null "$1"; then return 0; fi
        sleep 0.05
    done
    echo "error: $1 did not answer" >&2
    return 1
}

status_kib() { # pid field
    awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"
}

# `-Scli`: link all of WASI p2 besides wasi:http, as wasmgate does (Rust std guests import
# wasi:cli even when they only serve HTTP). Everything else is wasmtime serve's default.
"$WASMTIME" serve -Scli --addr "127.0.0.1:$PEER_PORT" "$GUEST" >"$WORK/wasmtime.log" 2>&1 &
PEER_PID=$!
PIDS+=("$PEER_PID")
# shellcheck disable=SC2086
WASMGATE_LOG=warn "$GATE" run "$GUEST" $GATE_ARGS --listen "127.0.0.1:$GATE_PORT" --state-dir "$WORK/state" \
    >"$WORK/wasmgate.log" 2>&1 &
GATE_PID=$!
PIDS+=("$GATE_PID")

wait_ready "http://127.0.0.1:$PEER_PORT/"
wait_ready "http://127.0.0.1:$GATE_PORT/"
body_peer=$(curl -s "http://127.0.0.1:$PEER_PORT/")
body_gate=$(curl -s "http://127.0.0.1:$GATE_PORT/")
[ "$body_peer" = "$body_gate" ] || { echo "error: the two servers answer differently" >&2; exit 1; }
sleep 1
declare -A START_RSS START_VM
START_RSS[wasmtime]=$(status_kib "$PEER_PID" VmRSS)
START_VM[wasmtime]=$(status_kib "$PEER_PID" VmSize)
START_RSS[wasmgate]=$(status_kib "$GATE_PID" VmRSS)
START_VM[wasmgate]=$(status_kib "$GATE_PID" VmSize)

declare -A URL=([wasmtime]="http://127.0.0.1:$PEER_PORT/" [wasmgate]="http://127.0.0.1:$GATE_PORT/")

# --- load ----------------------------------------------------------------------------------
# wrk prints latencies as 123.45us / 1.23ms / 1.00s: normalise to ms.
to_ms() {
    awk '{ v = $1; if (v ~ /us$/) { sub(/us$/, "", v); v /= 1000 } else if (v ~ /ms$/) { sub(/ms$/, "", v) } else if (v ~ /m$/) { sub(/m$/, "", v); v *= 60000 } else if (v ~ /s$/) { sub(/s$/, "", v); v *= 1000 } printf "%.4f\n", v }'
}

run_wrk() { # name round
    local out="$WORK/$1.$2.txt"
    wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency "${URL[$1]}" >"$out"
    local rps p50 p99 errors
    rps=$(awk '/^Requests\/sec:/ { print $2 }' "$out")
    p50=$(awk '$1 == "50%" { print $2 }' "$out" | to_ms)
    p99=$(awk '$1 == "99%" { print $2 }' "$out" | to_ms)
    errors=$(awk '/Non-2xx or 3xx responses:/ { n += $NF } /Socket errors:/ { gsub(/,/, ""); n += $4 + $6 + $8 + $10 } END { print n + 0 }' "$out")
    echo "$1 $2 $rps $p50 $p99 $errors" >>"$WORK/results"
    say "round $2 $1: $rps req/s, p50 $p50 ms, p99 $p99 ms, errors $errors"
    if [ "$errors" != 0 ]; then grep -E "Non-2xx|Socket errors" "$out" >&2 || true; fi
}

say "warm-up (${WARMUP}s each), then $ROUNDS alternating rounds of ${DURATION}s, $CONNECTIONS connections, $WRK_THREADS wrk thread(s)"
wrk -t1 -c"$CONNECTIONS" -d"${WARMUP}s" "${URL[wasmtime]}" >/dev/null
wrk -t1 -c"$CONNECTIONS" -d"${WARMUP}s" "${URL[wasmgate]}" >/dev/null
: >"$WORK/results"
for round in $(seq 1 "$ROUNDS"); do
    if [ $((round % 2)) = 1 ]; then order="wasmtime wasmgate"; else order="wasmgate wasmtime"; fi
    for name in $order; do run_wrk "$name" "$round"; done
done

declare -A PEAK
PEAK[wasmtime]=$(status_kib "$PEER_PID" VmHWM)
PEAK[wasmgate]=$(status_kib "$GATE_PID" VmHWM)

# --- report --------------------------------------------------------------------------------
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
range() { sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%s..%s", lo, hi }'; }
col() { awk -v n="$1" -v c="$2" '$1 == n { print $c }' "$WORK/results"; }

declare -A RPS P50 P99 ERR
for name in wasmtime wasmgate; do
    RPS[$name]=$(col "$name" 3 | median)
    P50[$name]=$(col "$name" 4 | median)
    P99[$name]=$(col "$name" 5 | median)
    ERR[$name]=$(col "$name" 6 | awk '{ n += $1 } END { print n + 0 }')
done

echo
echo "wasmtime $WASMTIME_VERSION (wasmtime-cli, \`serve -Scli\`) vs wasmgate $("$GATE" --version | awk '{print $2}') on $(nproc) CPU(s): $(lscpu | awk -F: '/^Model name/ { gsub(/^ +/, "", $2); print $2; exit }'), Linux $(uname -r)"
echo "component: plain-hello ($(stat -c %s "$GUEST") bytes); wasmgate run ${GATE_ARGS:-(no extra arguments)}; wrk -t$WRK_THREADS -c$CONNECTIONS -d${DURATION}s, $ROUNDS alternating rounds; medians (min..max)"
echo
printf '| %-30s | %-28s | %-28s | %-9s |\n' "metric" "wasmtime serve" "wasmgate run" "ratio"
printf '| %-30s | %-28s | %-28s | %-9s |\n' "---" "---:" "---:" "---:"
row() { # label col unit ratio-direction-note
    local a b
    a="$(col wasmtime "$2" | median) ($(col wasmtime "$2" | range))"
    b="$(col wasmgate "$2" | median) ($(col wasmgate "$2" | range))"
    printf '| %-30s | %-28s | %-28s | %-9s |\n' "$1" "$a" "$b" "$(awk -v x="$(col wasmgate "$2" | median)" -v y="$(col wasmtime "$2" | median)" 'BEGIN { printf "%.3gx", x / y }')"
}
row "requests/s" 3
row "p50 latency (ms)" 4
row "p99 latency (ms)" 5
printf '| %-30s | %-28s | %-28s | %-9s |\n' "errors (non-2xx, socket)" "${ERR[wasmtime]}" "${ERR[wasmgate]}" ""
kib_row() { # label wasmtime-kib wasmgate-kib unit-divisor unit
    printf '| %-30s | %-28s | %-28s | %-9s |\n' "$1" \
        "$(awk -v v="$2" -v d="$4" -v u="$5" 'BEGIN { printf "%.1f %s", v / d, u }')" \
        "$(awk -v v="$3" -v d="$4" -v u="$5" 'BEGIN { printf "%.1f %s", v / d, u }')" \
        "$(awk -v x="$3" -v y="$2" 'BEGIN { printf "%.3gx", x / y }')"
}
# The two runs of a round are adjacent in time and share the machine's conditions; the
# median of the per-round ratios is less exposed to load drift than the ratio of medians.
pair_row() { # label col
    local ratios
    ratios=$(awk -v c="$2" '{ v[$1 " " $2] = $c; r[$2] = 1 } END { for (k in r) if (("wasmtime " k) in v && ("wasmgate " k) in v) print v["wasmgate " k] / v["wasmtime " k] }' "$WORK/results")
    printf '| %-30s | %-28s | %-28s | %-9s |\n' "$1" "" "($(echo "$ratios" | range | awk -F'[.][.]' '{ printf "%.3g..%.3g", $1, $2 }'))" "$(echo "$ratios" | median | awk '{ printf "%.3gx", $1 }')"
}
pair_row "requests/s, per-round ratio" 3
pair_row "p99, per-round ratio" 5
kib_row "RSS after start" "${START_RSS[wasmtime]}" "${START_RSS[wasmgate]}" 1024 MiB
kib_row "peak RSS (VmHWM)" "${PEAK[wasmtime]}" "${PEAK[wasmgate]}" 1024 MiB
kib_row "virtual address space (VmSize)" "${START_VM[wasmtime]}" "${START_VM[wasmgate]}" 1048576 GiB
echo
echo "ratio = wasmgate / wasmtime serve (requests/s: higher is better; latency and memory: lower is better)"
