#!/usr/bin/env bash
# Footprint of one wasmgate binary, measured from outside (BENCHMARKS.md, "Footprint"):
# binary size (as built, stripped), and for `wasmgate up` on examples/wasmgate.toml
# (partitions apps and sensors, a 64-instance pool) with 0 and with 10 deployments (ten
# copies of examples/deployments/hello.yaml, routes /hello-0 ... /hello-9): idle RSS,
# address space (VmSize), the pool the engine reserved, and start-to-serving time, the
# latter with a warm AOT cache for the 10 deployments (the second start on one state
# directory). Works for the full and the device build; for an aarch64 binary, under
# qemu-user (RSS and times are then qemu's: memory and start-up only, not speed).
#
#   benches/footprint.sh --bin target/release/wasmgate
#   benches/footprint.sh --bin target/aarch64-unknown-linux-gnu/release/wasmgate --qemu
#   benches/footprint.sh --bin DEVICE_BUILD [--qemu] --compiler target/debug/wasmgate
#
# A device build has no compiler: --compiler names a default build on this host that
# precompiles hello.wasm for it (`wasmgate compile --target ARCH`). Needs the guests
# (`cargo build -p wasmgate-examples`), curl; with --qemu, qemu-aarch64-static and
# aarch64-linux-gnu-strip. Prints a Markdown table: median (min..max) over --runs N
# (default 3). Network only on loopback; every wait is bounded.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
BIN=""
COMPILER=""
QEMU=0
RUNS=3
DEPLOYMENTS=10
SETTLE=2

usage() {
    sed -n '2,19p' "$0" >&2
    exit 2
}

while (($#)); do
    case $1 in
    --bin) BIN=$(realpath "$2") && shift ;;
    --compiler) COMPILER=$(realpath "$2") && shift ;;
    --qemu) QEMU=1 ;;
    --runs) RUNS=$2 && shift ;;
    *) usage ;;
    esac
    shift
done
[ -n "$BIN" ] && [ -x "$BIN" ] || usage
[[ "$RUNS" =~ ^[1-9][0-9]?$ ]] || usage

if ((QEMU)); then
    ARCH=aarch64
    STRIP=aarch64-linux-gnu-strip
    export QEMU_LD_PREFIX=${QEMU_LD_PREFIX:-/usr/aarch64-linux-gnu}
    RUN=(qemu-aarch64-static "$BIN")
else
    ARCH=$(uname -m)
    STRIP=strip
    RUN=("$BIN")
fi
export WASMGATE_LOG="info,cranelift=warn,wasmtime=warn"

GUESTS="$ROOT/target/guests/wasm32-wasip2/release"
[ -f "$GUESTS/hello.wasm" ] || {
    echo "footprint: no $GUESTS/hello.wasm: cargo build -p wasmgate-examples" >&2
    exit 1
}

