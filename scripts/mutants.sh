#!/usr/bin/env bash
# Breaks one feature at a time in a scratch copy of the committed tree and
# runs the tests that are named for it: each mutant must make them fail
# ("caught"). A mutant the tests survive ("MISSED") is a test that cannot
# fail for the reason it claims. Nothing here touches the checkout itself.
#
#   sudo scripts/mutants.sh            # every mutant
#   sudo scripts/mutants.sh NAME...    # some of them
#   scripts/mutants.sh --list          # names, files, tests
#
# Not part of CI (each mutant rebuilds the crates it touches and runs e2e
# tests: about 1-3 minutes each on 2 cores). SAPPER_MUTANTS_DIR (default
# /var/tmp/sapper-mutants) keeps the scratch tree and its target dir between
# runs, so later runs only rebuild what a mutant changed.
#
# Each mutant is one line: NAME|FILE|PERL|TEST ARGS, where PERL is a
# substitution applied with `perl -0pi -e` (it must change the file, or the
# mutant is reported as stale) and TEST ARGS go to `cargo test`. A `|`
# inside PERL is written `\x7c`, since `|` separates the fields.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=lib/common.sh
. "$ROOT/scripts/lib/common.sh"

MUTANTS=(
    # The PSK proof: either side accepting any proof.
    'psk-client-accepts-any-proof|shared/src/handshake.rs|s/if !proof::verify\(psk, self\.side\.peer\(\)/if self.side == Side::Server \&\& !proof::verify(psk, self.side.peer()/|-p sapper-tests --test e2e psk_mismatch'
    'psk-server-accepts-any-proof|shared/src/handshake.rs|s/if !proof::verify\(psk, self\.side\.peer\(\)/if self.side == Side::Client \&\& !proof::verify(psk, self.side.peer()/|-p sapper-tests --test e2e psk_mismatch'
    # The privilege drop.
    'netd-keeps-supplementary-groups|netd/src/privs.rs|s/nix::unistd::setgroups\(&\[t\.gid\]\)\.context\("setgroups"\)\?;//|-p sapper-tests --test e2e netd_unprivileged'
    'netd-keeps-root-and-capabilities|netd/src/privs.rs|s/(pub fn drop_all\(target: Option<Target>\) -> Result<\(\)> \{)/$1\n    if target.is_some() { return Ok(()); }/|-p sapper-tests --test hardening netd_credentials_cannot_create_a_tun_or_change_a_route'
    # (installing the seccomp filter sets no_new_privs as well: the test is
    # the one whose netd runs without the filter.)
    'netd-without-no-new-privs|netd/src/privs.rs|s/nix::sys::prctl::set_no_new_privs\(\)\.context\("setting no_new_privs"\)\?;//|-p sapper-tests --test hardening hand_started_netd_filters_itself_unless_told_not_to'
    # Landlock.
    'landlock-never-applied|netd/src/main.rs|s/let status = fs_sandbox::restrict\(&readable, remove_in\)\?;/let _ = (\&readable, remove_in); let status = landlock::RulesetStatus::NotEnforced;/|-p sapper-tests --test hardening netd_runs_filtered_and_logs_audit_events'
    'selftest-without-landlock|netd/src/main.rs|s/let status = fs_sandbox::restrict\(&\[config\.to_path_buf\(\)\], None\)\?;/let status = landlock::RulesetStatus::NotEnforced;/|-p sapper-tests --test hardening syscalls_and_files_outside_the_sandbox_fail'
    # privd answers a uid that is not netd's with a refusal, not a hang-up.
    'privd-hangs-up-on-refusals|privd/src/server.rs|s/(            if self\.send\(&c\.stream, reply\)\.is_err\(\) \x7c\x7c c\.one_reply \{)/            if matches!(reply.outcome(), Outcome::Refused) { return false; }\n$1/|-p sapper-tests --test e2e privd_refuses_other_uid'
    # Routes.
    'route-covering-a-peer-installed|control/src/core.rs|s/if underlay\.iter\(\)\.any\(\x7ca\x7c prefix\.contains\(a\)\) \{/if underlay.is_empty() \&\& underlay.iter().any(\x7ca\x7c prefix.contains(a)) {/|-p sapper-tests --test roles announced_route_covering_a_peer_is_not_installed'
    # The userspace exit's limits.
    'udp-flow-limit-ignored|netd/src/exit/limits.rs|s/if self\.flows\[i\] >= limits\.max_flows\[i\] \{/if proto != Proto::Udp \&\& self.flows[i] >= limits.max_flows[i] {/|-p sapper-tests --test userspace_exit udp_and_icmp_flow_limits_refuse_new_flows'
    'icmp-flow-limit-ignored|netd/src/exit/limits.rs|s/if self\.flows\[i\] >= limits\.max_flows\[i\] \{/if proto != Proto::Icmp \&\& self.flows[i] >= limits.max_flows[i] {/|-p sapper-tests --test userspace_exit udp_and_icmp_flow_limits_refuse_new_flows'
    'memory-limit-ignored|netd/src/exit/limits.rs|s/if self\.bytes\.saturating_add\(bytes\) > limits\.max_bytes \{/if false \&\& self.bytes.saturating_add(bytes) > limits.max_bytes {/|-p sapper-tests --test userspace_exit memory_limit_refuses_new_flows_only'
    # Post-quantum key exchange: "hybrid" quietly accepting X25519.
    'hybrid-accepts-classic|netd/src/tls.rs|s/KeyExchange::Hybrid => vec!\[kx_group::X25519MLKEM768\],/KeyExchange::Hybrid => vec![kx_group::X25519MLKEM768, kx_group::X25519],/|-p sapper-tests --test pq hybrid_listener_refuses_classic'
    # Operators' features (issue 15): init, recovery, metrics, reload, --stay.
    'init-prints-a-wrong-fingerprint|ctl/src/init.rs|s/ck\.cert\.der\(\)/ck.cert.pem().as_bytes()/|-p sapper-tests --test operators init_alone::quic'
    'quic-reset-key-not-kept|netd/src/reset_key.rs|s/match KEY\.get\(\) \{/match None::<\&Arc<ResetKey>> {/|-p sapper-tests --test operators restart_recovery::quic'
    'restarted-dialler-not-replaced|netd/src/driver.rs|s/crate::restarted::replace_stale\(&mut self\.core, &up\);//|-p sapper-tests --test operators restart_recovery::quic'
    'metrics-serves-garbage|netd/src/metrics_http.rs|s/Verdict::Bad => BAD\.to_vec\(\),/Verdict::Bad => NOT_FOUND.to_vec(),/|-p sapper-tests --test operators metrics::quic'
    'metrics-loses-peer-bytes|netd/src/metrics.rs|s/inc_by\(p\.bytes_in\)/inc_by(0)/|-p sapper-tests --test operators metrics::quic'
    # Hostile peers, second round: twin links, role demotion, Retry, exit flows.
    'twin-link-never-takes-over|control/src/core.rs|s/if let Some\(\(origin, address\)\) = l\.standby\.remove\(p\) \{/if let Some((origin, address)) = None::<(Arc<str>, bool)> {/|-p sapper-tests --test e2e two_links_to_one_peer'
    'demoted-peer-keeps-routes|control/src/core.rs|s/        self\.demote_routes\(\);\n        self\.learn_held/        self.learn_held/|-p sapper-control --test simulation a_peer_leaving_the_exit_role_loses_its_routes'
    'quic-never-retries|netd/src/quic.rs|s/if node\.preauth\.under_pressure\(\)/if false \&\& node.preauth.under_pressure()/|-p sapper-tests --test hostile quic_retry_under_preauth_pressure'
    'exit-flows-ignore-the-source|netd/src/exit/packet.rs|s/src: SocketAddr::new\(self\.src, sp\),/src: SocketAddr::new(std::net::IpAddr::from([10, 99, 0, 1]), sp),/|-p sapper-tests --test userspace_exit same_destination_and_source_port_from_two_peers_stay_apart'
    'underlay-never-refreshed|netd/src/underlay.rs|s/core\.set_underlay\(set\)/drop((core, set))/|-p sapper-tests --test hostile an_interface_added_after_start_is_never_covered'
    'reload-ignores-connect|netd/src/reload.rs|s/self\.apply_connect\(node, &new\.connect\)\.await;//|-p sapper-tests --test operators reload::quic'
    'stay-keeps-dialling|netd/src/reload.rs|s/c\.stop\.cancel\(\);//|-p sapper-tests --test operators disconnect_stay::ws'
    'proxy-ignored|netd/src/ws.rs|s/match target\.proxy\(\) \{/match None::<\&sapper_shared::config::Proxy> {/|-p sapper-tests --test operators ws_through_http_proxy'
    'proxy-refusal-unclassified|netd/src/proxy.rs|s/        403 => Err\(ProxyError::Forbidden \{/        4030 => Err(ProxyError::Forbidden {/|-p sapper-tests --test operators ws_through_http_proxy'
    'audit-seccomp-mislabelled|ctl/src/audit.rs|s/"2" => "filter",/"2" => "strict",/|-p sapper-tests --test operators audit_matches_proc'
    'audit-landlock-unreported|netd/src/mgmt.rs|s/landlock: crate::fs_sandbox::recorded\(\)\.into\(\),/landlock: String::new(),/|-p sapper-tests --test operators audit_matches_proc'
    # The egress deny list.
    'deny-list-loses-broadcast|shared/src/egress.rs|s/\n    v4\(255, 255, 255, 255, 32\),//|-p sapper-shared --lib egress'
    'deny-list-narrows-multicast|shared/src/egress.rs|s/v4\(224, 0, 0, 0, 4\)/v4(224, 0, 0, 0, 8)/|-p sapper-shared --lib egress'
    # TUN offloads (issue 14): super-packets whole over WebSocket, joined
    # for the TUN, cut for QUIC, malformed ones counted.
    'ws-never-takes-super-packets|netd/src/main.rs|s/super_packets: true,/super_packets: false,/|-p sapper-tests --test offload both_on::ws'
    'tun-writes-never-joined|netd/src/gso.rs|s/coalescer: vnet\.map\(Coalescer::new\),/coalescer: vnet.and(None).map(Coalescer::new),/|-p sapper-tests --test offload both_on::quic'
    'relay-passes-super-packets-to-quic|netd/src/datapath.rs|s/Some\(gso\) if !next\.takes_super =>/Some(gso) if false \&\& !next.takes_super =>/|-p sapper-netd --bin sapper-netd relay_cuts_super_packets'
    'malformed-super-packets-uncounted|netd/src/datapath.rs|s/        self\.stats\.super_drops\.count\(e\);\n        from\.counters/        from.counters/|-p sapper-netd --bin sapper-netd malformed_super_packets'
    'peer-super-drops-uncounted|netd/src/datapath.rs|s/        self\.stats\.super_drops\.count\(e\);\n        from\.counters/        from.counters/|-p sapper-tests --test offload malformed_super_packets_are_dropped_and_counted'
)

