//! `struct virtio_net_hdr` (the 10-byte header in front of every TUN read and
//! write with `IFF_VNET_HDR`) and the set of offloads the TUN accepted.

use crate::Error;

/// Size of `struct virtio_net_hdr` (without `num_buffers`; TUN's default
/// `TUNSETVNETHDRSZ`).
pub const VNET_HDR_LEN: usize = 10;

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the L4 checksum is partial; complete it
/// over `csum_start..` and store it at `csum_start + csum_offset`.
pub const F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_F_DATA_VALID`: the checksum was verified (reads only).
pub const F_DATA_VALID: u8 = 2;

/// `VIRTIO_NET_HDR_GSO_NONE`.
pub const GSO_NONE: u8 = 0;
/// `VIRTIO_NET_HDR_GSO_TCPV4`.
pub const GSO_TCPV4: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_TCPV6`.
pub const GSO_TCPV6: u8 = 4;
/// `VIRTIO_NET_HDR_GSO_UDP_L4` (USO, one UDP datagram per segment).
pub const GSO_UDP_L4: u8 = 5;
/// `VIRTIO_NET_HDR_GSO_ECN`: ORed into a TCP GSO type when the first segment
/// carries CWR (which only the first segment keeps).
pub const GSO_ECN: u8 = 0x80;

/// `struct virtio_net_hdr`. The integers are little-endian on the wire: TUN
/// uses the host's order for legacy virtio headers, and netd only runs on
/// little-endian hosts (x86-64, aarch64).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VnetHdr {
    /// `F_NEEDS_CSUM`, `F_DATA_VALID`.
    pub flags: u8,
    /// `GSO_*`, possibly with `GSO_ECN`.
    pub gso_type: u8,
    /// Length of the headers (IP + TCP/UDP). On reads the kernel may put the
    /// linear length here instead, so [`crate::split`] does not rely on it.
    pub hdr_len: u16,
    /// Payload bytes per segment (not counting headers).
    pub gso_size: u16,
    /// Where checksumming starts (the L4 header).
    pub csum_start: u16,
    /// Offset of the checksum field from `csum_start` (16 TCP, 6 UDP).
    pub csum_offset: u16,
}

impl VnetHdr {
    /// Reads the header from the front of `b` (extra bytes are ignored).
    pub fn decode(b: &[u8]) -> Result<Self, Error> {
        let b: &[u8; VNET_HDR_LEN] = b
            .get(..VNET_HDR_LEN)
            .and_then(|b| b.try_into().ok())
            .ok_or(Error::Truncated)?;
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Ok(VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
        })
    }

    /// The header's wire form.
    pub fn encode(&self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b
    }
}

/// What `TUNSETOFFLOAD` accepted (privd reports it to netd by name).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offloads {
    /// `TUN_F_CSUM`: reads may carry partial checksums.
    pub csum: bool,
    /// `TUN_F_TSO4`: TCP/IPv4 super-packets.
    pub tso4: bool,
    /// `TUN_F_TSO6`: TCP/IPv6 super-packets.
    pub tso6: bool,
    /// `TUN_F_USO4`: UDP/IPv4 super-packets.
    pub uso4: bool,
    /// `TUN_F_USO6`: UDP/IPv6 super-packets.
    pub uso6: bool,
}

impl Offloads {
    const NAMES: [&'static str; 5] = ["csum", "tso4", "tso6", "uso4", "uso6"];

    /// Everything on: for [`crate::header_for`] when its header only feeds
    /// [`crate::split`] (a peer's super-packet cut without a TUN).
    pub const ALL: Offloads = Offloads {
        csum: true,
        tso4: true,
        tso6: true,
        uso4: true,
        uso6: true,
    };

    /// From the names in privd's `TunOpened.offloads`. Unknown names are
    /// ignored, so a newer privd can report more than this netd knows.
    pub fn from_names<I, S>(names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut o = Offloads::default();
        for n in names {
            match n.as_ref() {
                "csum" => o.csum = true,
                "tso4" => o.tso4 = true,
                "tso6" => o.tso6 = true,
                "uso4" => o.uso4 = true,
                "uso6" => o.uso6 = true,
                _ => {}
            }
        }
        o
    }

    /// The names of the offloads that are on, in a fixed order.
    pub fn names(&self) -> Vec<&'static str> {
        let on = [self.csum, self.tso4, self.tso6, self.uso4, self.uso6];
        Self::NAMES
            .iter()
            .zip(on)
            .filter_map(|(n, on)| on.then_some(*n))
            .collect()
    }

    /// Whether a write with this GSO type (ECN bit ignored) is allowed.
    pub(crate) fn allows(&self, gso_type: u8, v6: bool) -> bool {
        match gso_type & !GSO_ECN {
            GSO_NONE => true,
            GSO_TCPV4 => self.tso4 && !v6,
            GSO_TCPV6 => self.tso6 && v6,
            GSO_UDP_L4 => (self.uso4 && !v6) || (self.uso6 && v6),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vnet_hdr_round_trip_and_layout() {
        let h = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 0x0102,
            gso_size: 1448,
            csum_start: 20,
            csum_offset: 16,
        };
        let b = h.encode();
        assert_eq!(b, [1, 1, 0x02, 0x01, 0xa8, 0x05, 20, 0, 16, 0]);
        assert_eq!(VnetHdr::decode(&b), Ok(h));
        let mut long = b.to_vec();
        long.extend_from_slice(&[0xff; 5]);
        assert_eq!(VnetHdr::decode(&long), Ok(h));
    }

    #[test]
    fn vnet_hdr_truncated() {
        for n in 0..VNET_HDR_LEN {
            assert_eq!(
                VnetHdr::decode(&[0; VNET_HDR_LEN][..n]),
                Err(Error::Truncated)
            );
        }
    }

    #[test]
    fn offload_names_round_trip() {
        let o = Offloads::from_names(["tso6", "csum", "bogus", "uso4"]);
        assert_eq!(
            o,
            Offloads {
                csum: true,
                tso6: true,
                uso4: true,
                ..Default::default()
            }
        );
        assert_eq!(o.names(), ["csum", "tso6", "uso4"]);
        let all = Offloads::from_names(Offloads::NAMES);
        assert_eq!(all.names(), Offloads::NAMES);
        assert!(Offloads::from_names(Vec::<String>::new())
            .names()
            .is_empty());
    }
}
