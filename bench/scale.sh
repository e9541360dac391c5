#!/usr/bin/env bash
# One exit, many entries: the exit's memory per connected peer, how fast
# that many links come up, and the tunnel's RTT while all of them are
# connected and idle.
#
# Builds the release binaries, then starts in fresh namespaces one exit (a
# userspace exit: netd alone as nobody, no privd, no TUN) with a private
# host P behind it, and PEERS entries, each a netd in its own namespace on
# one bridge in the exit's namespace. The first TUNS entries also run a
# privd (a TUN sap0 with a route to P) so pings can cross the tunnel; the
# others are netd alone (no TUN), the lightest peer a netd can be. With
# every netd started and no link yet, each entry is told to dial the exit
# at once (sapperctl connect, all in parallel), and the script measures
#   * links up per second: PEERS / (time from the first dial until the
#     exit's `sapperctl --json peers` lists PEERS peers)
#   * the exit's VmRSS with PEERS peers minus with none, / PEERS
#   * ping RTT E -> P through the tunnel from the TUN entries, and the
#     exit's control-channel latency to every peer, all links idle
#   * the exit's CPU while idle with PEERS peers (keepalives only)
#
#   sudo bench/scale.sh [--peers N] [--transport quic|ws] [--tuns N]
#                       [--pings N] [--no-build]
#
# Defaults: 100 peers over QUIC, 2 with a TUN, 20 pings each. Everything
# it started is stopped and its namespaces deleted on exit, also on Ctrl-C.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=../scripts/lib/common.sh
. "$ROOT/scripts/lib/common.sh"
# shellcheck source=../scripts/lib/bench.sh
. "$ROOT/scripts/lib/bench.sh"

PEERS=100
TRANSPORT=quic
TUNS=2
PINGS=20
BUILD=1
while [ $# -gt 0 ]; do
    case $1 in
        --peers) PEERS=${2:?}; shift 2 ;;
        --transport)
            case ${2:-} in quic | ws) TRANSPORT=$2 ;; *) die "--transport takes quic or ws" ;; esac
            shift 2 ;;
        --tuns) TUNS=${2:?}; shift 2 ;;
        --pings) PINGS=${2:?}; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        -h | --help) sed -n '2,25p' "$0"; exit 0 ;;
        *) die "unknown argument $1 (try --help)" ;;
    esac
done
[[ $PEERS =~ ^[0-9]+$ ]] && [ "$PEERS" -ge 1 ] && [ "$PEERS" -le 200 ] || die "--peers must be 1..200"
[[ $TUNS =~ ^[0-9]+$ ]] && [ "$TUNS" -ge 1 ] && [ "$TUNS" -le "$PEERS" ] && [ "$TUNS" -le 8 ] ||
    die "--tuns must be 1..min(8, peers)"
[[ $PINGS =~ ^[0-9]+$ ]] && [ "$PINGS" -ge 1 ] && [ "$PINGS" -le 1000 ] || die "--pings must be 1..1000"

need_root scale.sh
ensure_packages ip:iproute2 nft:nftables ping:iputils-ping setpriv:util-linux jq:jq
BIN="$ROOT/target/release"
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
if [ "$BUILD" -eq 1 ]; then build_release; fi
for b in sapper-netd sapper-privd sapperctl; do
    [ -x "$BIN/$b" ] || die "no $BIN/$b (build first, or drop --no-build)"
done

case $TRANSPORT in
    quic) PORT=4433; WS_LINES="" ;;
    ws) PORT=8443; WS_LINES='ws_path = "/sapper"' ;;
esac
NS_X="sscX$$"
NS_P="sscP$$"
ns_entry() { echo "sscE$1_$$"; }   # ≤ 15 characters for 200 peers
DIR=$(mktemp -d /tmp/sapper-scale.XXXXXX)
chmod 0755 "$DIR"
PIDS=()
NAMESPACES=()
ENTRY_PIDS=()