field() { cut -d'|' -f"$1" <<<"$2"; }

if [ "${1:-}" = --list ]; then
    for m in "${MUTANTS[@]}"; do
        printf '%-34s %-28s cargo test %s\n' "$(field 1 "$m")" "$(field 2 "$m")" "$(field 4 "$m")"
    done
    exit 0
fi

need_root mutants.sh
ensure_packages ip:iproute2 nft:nftables iperf3:iperf3 ping:iputils-ping ps:procps perl:perl
find_cargo

WORK=${SAPPER_MUTANTS_DIR:-/var/tmp/sapper-mutants}
TREE="$WORK/tree"
export CARGO_TARGET_DIR="$WORK/target"
export SAPPER_E2E_PARALLEL=${SAPPER_E2E_PARALLEL:-1}
mkdir -p "$WORK"
rm -rf "$TREE"
mkdir -p "$TREE"
# The committed tree only: a mutant run never sees (or keeps) local edits.
git -C "$ROOT" archive HEAD | tar -x -C "$TREE"
log "scratch tree of $(git -C "$ROOT" rev-parse --short HEAD) in $TREE (target $CARGO_TARGET_DIR)"
trap 'cleanup_stale_netns' EXIT

selected=("$@")
wanted() {
    [ ${#selected[@]} -eq 0 ] && return 0
    local s
    for s in "${selected[@]}"; do [ "$s" = "$1" ] && return 0; done
    return 1
}

run_tests() { # ARGS...: runs `cargo test ARGS` in the tree, quietly
    # shellcheck disable=SC2086
    (cd "$TREE" && timeout --kill-after=30 1200 "$CARGO" test $1) >"$WORK/last.log" 2>&1
}

caught=0 missed=0 broken=0
declare -a report=()
for m in "${MUTANTS[@]}"; do
    name=$(field 1 "$m") file=$(field 2 "$m") expr=$(field 3 "$m") args=$(field 4 "$m")
    wanted "$name" || continue
    # The unmutated tree must pass the same tests, or failing proves nothing.
    log "$name: baseline (cargo test $args)"
    if ! run_tests "$args"; then
        report+=("BASELINE-FAILS  $name  (see $WORK/$name.baseline.log)")
        cp "$WORK/last.log" "$WORK/$name.baseline.log"
        broken=$((broken + 1))
        log "${report[-1]}"
        continue
    fi
    cp "$TREE/$file" "$WORK/pristine"
    if ! perl -0pi -e "$expr" "$TREE/$file" 2>"$WORK/$name.perl.log" ||
        cmp -s "$TREE/$file" "$WORK/pristine"; then
        cp "$WORK/pristine" "$TREE/$file"
        report+=("STALE           $name  (the substitution no longer matches $file)")
        broken=$((broken + 1))
        log "${report[-1]}"
        continue
    fi
    log "$name: mutated $file; building"
    if ! (cd "$TREE" && "$CARGO" build --workspace --all-targets) >"$WORK/$name.build.log" 2>&1; then
        report+=("DOES-NOT-BUILD  $name  (see $WORK/$name.build.log)")
        broken=$((broken + 1))
    elif run_tests "$args"; then
        report+=("MISSED          $name  (cargo test $args passed; log $WORK/$name.log)")
        cp "$WORK/last.log" "$WORK/$name.log"
        missed=$((missed + 1))
    else
        failed=$(grep -E '^test .* FAILED$|^    [a-z_:]+$' "$WORK/last.log" | sed 's/^ *//' | sort -u | head -4 | tr '\n' ' ')
        report+=("caught          $name  (failed: ${failed:-see log})")
        cp "$WORK/last.log" "$WORK/$name.log"
        caught=$((caught + 1))
    fi
    cp "$WORK/pristine" "$TREE/$file"
    log "${report[-1]}"
done

printf '\n'
printf '%s\n' "${report[@]}"
printf '\nmutants: %d caught, %d missed, %d broken (stale, not building or failing unmutated)\n' \
    "$caught" "$missed" "$broken"
[ "$missed" -eq 0 ] && [ "$broken" -eq 0 ]
