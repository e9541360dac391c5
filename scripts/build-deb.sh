#!/usr/bin/env bash
# Builds sapper_<version>_<arch>.deb with dpkg-deb (no cargo-deb needed):
# the three binaries, the systemd units, sysusers.d and sysctl.d files, and a
# commented example config (a conffile).
#
#   scripts/build-deb.sh [--debug] [--out DIR]     # default DIR: target/debian
#
# --debug packages the dev-profile binaries (faster to build; the boot test
# uses it). Prints the path of the .deb on stdout.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=lib/common.sh
. "$ROOT/scripts/lib/common.sh"
cd "$ROOT"

profile=release
out="$ROOT/target/debian"
while [ $# -gt 0 ]; do
    case $1 in
        --debug) profile=debug ;;
        --out) out=$2; shift ;;
        *) die "unknown argument $1" ;;
    esac
    shift
done

ensure_packages dpkg-deb:dpkg
find_cargo
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
[ -n "$version" ] || die "no workspace version in Cargo.toml"
arch=$(dpkg --print-architecture)

if [ "$profile" = release ]; then
    log "cargo build --release (sapper-netd, sapper-privd, sapperctl)"
    "$CARGO" build --release -p sapper-netd -p sapper-privd -p sapperctl >&2
else
    log "cargo build (dev profile: sapper-netd, sapper-privd, sapperctl)"
    "$CARGO" build -p sapper-netd -p sapper-privd -p sapperctl >&2
fi
bindir="$ROOT/target/$profile"

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
pkg="$stage/sapper"
install -d "$pkg/DEBIAN" "$pkg/usr/bin" "$pkg/lib/systemd/system" \
    "$pkg/usr/lib/sysusers.d" "$pkg/usr/lib/sysctl.d" "$pkg/etc/sapper" \
    "$pkg/usr/share/doc/sapper"
for b in sapper-netd sapper-privd sapperctl; do
    install -m 0755 "$bindir/$b" "$pkg/usr/bin/$b"
    # Debug info (profile.release has debug = 1) stays in target/, not on
    # servers: the dev-profile binaries shrink from ~100 MB to a few MB.
    if command -v strip >/dev/null 2>&1; then
        strip --strip-debug "$pkg/usr/bin/$b"
    fi
done
install -m 0644 systemd/*.service systemd/*.socket "$pkg/lib/systemd/system/"
install -m 0644 systemd/sapper.sysusers "$pkg/usr/lib/sysusers.d/sapper.conf"
install -m 0644 systemd/sapper.sysctl "$pkg/usr/lib/sysctl.d/60-sapper.conf"
# Group sapper-netd (netd and privd) reads it; it does not exist yet at
# unpack time, so postinst sets the group.
install -m 0640 systemd/sapper.toml.example "$pkg/etc/sapper/sapper.toml"
install -m 0644 README.md "$pkg/usr/share/doc/sapper/README.md"
install -m 0644 systemd/sapper.toml.example "$pkg/usr/share/doc/sapper/sapper.toml.example"
install -m 0644 LICENSE "$pkg/usr/share/doc/sapper/copyright"

cat >"$pkg/DEBIAN/control" <<CONTROL
Package: sapper
Version: $version
Architecture: $arch
Maintainer: Sapper maintainers <sapper@example.invalid>
Section: net
Priority: optional
Depends: libc6, systemd (>= 252)
Recommends: nftables
Installed-Size: $(du -sk "$pkg" | cut -f1)
Description: privilege-separated layer-3 tunnel over QUIC or WebSocket
 sapper-netd carries IP packets between nodes with no privilege at all;
 sapper-privd, with only CAP_NET_ADMIN, owns the TUN, routes and NAT;
 sapperctl shows and changes what is going on. Ships hardened systemd units
 with socket activation, readiness notification and an fd store that keeps
 the tunnel across a privd restart.
CONTROL
echo /etc/sapper/sapper.toml >"$pkg/DEBIAN/conffiles"

cat >"$pkg/DEBIAN/postinst" <<'POSTINST'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
    # The static users and group (sysusers.d/sapper.conf).
    systemd-sysusers sapper.conf
    chgrp sapper-netd /etc/sapper/sapper.toml
    chmod 0640 /etc/sapper/sapper.toml
    # Forwarding for a kernel exit (privd may not write /proc/sys itself).
    # An entry-only node can mask it: ln -s /dev/null /etc/sysctl.d/60-sapper.conf
    /lib/systemd/systemd-sysctl /usr/lib/sysctl.d/60-sapper.conf || true
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload || true
    fi
fi
exit 0
POSTINST
cat >"$pkg/DEBIAN/prerm" <<'PRERM'
#!/bin/sh
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
    systemctl stop sapper-netd.service sapper-privd.service \
        sapper-netd.socket sapper-netd-quic.socket sapper-netd-ws.socket \
        sapper-privd.socket || true
    systemctl disable sapper-netd.socket sapper-netd-quic.socket \
        sapper-netd-ws.socket sapper-privd.socket sapper-netd.service \
        sapper-privd.service >/dev/null 2>&1 || true
fi
exit 0
PRERM
cat >"$pkg/DEBIAN/postrm" <<'POSTRM'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi
if [ "$1" = purge ]; then
    rm -rf /var/lib/sapper
fi
exit 0
POSTRM
chmod 0755 "$pkg/DEBIAN/postinst" "$pkg/DEBIAN/prerm" "$pkg/DEBIAN/postrm"

mkdir -p "$out"
deb="$out/sapper_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$pkg" "$deb" >&2
log "built $deb"
echo "$deb"
