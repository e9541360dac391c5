#!/usr/bin/env bash
# Throughput and latency through a Sapper tunnel, next to the bare underlay.
#
# Builds the release binaries, then for each transport creates the standard
# namespaces (E entry, X exit, P private network behind X), starts privd and
# netd in E and X, and measures from E:
#   * iperf3, one TCP stream, E -> P through the tunnel (and the exit's NAT)
#   * ping RTT (average of N pings) E -> P through the tunnel
# and the same two figures straight over the E-X veth pair (no Sapper).
# The exit is the kernel exit (privd: TUN + NAT) and/or the userspace exit
# (netd alone as nobody, no TUN: smoltcp plus the exit's own sockets).
#
#   sudo bench/throughput.sh [--transport quic|ws|both] [--time SECS]
#                            [--pings N] [--exit kernel|userspace|both]
#                            [--offload off|on|both] [--no-build]
#
# --offload on opens the TUNs with TSO/USO ([privd.tun] offload = true):
# netd then moves GSO super-packets (default off, as privd's default).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=../scripts/lib/topology.sh
. "$ROOT/scripts/lib/topology.sh"

TRANSPORTS=(quic ws)
EXITS=(kernel)
OFFLOADS=(0)
SECS=10
PINGS=20
BUILD=1
while [ $# -gt 0 ]; do
    case $1 in
        --transport)
            case ${2:-} in
                quic | ws) TRANSPORTS=("$2") ;;
                both) TRANSPORTS=(quic ws) ;;
                *) die "--transport takes quic, ws or both" ;;
            esac
            shift 2 ;;
        --exit)
            case ${2:-} in
                kernel | userspace) EXITS=("$2") ;;
                both) EXITS=(kernel userspace) ;;
                *) die "--exit takes kernel, userspace or both" ;;
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
        --pings) PINGS=${2:?}; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        -h | --help) sed -n '2,19p' "$0"; exit 0 ;;
        *) die "unknown argument $1 (try --help)" ;;
    esac
done
[[ $SECS =~ ^[0-9]+$ ]] && [ "$SECS" -ge 1 ] && [ "$SECS" -le 120 ] || die "--time must be 1..120"
[[ $PINGS =~ ^[0-9]+$ ]] && [ "$PINGS" -ge 1 ] && [ "$PINGS" -le 1000 ] || die "--pings must be 1..1000"

need_root throughput.sh
ensure_packages ip:iproute2 nft:nftables ping:iputils-ping iperf3:iperf3 ss:iproute2 setpriv:util-linux
BIN="$ROOT/target/release"
TOPO_TAG=bn

topo_guard benchmark

if [ "$BUILD" -eq 1 ]; then build_release; fi

# iperf3_gbps SERVER_NS CLIENT_NS ADDR — one TCP stream for $SECS seconds;
# prints the receiver's Gbit/s.
iperf3_gbps() {
    local server_ns=$1 client_ns=$2 addr=$3 out
    ip netns exec "$server_ns" timeout $((SECS + 30)) iperf3 -s -1 -B "$addr" >/dev/null 2>&1 &
    local server=$!
    topo_wait "iperf3 server on $addr" 10 \
        sh -c "ip netns exec '$server_ns' ss -Hltn 'sport = :5201' | grep -q 5201"
    out=$(ip netns exec "$client_ns" timeout $((SECS + 20)) iperf3 -c "$addr" -t "$SECS" -f g 2>&1) ||
        { echo "$out" >&2; kill "$server" 2>/dev/null || true; return 1; }
    wait "$server" 2>/dev/null || true
    echo "$out" | awk '/receiver/ { for (i = 1; i <= NF; i++) if ($i == "Gbits/sec") v = $(i - 1) } END { print v }'
}

# ping_avg NS ADDR — average RTT in ms over $PINGS pings.
ping_avg() {
    local ns=$1 addr=$2
    ip netns exec "$ns" timeout $((PINGS + 20)) ping -n -q -c "$PINGS" -i 0.2 -W 2 "$addr" |
        awk -F/ '/^rtt|^round-trip/ { print $5 }'
}

RESULTS=()
add_result() { RESULTS+=("$(printf '%-40s %12s %14s' "$1" "$2" "$3")"); }

underlay_done=0
for offload in "${OFFLOADS[@]}"; do
TOPO_OFFLOAD=$offload
for exit_mode in "${EXITS[@]}"; do
    TOPO_EXIT=$exit_mode
    for transport in "${TRANSPORTS[@]}"; do
        log "transport $transport, $exit_mode exit: starting the topology"
        topo_up "$transport"
        topo_wait_tunnel 30
        if [ $underlay_done -eq 0 ]; then
            log "underlay E -> X over the veth: iperf3 ${SECS}s and $PINGS pings"
            gbps=$(iperf3_gbps "$NS_X" "$NS_E" 10.10.0.2) || gbps=failed
            rtt=$(ping_avg "$NS_E" 10.10.0.2) || rtt=failed
            add_result "underlay veth E->X (no Sapper)" "${gbps:-n/a}" "${rtt:-n/a}"
            underlay_done=1
        fi
        log "tunnel ($transport, $exit_mode exit) E -> P: iperf3 ${SECS}s and $PINGS pings"
        gbps=$(iperf3_gbps "$NS_P" "$NS_E" 10.20.0.2) || gbps=failed
        rtt=$(ping_avg "$NS_E" 10.20.0.2) || rtt=failed
        if [ "$exit_mode" = userspace ]; then
            label="sapper $transport E->P (userspace exit)"
        else
            label="sapper $transport E->P (tunnel+NAT)"
        fi
        if [ "$offload" = 1 ]; then label="$label offload"; fi
        add_result "$label" "${gbps:-n/a}" "${rtt:-n/a}"
        topo_cleanup
    done
done
done

echo
printf '%-40s %12s %14s\n' "path" "Gbit/s" "avg RTT (ms)"
printf '%s\n' "${RESULTS[@]}"
echo
echo "single TCP stream (iperf3 -t $SECS), $PINGS pings at 0.2 s; $(nproc) CPUs; MTU of the TUN 1280"
