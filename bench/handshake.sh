#!/usr/bin/env bash
# TLS handshakes per second against one netd listener, and the bytes on the
# wire of one handshake, hybrid (X25519MLKEM768) vs classic (X25519).
#
# Builds the release binaries, then starts one sapper-netd (no privd, no
# TUN, as nobody) in a fresh network namespace, listening on its loopback
# for QUIC (4433) and WebSocket (8443) with netd.tls.key_exchange =
# "classic-allowed", so one listener serves both kinds of client. From the
# same namespace one sapper-hsbench process makes COUNT short connections
# (CONCURRENCY at a time, full handshakes, no resumption) per transport and
# key exchange, each closed once its TLS handshake is done, and prints the
# rate and one handshake's bytes (client's view: QUIC UDP payload, WS TLS
# bytes over TCP).
#
#   sudo bench/handshake.sh [--count N] [--concurrency C] [--transport quic|ws|both]
#                           [--no-build] [--netd PATH --classic-netd]
#
# --netd PATH runs that sapper-netd binary as the listener instead (e.g. a
# build from before post-quantum support); add --classic-netd when it does
# not know netd.tls (then only classic clients are measured).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=../scripts/lib/common.sh
. "$ROOT/scripts/lib/common.sh"

COUNT=500
CONC=4
TRANSPORTS=(quic ws)
BUILD=1
NETD=""
OLD=0
while [ $# -gt 0 ]; do
    case $1 in
        --count) COUNT=${2:?}; shift 2 ;;
        --concurrency) CONC=${2:?}; shift 2 ;;
        --transport)
            case ${2:-} in
                quic | ws) TRANSPORTS=("$2") ;;
                both) TRANSPORTS=(quic ws) ;;
                *) die "--transport takes quic, ws or both" ;;
            esac
            shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --netd) NETD=${2:?}; shift 2 ;;
        --classic-netd) OLD=1; shift ;;
        -h | --help) sed -n '2,21p' "$0"; exit 0 ;;
        *) die "unknown argument $1 (try --help)" ;;
    esac
done
[[ $COUNT =~ ^[0-9]+$ ]] && [ "$COUNT" -ge 1 ] && [ "$COUNT" -le 100000 ] || die "--count must be 1..100000"
[[ $CONC =~ ^[0-9]+$ ]] && [ "$CONC" -ge 1 ] && [ "$CONC" -le 64 ] || die "--concurrency must be 1..64"

need_root handshake.sh
ensure_packages ip:iproute2 setpriv:util-linux
BIN="$ROOT/target/release"
if [ "$BUILD" -eq 1 ]; then build_release; fi
NETD=${NETD:-$BIN/sapper-netd}
[ -x "$NETD" ] || die "no $NETD (build first, or drop --no-build)"
[ -x "$BIN/sapper-hsbench" ] || die "no $BIN/sapper-hsbench (build first)"

NS="shsB$$"
DIR=$(mktemp -d /tmp/sapper-hs.XXXXXX)
PID=""
cleanup() {
    local rc=$?
    [ -n "$PID" ] && kill "$PID" 2>/dev/null
    [ -n "$PID" ] && wait "$PID" 2>/dev/null
    ip netns del "$NS" 2>/dev/null || true
    rm -rf "$DIR"
    restore_target_owner "$ROOT"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

ip netns add "$NS"
ip -n "$NS" link set lo up
mkdir -p "$DIR/state"
chmod 0700 "$DIR/state"
head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$DIR/psk"
tls_lines=$'[netd.tls]\nkey_exchange = "classic-allowed"'
[ "$OLD" -eq 1 ] && tls_lines=""
cat >"$DIR/sapper.toml" <<CFG
[node]
name = "bench"
role = "exit"
psk_file = "$DIR/psk"

[netd]
state_dir = "$DIR/state"
management_socket = "$DIR/netd.sock"

[[netd.listen]]
transport = "quic"
address = "127.0.0.1:4433"

[[netd.listen]]
transport = "ws"
address = "127.0.0.1:8443"

[netd.exit]
enable = false

$tls_lines
CFG
chown -R nobody:nogroup "$DIR"
chmod 0755 "$DIR"
AS_NOBODY=(setpriv --reuid nobody --regid nogroup --clear-groups --inh-caps=-all --bounding-set=-all --)
FP=$("${AS_NOBODY[@]}" "$NETD" --config "$DIR/sapper.toml" --print-fingerprint 2>"$DIR/fp.log" | tail -n1) ||
    { cat "$DIR/fp.log" >&2; die "sapper-netd --print-fingerprint failed"; }
ip netns exec "$NS" "${AS_NOBODY[@]}" "$NETD" --config "$DIR/sapper.toml" >"$DIR/netd.log" 2>&1 </dev/null &
PID=$!
for _ in $(seq 50); do
    [ -S "$DIR/netd.sock" ] && break
    kill -0 "$PID" 2>/dev/null || { cat "$DIR/netd.log" >&2; die "netd exited"; }
    sleep 0.2
done
[ -S "$DIR/netd.sock" ] || { cat "$DIR/netd.log" >&2; die "netd did not start"; }

KXS=(hybrid classic)
[ "$OLD" -eq 1 ] && KXS=(classic)
printf '%-6s %-8s %12s %12s %12s\n' transport kx "handshakes/s" "bytes out" "bytes in"
for t in "${TRANSPORTS[@]}"; do
    case $t in quic) addr=127.0.0.1:4433 ;; ws) addr=127.0.0.1:8443 ;; esac
    for kx in "${KXS[@]}"; do
        line=$(ip netns exec "$NS" timeout 300 "$BIN/sapper-hsbench" "$t" "$addr" "$FP" "$kx" \
            --count "$COUNT" --concurrency "$CONC") ||
            { tail -n 20 "$DIR/netd.log" >&2; die "sapper-hsbench $t $kx failed"; }
        rate=$(sed -n 's/.*per_second=\([^ ]*\).*/\1/p' <<<"$line")
        out=$(sed -n 's/.*bytes_out=\([^ ]*\).*/\1/p' <<<"$line")
        in=$(sed -n 's/.*bytes_in=\([^ ]*\).*/\1/p' <<<"$line")
        printf '%-6s %-8s %12s %12s %12s\n' "$t" "$kx" "$rate" "$out" "$in"
    done
done
echo
echo "$COUNT handshakes per row, $CONC at a time, one client process; listener $(basename "$NETD") on loopback; $(nproc) CPUs"
echo "bytes: one handshake as the client saw it (QUIC: UDP payload incl. HANDSHAKE_DONE/ACKs; WS: TLS bytes over TCP)"