cleanup() {
    local rc=$?
    stop_and_remove PIDS NAMESPACES 50
    rm -rf "$DIR"
    restore_target_owner "$ROOT"
    [ $rc -eq 0 ] || printf 'scale benchmark failed (exit %d)\n' "$rc" >&2
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start LABEL NS PROGRAM ARGS... — a daemon in NS, logging to DIR/LABEL.log.
start() {
    local label=$1 ns=$2
    shift 2
    ip netns exec "$ns" "$@" >"$DIR/$label.log" 2>&1 </dev/null &
    PIDS+=("$!")
}

# wait_for WHAT SECONDS COMMAND... — polls every 0.2 s, fails at the deadline.
wait_for() {
    local what=$1 secs=$2 i
    shift 2
    for ((i = 0; i < secs * 5; i++)); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    tail -n 20 "$DIR"/exit.log >&2 || true
    die "timed out after ${secs}s waiting for $what"
}

new_ns() {
    ip netns del "$1" 2>/dev/null || true
    ip netns add "$1"
    NAMESPACES+=("$1")
    ip -n "$1" link set lo up
}

log "network: exit, private host and $PEERS entry namespaces on one bridge"
new_ns "$NS_X"
new_ns "$NS_P"
ip -n "$NS_X" link add br0 type bridge
ip -n "$NS_X" addr add 10.30.0.1/24 dev br0
ip -n "$NS_X" link set br0 up
ip -n "$NS_X" link add vx-p type veth peer name vp-x netns "$NS_P"
ip -n "$NS_X" addr add 10.20.0.1/24 dev vx-p
ip -n "$NS_P" addr add 10.20.0.2/24 dev vp-x
ip -n "$NS_X" link set vx-p up
ip -n "$NS_P" link set vp-x up
ip netns exec "$NS_X" sysctl -q -w net.ipv4.ping_group_range="0 2147483647"
for ((k = 1; k <= PEERS; k++)); do
    ns=$(ns_entry "$k")
    new_ns "$ns"
    ip -n "$ns" link add eth0 type veth peer name "ve$k" netns "$NS_X"
    ip -n "$ns" addr add "10.30.0.$((k + 1))/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$NS_X" link set "ve$k" master br0 up
done

head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$DIR/psk"
chmod 0600 "$DIR/psk"

# The exit: netd alone, as nobody from the start, so it owns its files.
mkdir -p "$DIR/exit/state"
chmod 0700 "$DIR/exit/state"
cp "$DIR/psk" "$DIR/exit/psk"
cat >"$DIR/exit/sapper.toml" <<CFG
[node]
name = "exit"
role = "exit"
psk_file = "$DIR/exit/psk"

[netd]
state_dir = "$DIR/exit/state"
management_socket = "$DIR/exit/netd.sock"
announce_routes = ["10.20.0.0/24"]

[[netd.listen]]
transport = "$TRANSPORT"
address = "0.0.0.0:$PORT"
$WS_LINES

[netd.exit]
enable = true
CFG
chown -R nobody:nogroup "$DIR/exit"
AS_NOBODY=(setpriv --reuid nobody --regid nogroup --clear-groups --inh-caps=-all --bounding-set=-all --)
FP=$("${AS_NOBODY[@]}" "$BIN/sapper-netd" --config "$DIR/exit/sapper.toml" --print-fingerprint | tail -n1) ||
    die "sapper-netd --print-fingerprint failed"
start exit "$NS_X" "${AS_NOBODY[@]}" "$BIN/sapper-netd" --config "$DIR/exit/sapper.toml"
EXIT_PID=${PIDS[-1]}
wait_for "the exit's netd socket" 20 test -S "$DIR/exit/netd.sock"

# entry_config K — entry K's config: netd dropping to nobody, and for the
# first TUNS entries a privd with a TUN routing P's network to the tunnel.
entry_config() {
    local k=$1 d="$DIR/e$1"
    cat <<CFG
[node]
name = "e$k"
role = "entry"
psk_file = "$d/psk"

[netd]
user = "nobody"
group = "nogroup"
state_dir = "$d/state"
management_socket = "$d/netd.sock"
CFG
    [ "$k" -le "$TUNS" ] || return 0
    cat <<CFG
privd_socket = "$d/privd.sock"

[privd]
socket = "$d/privd.sock"
socket_group = "nogroup"
netd_user = "nobody"

[privd.tun]
name = "sap0"
addresses = ["10.99.0.$k/24"]
mtu = 1280
routes = ["10.20.0.0/24"]
allowed_routes = ["10.20.0.0/24"]
CFG
}

log "starting $PEERS entry netds ($TUNS with a privd), no link yet"
for ((k = 1; k <= PEERS; k++)); do
    d="$DIR/e$k"
    mkdir -p "$d/state"
    chmod 0755 "$d"
    chmod 0700 "$d/state"
    cp -p "$DIR/psk" "$d/psk"
    entry_config "$k" >"$d/sapper.toml"
    if [ "$k" -le "$TUNS" ]; then
        start "e$k-privd" "$(ns_entry "$k")" "$BIN/sapper-privd" --config "$d/sapper.toml"
        wait_for "entry $k's privd socket" 20 test -S "$d/privd.sock"
    fi
    start "e$k" "$(ns_entry "$k")" "$BIN/sapper-netd" --config "$d/sapper.toml"
    ENTRY_PIDS[k]=${PIDS[-1]}
done
for ((k = 1; k <= PEERS; k++)); do
    wait_for "entry $k's netd socket" 120 test -S "$DIR/e$k/netd.sock"
done

peers_up() {
    "$BIN/sapperctl" --socket "$DIR/exit/netd.sock" --json peers 2>/dev/null | jq '.peers | length'
}
sleep 2   # let the exit settle before its baseline
RSS0=$(status_kib "$EXIT_PID" VmRSS)
[ "$(peers_up)" = 0 ] || die "the exit has peers before any dial"

log "all $PEERS entries dial the exit at once"
DIALS=()
T0=$(date +%s.%N)
for ((k = 1; k <= PEERS; k++)); do
    timeout 30 "$BIN/sapperctl" --socket "$DIR/e$k/netd.sock" connect "10.30.0.1:$PORT" \
        --fingerprint "$FP" --transport "$TRANSPORT" --server-name exit \
        ${WS_LINES:+--ws-path /sapper} >"$DIR/connect-$k.log" 2>&1 &
    DIALS+=("$!")
done
up=0
deadline=$(($(date +%s) + 120))
while [ "$(date +%s)" -lt "$deadline" ]; do
    up=$(peers_up) || up=0
    [ "${up:-0}" -ge "$PEERS" ] && break
    sleep 0.05
done
T1=$(date +%s.%N)
wait "${DIALS[@]}" 2>/dev/null || true   # the sapperctl connects (each bounded by timeout)
[ "${up:-0}" -ge "$PEERS" ] || { tail -n 20 "$DIR/exit.log" >&2; die "only $up of $PEERS links came up in 120 s"; }
SETUP=$(awk -v a="$T0" -v b="$T1" 'BEGIN { printf "%.2f", b - a }')
RATE=$(awk -v n="$PEERS" -v s="$SETUP" 'BEGIN { printf "%.0f", n / s }')

sleep 3   # the first keepalives and route announcements pass
RSSN=$(status_kib "$EXIT_PID" VmRSS)
HWM=$(status_kib "$EXIT_PID" VmHWM)
PER_PEER=$(awk -v a="$RSS0" -v b="$RSSN" -v n="$PEERS" 'BEGIN { printf "%.1f", (b - a) / n }')
entry_rss=0
for ((k = TUNS + 1; k <= PEERS; k++)); do
    entry_rss=$((entry_rss + $(status_kib "${ENTRY_PIDS[k]}" VmRSS)))
done
ENTRY_RSS=$(awk -v s="$entry_rss" -v n="$((PEERS - TUNS))" 'BEGIN { if (n > 0) printf "%.1f", s / n / 1024; else print "n/a" }')

log "all $PEERS links idle: pings from $TUNS TUN entries, the exit's CPU meanwhile"
ticks0=$(cpu_ticks "$EXIT_PID")
t_idle0=$(date +%s.%N)
rtts=()
for ((k = 1; k <= TUNS; k++)); do
    wait_for "a ping from entry $k through the tunnel" 30 \
        ip netns exec "$(ns_entry "$k")" ping -n -c 1 -W 1 10.20.0.2
    rtts+=("$(ping_avg "$(ns_entry "$k")" 10.20.0.2 "$PINGS")")
done
ticks1=$(cpu_ticks "$EXIT_PID")
t_idle1=$(date +%s.%N)
RTT=$(printf '%s\n' "${rtts[@]}" | awk '{ s += $1; n++ } END { if (n) printf "%.3f", s / n }')
EXIT_CPU=$(awk -v t=$((ticks1 - ticks0)) -v hz="$(getconf CLK_TCK)" -v a="$t_idle0" -v b="$t_idle1" \
    'BEGIN { printf "%.1f", 100 * t / hz / (b - a) }')
LAT=$("$BIN/sapperctl" --socket "$DIR/exit/netd.sock" --json peers |
    jq -r '[.peers[].latency_ms | select(. != null)] | if length > 0
        then "\(add / length * 1000 | round / 1000) ms avg, \(max * 1000 | round / 1000) ms max over \(length)"
        else "n/a" end')
UP_END=$(peers_up)

echo
printf '%-48s %s\n' \
    "peers connected (entries, $TRANSPORT)" "$UP_END of $PEERS ($TUNS with a TUN)" \
    "links up (all dials at once)" "${SETUP} s, $RATE links/s" \
    "exit VmRSS, 0 peers -> $PEERS peers" "$((RSS0 / 1024)) MiB -> $((RSSN / 1024)) MiB (peak $((HWM / 1024)) MiB)" \
    "exit RSS per connected peer" "$PER_PEER KiB" \
    "entry netd VmRSS (no TUN), mean" "$ENTRY_RSS MiB" \
    "ping RTT E->P through the tunnel, all idle" "$RTT ms avg ($TUNS entries x $PINGS pings)" \
    "exit's control-channel latency to its peers" "$LAT" \
    "exit CPU while idle (keepalives)" "$EXIT_CPU % of one core"
echo
echo "userspace exit; $(nproc) CPUs; load avg before $LOAD_BEFORE, after $(cut -d' ' -f1-3 /proc/loadavg)"
