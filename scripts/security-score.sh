#!/usr/bin/env bash
# Scores the hardening of Sapper's systemd units the way an auditor would:
# `systemd-analyze security --offline=true` on each service in systemd/,
# prints the score and the settings that cost points, and fails when a score
# is above its target (netd 1.2, privd 1.5; lower is better, 0-10).
#
#   scripts/security-score.sh            # needs systemd-analyze (Debian: systemd)
#
# --offline=true reads the unit files only; nothing is started and PID 1 need
# not be systemd. The units are copied into a scratch root so that
# Requires=/Sockets= on the other Sapper units resolve without installing
# anything on the host.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=lib/common.sh
. "$ROOT/scripts/lib/common.sh"

ensure_packages systemd-analyze:systemd

# The template units are scored through an instance; they must also be
# up to date with the plain units they are generated from.
declare -A TARGET=([sapper-netd.service]=1.2 [sapper-privd.service]=1.5
    [sapper-netd@example.service]=1.2 [sapper-privd@example.service]=1.5)
"$ROOT/scripts/gen-template-units.sh" --check

SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT
mkdir -p "$SCRATCH/etc/systemd/system"
cp "$ROOT"/systemd/*.service "$ROOT"/systemd/*.socket "$SCRATCH/etc/systemd/system/"

fail=0
for unit in sapper-netd.service sapper-privd.service \
    sapper-netd@example.service sapper-privd@example.service; do
    out=$(systemd-analyze security --offline=true --no-pager --root="$SCRATCH" \
        "$unit" 2>&1) || true
    score=$(printf '%s\n' "$out" | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' | tail -1)
    if [ -z "$score" ]; then
        printf '%s\n' "$out" >&2
        die "no score for $unit (systemd-analyze $(systemd-analyze --version | head -1))"
    fi
    target=${TARGET[$unit]}
    if awk -v s="$score" -v t="$target" 'BEGIN { exit !(s > t) }'; then
        printf 'FAIL %-28s exposure %s > target %s\n' "$unit" "$score" "$target"
        fail=1
    else
        printf 'ok   %-28s exposure %s <= target %s\n' "$unit" "$score" "$target"
    fi
    # What still costs points, so a regression shows its cause in the log.
    printf '%s\n' "$out" | grep '✗' | sed 's/^/    /' || true
done
exit "$fail"
