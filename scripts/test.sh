#!/usr/bin/env bash
# Runs every test of the workspace: the unit tests of all crates and the
# end-to-end tests in tests/ (network namespaces, real daemons), which need
# root. Installs the system packages the tests use when they are missing.
#
#   sudo scripts/test.sh [extra cargo test arguments, e.g. -- tunnel]
#
# Environment: SAPPER_E2E_PARALLEL (topologies at once, default 2),
# SAPPER_TEST_TIMEOUT (seconds for the whole cargo test run, default 3000),
# SAPPER_E2E_KEEP=1 (keep a failed test's temp dir).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=lib/common.sh
. "$ROOT/scripts/lib/common.sh"
cd "$ROOT"

need_root test.sh
ensure_packages ip:iproute2 nft:nftables iperf3:iperf3 ping:iputils-ping ps:procps cc:gcc tinyproxy:tinyproxy ethtool:ethtool \
    promtool:prometheus
find_cargo
trap 'restore_target_owner "$ROOT"; cleanup_stale_netns' EXIT
cleanup_stale_netns

# Build the daemons first: a compile error shows up here, once, instead of
# in every e2e test (the harness runs the same command and finds it a no-op).
log "building the workspace binaries"
"$CARGO" build --workspace --bins

export SAPPER_E2E_PARALLEL=${SAPPER_E2E_PARALLEL:-2}
log "running cargo test --workspace (e2e topologies at once: $SAPPER_E2E_PARALLEL)"
timeout --kill-after=30 "${SAPPER_TEST_TIMEOUT:-3000}" \
    "$CARGO" test --workspace --no-fail-fast "$@"
