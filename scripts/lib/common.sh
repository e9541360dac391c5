# shellcheck shell=bash
# Helpers shared by scripts/test.sh, scripts/demo.sh, bench/throughput.sh and
# .ci/run. Source it; it defines functions and sets nothing else.

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Fails unless running as root.
need_root() {
    [ "$(id -u)" -eq 0 ] || die "$1 needs root (network namespaces, TUN, nftables): run it with sudo"
}

# ensure_packages CMD:PKG ... — apt-get installs the packages whose command
# is missing (apt-get update first, once).
ensure_packages() {
    local missing=() pair cmd pkg
    for pair in "$@"; do
        cmd=${pair%%:*}
        pkg=${pair#*:}
        if ! command -v "$cmd" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$cmd" ] && [ ! -x "/sbin/$cmd" ]; then
            missing+=("$pkg")
        fi
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    command -v apt-get >/dev/null 2>&1 || die "missing packages ${missing[*]} and no apt-get to install them"
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
}

# Sets CARGO. Under sudo, PATH usually lacks ~/.cargo/bin; borrow the
# invoking user's toolchain then.
find_cargo() {
    if command -v cargo >/dev/null 2>&1; then
        CARGO=$(command -v cargo)
        return 0
    fi
    if [ -n "${SUDO_USER:-}" ]; then
        local home
        home=$(getent passwd "$SUDO_USER" | cut -d: -f6)
        if [ -x "$home/.cargo/bin/cargo" ]; then
            export CARGO_HOME="$home/.cargo" RUSTUP_HOME="$home/.rustup"
            export PATH="$home/.cargo/bin:$PATH"
            CARGO="$home/.cargo/bin/cargo"
            return 0
        fi
    fi
    die "cargo not found: install a Rust toolchain (https://rustup.rs), then run this again"
}

# After a sudo run, give target/ back to the user who ran sudo so their own
# builds keep working.
restore_target_owner() {
    local root=$1
    if [ -n "${SUDO_USER:-}" ] && [ "$SUDO_USER" != root ] && [ -d "$root/target" ]; then
        chown -R "$SUDO_USER": "$root/target" 2>/dev/null || true
    fi
}

# build_release: the release binaries the demo and the benchmark run.
build_release() {
    find_cargo
    log "building release binaries (cargo build --release --workspace --bins)"
    (cd "$ROOT" && "$CARGO" build --release --workspace --bins)
}

# stop_and_remove PIDS_ARRAY NAMESPACES_ARRAY TENTHS: TERM to every pid,
# up to TENTHS tenths of a second for them to go, KILL to the rest and to
# anything left in the namespaces, which are then deleted. Safe to repeat.
stop_and_remove() {
    local -n pids_=$1 namespaces_=$2
    local tenths=$3 pid ns i alive
    for pid in "${pids_[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for ((i = 0; i < tenths; i++)); do
        alive=0
        for pid in "${pids_[@]}"; do kill -0 "$pid" 2>/dev/null && { alive=1; break; }; done
        [ $alive -eq 0 ] && break
        sleep 0.1
    done
    for pid in "${pids_[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    for ns in "${namespaces_[@]}"; do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
        ip netns del "$ns" 2>/dev/null || true
    done
    wait 2>/dev/null || true
}

# Deletes the network namespaces a killed test run left behind: every
# /run/netns/sap<UPPER><pid>_<n> (the harness's and privd's test names)
# whose creating process is gone; what still runs inside is killed first.
cleanup_stale_netns() {
    local f name pid
    for f in /run/netns/sap[A-Z]*_*; do
        [ -e "$f" ] || continue
        name=${f##*/}
        pid=${name#sap?}
        pid=${pid%%_*}
        case "$pid" in '' | *[!0-9]*) continue ;; esac
        [ -d "/proc/$pid" ] && continue
        ip netns pids "$name" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
        ip netns del "$name" 2>/dev/null && log "removed stale namespace $name"
    done
}