WORK=$(mktemp -d)
GATE_PID=""
cleanup() {
    if [ -n "$GATE_PID" ] && kill -0 "$GATE_PID" 2>/dev/null; then
        kill -KILL "$GATE_PID" 2>/dev/null || true
        wait "$GATE_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

now_ms() {
    echo $(($(date +%s%N) / 1000000))
}

fail() {
    echo "footprint: FAIL: $*" >&2
    echo "footprint: listener $ADDR, admin $ADMIN" >&2
    [ -f "$WORK/gate.out" ] && cat "$WORK/gate.out" >&2
    [ -f "$WORK/gate.err" ] && tail -n 20 "$WORK/gate.err" >&2
    exit 1
}

# The device build answers `compile` with a usage error: it has no compiler.
BUILD=full
if ! "${RUN[@]}" compile --help >/dev/null 2>&1; then
    BUILD=device
    [ -n "$COMPILER" ] || fail "$BIN is a device build (no compiler): give --compiler PATH"
fi

# hello.wasm copied out of target/guests (with its .cwasm for a device build), and the
# deployment folders.
mkdir -p "$WORK/guest" "$WORK/empty" "$WORK/ten"
cp "$GUESTS/hello.wasm" "$WORK/guest/"
if [ "$BUILD" = device ]; then
    "$COMPILER" compile "$WORK/guest/hello.wasm" --target "$ARCH" --config examples/wasmgate.toml >/dev/null
fi
for ((i = 0; i < DEPLOYMENTS; i++)); do
    sed -e "s|^id: .*|id: 3f0c6d52-1b7e-4a39-9d2a-8e5b7c4a2$(printf %03d "$i")|" \
        -e "s|^  name: hello|  name: hello-$i|" \
        -e "s|route: /hello|route: /hello-$i|" \
        -e "s|file:\.\./\.\./target/guests/wasm32-wasip2/release/hello.wasm|file:$WORK/guest/hello.wasm|" \
        examples/deployments/hello.yaml >"$WORK/ten/hello-$i.yaml"
done

ADDR=""
ADMIN=""
STARTED=0
start_gate() {
    local deployments=$1 state=$2
    STARTED=$(now_ms)
    "${RUN[@]}" up --config examples/wasmgate.toml --deployments "$deployments" \
        --state-dir "$state" --listen 127.0.0.1:0 --admin 127.0.0.1:0 \
        >"$WORK/gate.out" 2>"$WORK/gate.err" &
    GATE_PID=$!
    ADDR=""
    ADMIN=""
}

# Launch to the first 200 of /healthz (every deployment in a final state) and then of
# `route`, polled every 5 ms; fails on a failed deployment. Bounded by 180 s.
wait_serving() {
    local route=$1 deadline=$(($(now_ms) + 180000)) body
    while :; do
        kill -0 "$GATE_PID" 2>/dev/null || fail "wasmgate exited during start"
        [ "$(now_ms)" -lt "$deadline" ] || fail "not serving within 180 s"
        # Both lines are printed, in either order, once the listeners are bound.
        if [ -z "$ADMIN" ] || [ -z "$ADDR" ]; then
            ADDR=$(sed -n 's|^wasmgate: listening on http://||p' "$WORK/gate.out")
            ADMIN=$(sed -n 's|^wasmgate: admin on http://||p' "$WORK/gate.out")
        fi
        if [ -n "$ADMIN" ] && [ -n "$ADDR" ] &&
            body=$(curl -sf --max-time 10 "http://$ADMIN/healthz"); then
            [[ "$body" != *failed* ]] || fail "deployments failed: $body"
            if [ -z "$route" ] || curl -sf --max-time 10 -o /dev/null "http://$ADDR$route"; then
                SERVING_MS=$(($(now_ms) - STARTED))
                return
            fi
        fi
        sleep 0.005
    done
}

stop_gate() {
    kill -TERM "$GATE_PID" 2>/dev/null || true
    local deadline=$(($(now_ms) + 20000))
    while kill -0 "$GATE_PID" 2>/dev/null && [ "$(now_ms)" -lt "$deadline" ]; do
        sleep 0.05
    done
    kill -KILL "$GATE_PID" 2>/dev/null || true
    wait "$GATE_PID" 2>/dev/null || true
    GATE_PID=""
}

# Appends "RSS_KiB VMSIZE_KiB" of the running process to file $1, after it settled.
sample_memory() {
    sleep "$SETTLE"
    awk '/^VmRSS:/ { rss = $2 } /^VmSize:/ { size = $2 } END { print rss, size }' \
        "/proc/$GATE_PID/status" >>"$1"
}

for ((run = 1; run <= RUNS; run++)); do
    echo "footprint: run $run of $RUNS" >&2
    # 0 deployments, fresh state.
    start_gate "$WORK/empty" "$WORK/state0-$run"
    wait_serving ""
    echo "$SERVING_MS" >>"$WORK/start0"
    sample_memory "$WORK/mem0"
    reserved=$(sed -n 's/.*pooling allocator ready.* reserved_mib=\([0-9]*\).*/\1/p' "$WORK/gate.err" | head -n 1)
    stop_gate
    # 10 deployments: the first start fills the AOT cache (compiling, or from the
    # .cwasm), the second is the measured one.
    start_gate "$WORK/ten" "$WORK/state10-$run"
    wait_serving /hello-0
    echo "$SERVING_MS" >>"$WORK/start10cold"
    stop_gate
    start_gate "$WORK/ten" "$WORK/state10-$run"
    wait_serving /hello-0
    echo "$SERVING_MS" >>"$WORK/start10warm"
    for ((i = 0; i < DEPLOYMENTS; i++)); do
        curl -sf --max-time 10 -o /dev/null "http://$ADDR/hello-$i" || fail "/hello-$i did not answer"
    done
    sample_memory "$WORK/mem10"
    stop_gate
done

# median (min..max) of column $2 of file $1, divided by $3, printed with format $4.
summary() {
    awk -v col="$2" '{ print $col }' "$1" | sort -n | awk -v div="$3" -v fmt="$4" '
        { v[NR] = $1 / div }
        END {
            med = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
            printf fmt " (" fmt ".." fmt ")", med, v[1], v[NR]
        }'
}

built=$(wc -c <"$BIN")
"$STRIP" -o "$WORK/stripped" "$BIN"
stripped=$(wc -c <"$WORK/stripped")
MIB=1024
GIB=1048576

echo
echo "$ARCH, $BUILD build$( ((QEMU)) && echo ", under $(qemu-aarch64-static --version | head -n 1)"), $(date -u +%Y-%m-%d), $RUNS runs: median (min..max)"
echo
echo "| what | $ARCH $BUILD |"
echo "| --- | --- |"
printf '| binary, stripped (as built) | %.1f MiB, %d B (%.1f MiB) |\n' \
    "$(awk -v b="$stripped" 'BEGIN { print b / 1048576 }')" "$stripped" \
    "$(awk -v b="$built" 'BEGIN { print b / 1048576 }')"
printf '| pool reserved (log reserved_mib) | %s MiB |\n' "${reserved:-?}"
printf '| RSS, idle, 0 deployments | %s MiB |\n' "$(summary "$WORK/mem0" 1 $MIB %.1f)"
printf '| RSS, idle, 10 deployments (warm cache, one request each) | %s MiB |\n' "$(summary "$WORK/mem10" 1 $MIB %.1f)"
printf '| VmSize, 0 deployments | %s GiB |\n' "$(summary "$WORK/mem0" 2 $GIB %.2f)"
printf '| VmSize, 10 deployments | %s GiB |\n' "$(summary "$WORK/mem10" 2 $GIB %.2f)"
printf '| start to serving, 0 deployments | %s ms |\n' "$(summary "$WORK/start0" 1 1 %d)"
printf '| start to serving, 10 deployments, first start (%s) | %s ms |\n' \
    "$([ "$BUILD" = device ] && echo "from the .cwasm" || echo "compiling")" "$(summary "$WORK/start10cold" 1 1 %d)"
printf '| start to serving, 10 deployments, warm AOT cache | %s ms |\n' "$(summary "$WORK/start10warm" 1 1 %d)"
