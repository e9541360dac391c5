#!/usr/bin/env bash
# Generates the template units (sapper-netd@.service/.socket,
# sapper-privd@.service/.socket) from the plain ones, so both carry the same
# hardening. Instance NAME reads /etc/sapper/NAME.toml, the PSK from
# /etc/sapper/NAME.psk, keeps state in /var/lib/sapper/NAME and its sockets in
# /run/sapper/NAME/. Several tunnels can then run side by side.
#
#   scripts/gen-template-units.sh           # rewrite systemd/*@.*
#   scripts/gen-template-units.sh --check   # fail if they are out of date
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT/systemd"

gen() { # BASE OUT
    local base=$1 out=$2
    {
        echo "# GENERATED from $base by scripts/gen-template-units.sh; edit $base and rerun."
        echo "# Instance NAME: config /etc/sapper/NAME.toml, sockets under /run/sapper/NAME/."
        if [ "$base" = sapper-netd.service ]; then
            echo "# The template has no -quic/-ws socket units: an instance binds its"
            echo "# [[netd.listen]] addresses itself, so use ports >= 1024 (netd holds no"
            echo "# CAP_NET_BIND_SERVICE), or add socket units for sapper-netd@NAME.service."
            echo "# The PSK comes from /etc/sapper/NAME.psk."
        fi
        echo "# Each instance has users of its own, so that one tunnel cannot reach another's"
        echo "# privd or management socket: sapper-netd-NAME (group sapper-netd-NAME, which"
        echo "# also owns this instance's sockets and config) and sapper-privd-NAME. Create"
        echo "# them before the first start, and name them in /etc/sapper/NAME.toml"
        echo "# (netd.user, privd.netd_user, privd.socket_group):"
        echo "#   systemd-sysusers --inline 'g sapper-netd-NAME -' \\"
        echo "#     'u sapper-netd-NAME -:sapper-netd-NAME \"Sapper netd NAME\" /var/lib/sapper/NAME' \\"
        echo "#     'u sapper-privd-NAME - \"Sapper privd NAME\" -'"
        sed -e 's|^Description=\(.*\)|Description=\1 (instance %i)|' \
            -e 's|/etc/sapper/sapper\.toml|/etc/sapper/%i.toml|g' \
            -e 's|/run/sapper/\([a-z]*\)\.sock|/run/sapper/%i/\1.sock|g' \
            -e 's| sapper-netd-quic\.socket sapper-netd-ws\.socket||g' \
            -e 's|sapper-privd\.socket|sapper-privd@%i.socket|g' \
            -e 's|sapper-netd\.socket|sapper-netd@%i.socket|g' \
            -e 's|^Service=sapper-netd\.service$|Service=sapper-netd@%i.service|' \
            -e 's|^StateDirectory=sapper$|StateDirectory=sapper/%i|' \
            -e 's|^LoadCredential=psk:/etc/sapper/psk$|LoadCredential=psk:/etc/sapper/%i.psk|' \
            -e 's/^\(User\|Group\|SocketUser\|SocketGroup\)=\(sapper-netd\|sapper-privd\)$/\1=\2-%i/' \
            "$base"
    } >"$out"
}

out=.
if [ "${1:-}" = --check ]; then
    out=$(mktemp -d)
    trap 'rm -rf "$out"' EXIT
fi
gen sapper-privd.service "$out/sapper-privd@.service"
gen sapper-privd.socket "$out/sapper-privd@.socket"
gen sapper-netd.service "$out/sapper-netd@.service"
gen sapper-netd.socket "$out/sapper-netd@.socket"

if [ "${1:-}" = --check ]; then
    for f in sapper-privd@.service sapper-privd@.socket sapper-netd@.service sapper-netd@.socket; do
        diff -u "$f" "$out/$f" >&2 || {
            echo "systemd/$f is out of date: run scripts/gen-template-units.sh" >&2
            exit 1
        }
    done
fi
