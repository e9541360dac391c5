#!/usr/bin/env bash
# Sapper demo: builds the release binaries, creates three network namespaces
# (E = entry, X = exit, P = a private network only X can reach), starts
# sapper-privd and sapper-netd in E and X connected over QUIC, and shows the
# tunnel working: sapperctl status/peers on the entry and a ping from E to P.
# Everything is removed again on exit, on failure and on Ctrl-C.
#
#   sudo scripts/demo.sh [--transport quic|ws] [--no-build]
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=lib/topology.sh
. "$ROOT/scripts/lib/topology.sh"

TRANSPORT=quic
BUILD=1
while [ $# -gt 0 ]; do
    case $1 in
        --transport) TRANSPORT=${2:?--transport needs quic or ws}; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        -h | --help) sed -n '2,9p' "$0"; exit 0 ;;
        *) die "unknown argument $1 (try --help)" ;;
    esac
done

need_root demo.sh
ensure_packages ip:iproute2 nft:nftables ping:iputils-ping
BIN="$ROOT/target/release"
TOPO_TAG=dm

topo_guard demo

if [ "$BUILD" -eq 1 ]; then build_release; fi
for b in sapper-privd sapper-netd sapperctl; do
    [ -x "$BIN/$b" ] || die "$BIN/$b is missing (run without --no-build)"
done

log "creating namespaces and starting privd + netd in E and X ($TRANSPORT)"
topo_up "$TRANSPORT"
log "waiting for the tunnel"
topo_wait_tunnel 30

echo
echo "### sapperctl status (entry)"
"$BIN/sapperctl" --socket "$TOPO_DIR/entry/netd.sock" status
echo
echo "### sapperctl peers (entry)"
"$BIN/sapperctl" --socket "$TOPO_DIR/entry/netd.sock" peers
echo
echo "### ping -c 3 10.20.0.2 from E (P is reachable only through the tunnel and the exit's NAT)"
ip netns exec "$NS_E" ping -n -c 3 10.20.0.2
echo
log "demo done; cleaning up"
