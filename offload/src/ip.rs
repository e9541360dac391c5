//! IPv4/IPv6 and TCP/UDP header parsing.
