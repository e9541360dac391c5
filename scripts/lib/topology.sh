# shellcheck shell=bash
# The standard E/X/P test network for scripts/demo.sh and bench/throughput.sh
# (the Rust e2e harness in tests/src/topology.rs builds the same one).
#
#   E (entry)              X (exit)                 P (private, no default route)
#   sap0 10.99.0.1/24      sap0 10.99.0.2/24
#   ve-x 10.10.0.1/24 ──── vx-e 10.10.0.2/24
#                          vx-p 10.20.0.1/24 ────── vp-x 10.20.0.2/24
#
# Needs: BIN (directory with sapper-privd, sapper-netd, sapperctl) and
# TOPO_TAG (two lower-case letters naming the caller in namespace names).
# TOPO_EXIT=userspace (default kernel) runs the exit as netd alone, started
# as nobody with no privd and no TUN (the userspace exit), with ping sockets
# allowed in X. TOPO_OFFLOAD=0 opens both TUNs without offloads
# ([privd.tun] offload = false; the default, 1, is the config's default:
# virtio_net_hdr, TSO/USO). TOPO_RELAY=quic|ws
# puts a relay R (netd alone, no TUN) between E and X: E dials R over
# topo_up's transport, R dials X over TOPO_RELAY's (E ve-x 10.10.0.1 ──
# vr-e 10.10.0.2 R vr-x 10.11.0.1 ── vx-r 10.11.0.2 X), so E still dials
# 10.10.0.2. Call topo_cleanup from an EXIT trap.

# shellcheck source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

TOPO_PIDS=()
TOPO_DIR=""
TOPO_EXIT=${TOPO_EXIT:-kernel}
TOPO_RELAY=${TOPO_RELAY:-}
TOPO_OFFLOAD=${TOPO_OFFLOAD:-1}
TOPO_NAMESPACES=()

topo_names() {
    # ≤ 15 characters: "s" + tag + role + pid.
    NS_E="s${TOPO_TAG}E$$"
    NS_X="s${TOPO_TAG}X$$"
    NS_P="s${TOPO_TAG}P$$"
    NS_R="s${TOPO_TAG}R$$"
}

# transport_port TRANSPORT — sets PORT and WS_LINES for a listener.
transport_port() {
    case $1 in
        quic) PORT=4433; WS_LINES="" ;;
        ws) PORT=8443; WS_LINES='ws_path = "/sapper"' ;;
        *) die "unknown transport $1 (quic or ws)" ;;
    esac
}

# topo_veth NS1 IF1 ADDR1 NS2 IF2 ADDR2 — a veth pair between two namespaces.
topo_veth() {
    ip -n "$1" link add "$2" type veth peer name "$5" netns "$4"
    ip -n "$1" addr add "$3" dev "$2"
    ip -n "$4" addr add "$6" dev "$5"
    ip -n "$1" link set "$2" up
    ip -n "$4" link set "$5" up
}

