#!/usr/bin/env bash
# Throughput, latency, CPU and memory through Sapper, next to raw veth.
#
# Builds the release binaries, then for each path creates the standard
# namespaces (E entry, X exit, P private network behind X; R relay between E
# and X for the relay chain), starts privd and netd, and measures from E:
#   * iperf3 TCP E -> P through the tunnel (and the exit's NAT), one stream
#     and STREAMS parallel streams, SECS seconds each
#   * ping RTT E -> P: PINGS pings on an idle tunnel, and pings 0.2 s apart
#     while the one-stream iperf3 runs (RTT under load)
#   * each netd's CPU seconds (utime + stime from /proc/PID/stat) per GB
#     the two iperf3 runs carried, and its peak RSS (VmHWM) afterwards
# and the same traffic figures straight over one E veth (raw veth, no
# Sapper) in the same run; ratios are to that raw veth.
# Paths: kernel exit (privd: TUN + NAT) and userspace exit (netd alone as
# nobody, no TUN: smoltcp plus the exit's own sockets) per transport, and a
# relay chain E -> R -> X (kernel exit; netd alone on R) over the legs
# --relay names.
#
#   sudo bench/throughput.sh [--transport quic|ws|both] [--exit kernel|userspace|both]
#                            [--relay IN-OUT|none] [--time SECS] [--streams N]
#                            [--pings N] [--offload off|on|both] [--no-build]
#
# Defaults: both transports, both exits, --relay quic-ws, 10 s, 4 streams,
# 20 pings, offload on (the config's default: [privd.tun] offload = true,
# TSO/USO, netd moves GSO super-packets); --offload off opens plain TUNs;
# both measures every path twice. The netds inherit the environment.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=../scripts/lib/topology.sh
. "$ROOT/scripts/lib/topology.sh"
# shellcheck source=../scripts/lib/bench.sh
. "$ROOT/scripts/lib/bench.sh"

TRANSPORTS=(quic ws)
EXITS=(kernel userspace)
RELAY=quic-ws
OFFLOADS=(1)
SECS=10
STREAMS=4
PINGS=20
BUILD=1
while [ $# -gt 0 ]; do
    case $1 in
        --transport)
            case ${2:-} in
                quic | ws) TRANSPORTS=("$2") ;;
                both) TRANSPORTS=(quic ws) ;;
                none) TRANSPORTS=() ;;
                *) die "--transport takes quic, ws, both or none" ;;
            esac
            shift 2 ;;
        --exit)
            case ${2:-} in
                kernel | userspace) EXITS=("$2") ;;
                both) EXITS=(kernel userspace) ;;
                *) die "--exit takes kernel, userspace or both" ;;
            esac
            shift 2 ;;
        --relay)
            case ${2:-} in
                none | quic-quic | quic-ws | ws-quic | ws-ws) RELAY=$2 ;;
                *) die "--relay takes IN-OUT (quic or ws each, e.g. quic-ws) or none" ;;
            esac
            shift 2 ;;
        --offload)
            case ${2:-} in
                off) OFFLOADS=(0) ;;
                on) OFFLOADS=(1) ;;
                both) OFFLOADS=(0 1) ;;
                *) die "--offload takes off, on or both" ;;
            esac
            shift 2 ;;
        --time) SECS=${2:?}; shift 2 ;;
        --streams) STREAMS=${2:?}; shift 2 ;;
        --pings) PINGS=${2:?}; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        -h | --help) sed -n '2,27p' "$0"; exit 0 ;;
        *) die "unknown argument $1 (try --help)" ;;
    esac
done
[[ $SECS =~ ^[0-9]+$ ]] && [ "$SECS" -ge 2 ] && [ "$SECS" -le 120 ] || die "--time must be 2..120"
[[ $STREAMS =~ ^[0-9]+$ ]] && [ "$STREAMS" -ge 1 ] && [ "$STREAMS" -le 32 ] || die "--streams must be 1..32"
[[ $PINGS =~ ^[0-9]+$ ]] && [ "$PINGS" -ge 1 ] && [ "$PINGS" -le 1000 ] || die "--pings must be 1..1000"

# Each path: "TRANSPORT EXIT RELAY_OUT OFFLOAD" (RELAY_OUT -: no relay).
PATHS=()
for offload in "${OFFLOADS[@]}"; do
    for exit_mode in "${EXITS[@]}"; do
        for transport in "${TRANSPORTS[@]}"; do PATHS+=("$transport $exit_mode - $offload"); done
    done
    [ "$RELAY" != none ] && PATHS+=("${RELAY%-*} kernel ${RELAY#*-} $offload")
