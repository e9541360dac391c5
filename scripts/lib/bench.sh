# shellcheck shell=bash
# Measurement helpers shared by bench/throughput.sh and bench/scale.sh:
# iperf3 and ping between namespaces, and a process's CPU time and memory
# from /proc. Source after common.sh; every wait is bounded by timeout.

# iperf3_run SERVER_NS CLIENT_NS ADDR SECS STREAMS — TCP from CLIENT_NS to
# ADDR in SERVER_NS for SECS seconds over STREAMS parallel streams; prints
# "GBIT_PER_S BYTES" as the receiver counted them.
iperf3_run() {
    local server_ns=$1 client_ns=$2 addr=$3 secs=$4 streams=$5 out server
    ip netns exec "$server_ns" timeout $((secs + 30)) iperf3 -s -1 -B "$addr" >/dev/null 2>&1 &
    server=$!
    topo_wait "iperf3 server on $addr" 10 \
        sh -c "ip netns exec '$server_ns' ss -Hltn 'sport = :5201' | grep -q 5201"
    out=$(ip netns exec "$client_ns" timeout $((secs + 20)) iperf3 -c "$addr" -t "$secs" -P "$streams" -J 2>&1) ||
        { echo "$out" | tail -n 20 >&2; kill "$server" 2>/dev/null || true; return 1; }
    wait "$server" 2>/dev/null || true
    jq -r '.end.sum_received | "\(.bits_per_second / 1e9 | . * 100 | round / 100) \(.bytes)"' <<<"$out"
}

# ping_avg NS ADDR COUNT [SIZE] — average RTT in ms over COUNT pings 0.2 s
# apart (SIZE bytes of ICMP payload, default 56).
ping_avg() {
    local ns=$1 addr=$2 count=$3 size=${4:-56}
    ip netns exec "$ns" timeout $((count + 20)) ping -n -q -c "$count" -s "$size" -i 0.2 -W 2 "$addr" |
        awk -F/ '/^rtt|^round-trip/ { print $5 }'
}

# cpu_ticks PID — user + system CPU time of PID in clock ticks (fields 14
# and 15 of /proc/PID/stat, counted after the ")" that ends the command).
cpu_ticks() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
    stat=${stat##*) }
    awk '{ print $12 + $13 }' <<<"$stat"
}

# status_kib PID FIELD — a /proc/PID/status figure in KiB (VmRSS, VmHWM).
status_kib() {
    awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status" 2>/dev/null
}

# cpu_per_gb TICKS BYTES — CPU seconds per GB (1e9 bytes) carried.
cpu_per_gb() {
    awk -v t="$1" -v b="$2" -v hz="$(getconf CLK_TCK)" \
        'BEGIN { if (b > 0) printf "%.2f", t / hz / (b / 1e9); else print "n/a" }'
}

# ratio A B — A / B to three places, or n/a.
ratio() {
    awk -v a="$1" -v b="$2" 'BEGIN { if (a + 0 > 0 && b + 0 > 0) printf "%.3f", a / b; else print "n/a" }'
}