# topo_up TRANSPORT — builds the network, writes configs and starts privd and
# netd on every node (the exit listens, the entry connects; a relay both).
topo_up() {
    local transport=$1 port ws_lines exit_transport=${TOPO_RELAY:-$1}
    topo_names
    TOPO_DIR=$(mktemp -d /tmp/sapper-"$TOPO_TAG".XXXXXX)
    chmod 0755 "$TOPO_DIR"   # netd runs as nobody and needs to reach its sockets

    local ns nodes=("$NS_E" "$NS_X" "$NS_P")
    [ -n "$TOPO_RELAY" ] && nodes+=("$NS_R")
    for ns in "${nodes[@]}"; do
        ip netns del "$ns" 2>/dev/null || true
        ip netns add "$ns"
        TOPO_NAMESPACES+=("$ns")
        ip -n "$ns" link set lo up
    done
    if [ -n "$TOPO_RELAY" ]; then
        topo_veth "$NS_E" ve-x 10.10.0.1/24 "$NS_R" vr-e 10.10.0.2/24
        topo_veth "$NS_R" vr-x 10.11.0.1/24 "$NS_X" vx-r 10.11.0.2/24
    else
        topo_veth "$NS_E" ve-x 10.10.0.1/24 "$NS_X" vx-e 10.10.0.2/24
    fi
    topo_veth "$NS_X" vx-p 10.20.0.1/24 "$NS_P" vp-x 10.20.0.2/24

    transport_port "$exit_transport"
    port=$PORT ws_lines=$WS_LINES

    local node
    for node in entry exit ${TOPO_RELAY:+relay}; do
        mkdir -p "$TOPO_DIR/$node/state"
        chmod 0755 "$TOPO_DIR/$node"
        chmod 0700 "$TOPO_DIR/$node/state"
    done
    # One PSK for both sides; 0600 root: netd reads it before dropping root.
    head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$TOPO_DIR/entry/psk"
    chmod 0600 "$TOPO_DIR/entry/psk"
    for node in exit ${TOPO_RELAY:+relay}; do
        cp -p "$TOPO_DIR/entry/psk" "$TOPO_DIR/$node/psk"
    done

    topo_config exit "$exit_transport" "$port" "$ws_lines" "" >"$TOPO_DIR/exit/sapper.toml"
    local fp as_exit=()
    if [ "$TOPO_EXIT" = userspace ]; then
        # netd alone, as nobody from the start: it owns its files.
        as_exit=(setpriv --reuid nobody --regid nogroup --clear-groups --inh-caps=-all --bounding-set=-all --)
        chown -R nobody:nogroup "$TOPO_DIR/exit"
        ip netns exec "$NS_X" sysctl -q -w net.ipv4.ping_group_range="0 2147483647"
    fi
    fp=$("${as_exit[@]}" "$BIN/sapper-netd" --config "$TOPO_DIR/exit/sapper.toml" --print-fingerprint | tail -n1) ||
        die "sapper-netd --print-fingerprint failed"
    if [ -n "$TOPO_RELAY" ]; then
        transport_port "$transport"
        topo_relay_config "$transport" "$PORT" "$WS_LINES" "$exit_transport" "$port" "$ws_lines" "$fp" \
            >"$TOPO_DIR/relay/sapper.toml"
        fp=$("$BIN/sapper-netd" --config "$TOPO_DIR/relay/sapper.toml" --print-fingerprint | tail -n1) ||
            die "sapper-netd --print-fingerprint (relay) failed"
        port=$PORT ws_lines=$WS_LINES
    fi
    topo_config entry "$transport" "$port" "$ws_lines" "$fp" >"$TOPO_DIR/entry/sapper.toml"

    if [ "$TOPO_EXIT" != userspace ]; then
        topo_start exit-privd "$NS_X" "$BIN/sapper-privd" --config "$TOPO_DIR/exit/sapper.toml"
        topo_wait "exit privd socket" 20 test -S "$TOPO_DIR/exit/privd.sock"
    fi
    topo_start entry-privd "$NS_E" "$BIN/sapper-privd" --config "$TOPO_DIR/entry/sapper.toml"
    topo_wait "entry privd socket" 20 test -S "$TOPO_DIR/entry/privd.sock"
    topo_start exit-netd "$NS_X" "${as_exit[@]}" "$BIN/sapper-netd" --config "$TOPO_DIR/exit/sapper.toml"
    topo_wait "exit netd socket" 20 test -S "$TOPO_DIR/exit/netd.sock"
    if [ -n "$TOPO_RELAY" ]; then
        topo_start relay-netd "$NS_R" "$BIN/sapper-netd" --config "$TOPO_DIR/relay/sapper.toml"
        topo_wait "relay netd socket" 20 test -S "$TOPO_DIR/relay/netd.sock"
    fi
    topo_start entry-netd "$NS_E" "$BIN/sapper-netd" --config "$TOPO_DIR/entry/sapper.toml"
    topo_wait "entry netd socket" 20 test -S "$TOPO_DIR/entry/netd.sock"
}

# topo_config NODE TRANSPORT PORT WS_LINES FINGERPRINT — prints a config.
topo_config() {
    local node=$1 transport=$2 port=$3 ws_lines=$4 fp=$5 d="$TOPO_DIR/$1" server=exit
    [ -n "$TOPO_RELAY" ] && server=relay   # the node the entry dials
    if [ "$node" = exit ] && [ "$TOPO_EXIT" = userspace ]; then
        cat <<CFG
[node]
name = "exit"
role = "exit"
psk_file = "$d/psk"

[netd]
state_dir = "$d/state"
management_socket = "$d/netd.sock"
ping_interval_ms = 200
announce_routes = ["10.20.0.0/24"]

[[netd.listen]]
transport = "$transport"
address = "0.0.0.0:$port"
$ws_lines

[netd.exit]
enable = true
CFG
        return
    fi
    cat <<CFG
[node]
name = "$node"
role = "$node"
psk_file = "$d/psk"

[netd]
user = "nobody"
group = "nogroup"
state_dir = "$d/state"
management_socket = "$d/netd.sock"
privd_socket = "$d/privd.sock"
ping_interval_ms = 200
CFG
    if [ "$node" = exit ]; then
        cat <<CFG
announce_routes = ["10.20.0.0/24"]

[[netd.listen]]
transport = "$transport"
address = "0.0.0.0:$port"
$ws_lines

[privd]
socket = "$d/privd.sock"
socket_group = "nogroup"
netd_user = "nobody"

[privd.tun]
name = "sap0"
addresses = ["10.99.0.2/24", "fd99::2/64"]
mtu = 1280
allowed_routes = ["10.0.0.0/8", "fd00::/8"]
offload = $( [ "$TOPO_OFFLOAD" = 1 ] && echo true || echo false )

[privd.nat]
enable = true
CFG
    else
        cat <<CFG

[[netd.connect]]
transport = "$transport"
address = "10.10.0.2:$port"
server_name = "$server"
fingerprint = "$fp"
$ws_lines

[privd]
socket = "$d/privd.sock"
socket_group = "nogroup"
netd_user = "nobody"

[privd.tun]
name = "sap0"
addresses = ["10.99.0.1/24", "fd99::1/64"]
mtu = 1280
routes = ["10.20.0.0/24"]
allowed_routes = ["10.0.0.0/8", "fd00::/8"]
offload = $( [ "$TOPO_OFFLOAD" = 1 ] && echo true || echo false )
CFG
    fi
}