done
[ ${#PATHS[@]} -gt 0 ] || die "nothing to measure (--transport none and --relay none)"

need_root throughput.sh
ensure_packages ip:iproute2 nft:nftables ping:iputils-ping iperf3:iperf3 ss:iproute2 \
    setpriv:util-linux jq:jq
BIN="$ROOT/target/release"
TOPO_TAG=bn

topo_guard benchmark
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

if [ "$BUILD" -eq 1 ]; then build_release; fi

# loaded_rtt NS ADDR — average RTT of pings 0.2 s apart while the caller's
# load runs: starts them in the background; loaded_rtt_done prints it.
loaded_rtt() {
    local count=$(((SECS - 1) * 5))
    (sleep 0.5; ping_avg "$1" "$2" "$count") >"$TOPO_DIR/loaded-rtt" 2>/dev/null &
    LOADED_PING=$!
}
loaded_rtt_done() {
    wait "$LOADED_PING" 2>/dev/null || true
    cat "$TOPO_DIR/loaded-rtt"
}

# measure SERVER_NS ADDR LABEL NETD_LABELS... — one row: the figures from E
# to ADDR in SERVER_NS, with CPU and peak RSS of the named netds.
VETH1="" VETH4=""
ROWS=()
measure() {
    local server_ns=$1 addr=$2 label=$3 one four idle loaded l pid bytes
    shift 3
    local labels=("$@") pids=() before=() cpu="" rss=""
    for l in "${labels[@]}"; do
        pid=$(topo_netd_pid "$l")
        pids+=("$pid")
        before+=("$(cpu_ticks "$pid")")
    done
    log "$label: $PINGS idle pings, iperf3 ${SECS}s x1 (pinging), ${SECS}s x$STREAMS"
    idle=$(ping_avg "$NS_E" "$addr" "$PINGS") || idle=failed
    loaded_rtt "$NS_E" "$addr"
    one=$(iperf3_run "$server_ns" "$NS_E" "$addr" "$SECS" 1) || one="failed 0"
    loaded=$(loaded_rtt_done)
    four=$(iperf3_run "$server_ns" "$NS_E" "$addr" "$SECS" "$STREAMS") || four="failed 0"
    bytes=$((${one#* } + ${four#* }))
    for i in "${!pids[@]}"; do
        cpu+="${cpu:+/}$(cpu_per_gb $(($(cpu_ticks "${pids[$i]}") - before[i])) "$bytes")"
        rss+="${rss:+/}$(awk -v k="$(status_kib "${pids[$i]}" VmHWM)" 'BEGIN { printf "%.1f", k / 1024 }')"
    done
    one=${one% *} four=${four% *}
    if [ -z "$VETH1" ]; then VETH1=$one VETH4=$four; fi
    ROWS+=("$(printf '%-36s %7s %6s %7s %6s %8s %8s %15s %15s' "$label" \
        "$one" "$(ratio "$one" "$VETH1")" "$four" "$(ratio "$four" "$VETH4")" \
        "${idle:-n/a}" "${loaded:-n/a}" "${cpu:--}" "${rss:--}")")
}

for path in "${PATHS[@]}"; do
    read -r transport exit_mode relay_out offload <<<"$path"
    TOPO_EXIT=$exit_mode
    TOPO_OFFLOAD=$offload
    TOPO_RELAY=${relay_out#-}
    if [ -n "$TOPO_RELAY" ]; then
        label="relay $transport>$TOPO_RELAY, kernel exit"
        netds=(entry-netd relay-netd exit-netd)
    else
        label="$transport, $exit_mode exit"
        netds=(entry-netd exit-netd)
    fi
    if [ "$offload" = 1 ]; then label="$label, offload"; fi
    log "$label: starting the topology"
    topo_up "$transport"
    topo_wait_tunnel 30
    if [ -z "$VETH1" ]; then
        # 10.10.0.2 is the node E dials: X, or R in a relay chain.
        veth_ns=$NS_X
        [ -n "$TOPO_RELAY" ] && veth_ns=$NS_R
        measure "$veth_ns" 10.10.0.2 "raw veth (no Sapper)"
    fi
    measure "$NS_P" 10.20.0.2 "$label" "${netds[@]}"
    topo_cleanup
done

echo
printf '%-36s %7s %6s %7s %6s %8s %8s %15s %15s\n' "path" "1 TCP" "xveth" "$STREAMS TCP" "xveth" \
    "RTT idle" "RTT load" "CPU s/GB" "peak RSS MiB"
printf '%s\n' "${ROWS[@]}"
echo
echo "Gbit/s E->P (iperf3 -t $SECS, 1 and -P $STREAMS streams); RTT ms avg ($PINGS idle pings; pings 0.2 s apart during the 1-stream run);"
echo "CPU s/GB and peak RSS (VmHWM) per netd, entry/[relay/]exit; $(nproc) CPUs; TUN MTU 1280; load avg before $LOAD_BEFORE, after $(cut -d' ' -f1-3 /proc/loadavg)"
