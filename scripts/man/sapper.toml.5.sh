#!/usr/bin/env bash
# Writes sapper.toml(5) (roff) to stdout from what the repository already
# has, so the page cannot drift from it: the key table of README.md's
# "Configuration" section and systemd/sapper.toml.example (which
# tests/tests/systemd_fast.rs parses with the daemons' own parser).
# Usage: scripts/man/sapper.toml.5.sh VERSION
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
version=${1:?usage: $0 VERSION}

# Text to roff: backslashes doubled, a leading . or ' protected.
esc() { sed -e 's/\\/\\e/g' -e "s/^\([.']\)/\\\\\&\1/"; }
# Markdown inline code and emphasis to bold/plain.
inline() { sed -e 's/`\([^`]*\)`/\\fB\1\\fR/g' -e 's/\*\*\([^*]*\)\*\*/\1/g'; }

cat <<HEAD
.TH SAPPER.TOML 5 "" "sapper $version" "File Formats"
.SH NAME
sapper.toml \- configuration of a Sapper node
.SH DESCRIPTION
One TOML file per node (default
.IR /etc/sapper/sapper.toml ),
read by both daemons:
.BR sapper-privd (8)
reads
.B [node]
and
.BR [privd] ,
.BR sapper-netd (8)
reads
.B [node]
and
.BR [netd] .
The file is parsed once into typed values; a bad value stops the daemon at
start with the file, the key path and the rule (for example
.IR "netd.handshake_timeout_ms: must be 100..=60000 (milliseconds)" ),
and
.B SIGHUP
to netd refuses an invalid new file the same way.
.SH "NETD KEYS"
Ranges of the
.B [netd]
numbers (milliseconds unless said), from README.md:
HEAD
# The README table: "| key | default | range |" rows after the heading line.
awk '/^Ranges of the `\[netd\]` numbers/ {on=1; next}
     on && /^\| *---/ {next}
     on && /^\| *key *\|/ {next}
     on && /^\|/ {print; next}
     on && NF == 0 && seen {exit}
     on && /^\|/ {seen=1}
     on {seen=1}' "$ROOT/README.md" |
    esc | inline |
    awk -F'|' '{gsub(/^ +| +$/, "", $2); gsub(/^ +| +$/, "", $3); gsub(/^ +| +$/, "", $4);
                printf ".TP\n%s\ndefault %s; %s\n", $2, $3, $4}'
cat <<MID
.SH EXAMPLE
The annotated example the package installs as
.IR /etc/sapper/sapper.toml
(an exit that listens; notes for an entry inside):
.PP
.nf
.ft CR
MID
esc <"$ROOT/systemd/sapper.toml.example"
cat <<TAIL
.ft R
.fi
.SH "SEE ALSO"
.BR sapper-netd (8),
.BR sapper-privd (8),
.BR sapperctl (1);
every key with its default and range:
.I /usr/share/doc/sapper/README.md
("Configuration", "Userspace exit", "Metrics", "Through an HTTP proxy").
TAIL