# topo_relay_config IN_TRANSPORT IN_PORT IN_WS_LINES OUT_TRANSPORT OUT_PORT
# OUT_WS_LINES EXIT_FINGERPRINT — the relay's config: netd alone (drops to
# nobody), listening for the entry and dialling the exit at 10.11.0.2.
topo_relay_config() {
    local d="$TOPO_DIR/relay"
    cat <<CFG
[node]
name = "relay"
role = "relay"
psk_file = "$d/psk"

[netd]
user = "nobody"
group = "nogroup"
state_dir = "$d/state"
management_socket = "$d/netd.sock"
ping_interval_ms = 200

[[netd.listen]]
transport = "$1"
address = "0.0.0.0:$2"
$3

[[netd.connect]]
transport = "$4"
address = "10.11.0.2:$5"
server_name = "exit"
fingerprint = "$7"
$6
CFG
}

# topo_netd_pid LABEL — the pid of the daemon topo_start started as LABEL
# (ip netns exec and setpriv exec, so it is the daemon itself).
topo_netd_pid() {
    awk -v l="$1" '$1 == l { print $2 }' "$TOPO_DIR/pids"
}

# topo_start LABEL NS PROGRAM ARGS... — starts a daemon in NS, logging to
# $TOPO_DIR/LABEL.log.
topo_start() {
    local label=$1 ns=$2
    shift 2
    ip netns exec "$ns" "$@" >"$TOPO_DIR/$label.log" 2>&1 </dev/null &
    TOPO_PIDS+=("$!")
    echo "$label $!" >>"$TOPO_DIR/pids"
}

# topo_wait WHAT SECONDS COMMAND... — polls COMMAND every 0.2 s; fails after
# SECONDS, or as soon as a daemon has died.
topo_wait() {
    local what=$1 secs=$2 i pid
    shift 2
    for ((i = 0; i < secs * 5; i++)); do
        if "$@" >/dev/null 2>&1; then
            return 0
        fi
        for pid in "${TOPO_PIDS[@]}"; do
            kill -0 "$pid" 2>/dev/null || { topo_logs; die "a daemon (pid $pid) exited while waiting for $what"; }
        done
        sleep 0.2
    done
    topo_logs
    die "timed out after ${secs}s waiting for $what"
}

# Waits until a ping from E reaches P through the tunnel.
topo_wait_tunnel() {
    topo_wait "the tunnel (ping 10.20.0.2 from E)" "${1:-30}" \
        ip netns exec "$NS_E" ping -n -c 1 -W 1 10.20.0.2
}

# Prints the tail of every daemon log.
topo_logs() {
    [ -n "$TOPO_DIR" ] && [ -d "$TOPO_DIR" ] || return 0
    local f
    for f in "$TOPO_DIR"/*.log; do
        [ -e "$f" ] || continue
        printf -- '----- %s -----\n' "$(basename "$f")" >&2
        tail -n 40 "$f" >&2
    done
}

# Stops the daemons and removes namespaces and files. Safe to call twice.
topo_cleanup() {
    stop_and_remove TOPO_PIDS TOPO_NAMESPACES 30
    [ -n "$TOPO_DIR" ] && rm -rf "$TOPO_DIR"
    TOPO_PIDS=()
    TOPO_NAMESPACES=()
    TOPO_DIR=""
}

# topo_guard WHAT: on exit, also after Ctrl-C or TERM, tear the topology
# down and give target/ back to its owner; a failure is reported as WHAT's.
topo_guard() {
    TOPO_WHAT=$1
    trap topo_on_exit EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

topo_on_exit() {
    local rc=$?
    topo_cleanup
    restore_target_owner "$ROOT"
    [ $rc -eq 0 ] || printf '%s failed (exit %d)\n' "$TOPO_WHAT" "$rc" >&2
    exit $rc
}
