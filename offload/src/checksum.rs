//! One's-complement Internet checksum (RFC 1071).
