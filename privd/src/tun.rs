//! Creating the TUN device. privd holds the fd for its whole life: a TUN
//! without the persist flag disappears (with its addresses and routes) when
//! its last fd closes, so privd's copy keeps the interface stable while netd
//! restarts, and netd only ever receives duplicates.

use anyhow::Context;
use nix::libc;
use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, OwnedFd};

// struct ifreq as TUNSETIFF uses it: name then a short of flags, padded to
// the full size of the union so the kernel's copy_from_user stays in bounds.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl IfReq {
    fn new(name: &str, flags: libc::c_int) -> Self {
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: flags as libc::c_short,
            _pad: [0; 22],
        };
        // Config::parse allows at most 15 bytes; the last one stays NUL.
        let name = name.bytes().take(libc::IFNAMSIZ - 1);
        req.name.iter_mut().zip(name).for_each(|(to, b)| *to = b);
        req
    }

    /// The fd, the kernel's name for the TUN, and whether every packet
    /// carries a virtio_net_hdr.
    fn opened(self, fd: OwnedFd) -> (OwnedFd, String, bool) {
        let name = std::ffi::CStr::from_bytes_until_nul(&self.name);
        let name = name.map_or_else(|_| String::new(), |n| n.to_string_lossy().into_owned());
        (
            fd,
            name,
            self.flags as libc::c_int & libc::IFF_VNET_HDR != 0,
        )
    }
}

// TUNSETIFF is declared _IOW('T', 202, int) although it takes an ifreq.
nix::ioctl_write_int!(tunsetiff, b'T', 202);
// TUNSETOFFLOAD is _IOW('T', 208, unsigned int), the flags by value.
nix::ioctl_write_int!(tunsetoffload, b'T', 208);
// TUNGETIFF is declared _IOR('T', 210, unsigned int) and fills an ifreq.
nix::ioctl_read_bad!(
    tungetiff,
    nix::request_code_read!(b'T', 210, std::mem::size_of::<libc::c_uint>()),
    IfReq
);

/// TUN_F_* of linux/if_tun.h, in the order they are given up: USO is only
/// in kernels from 6.2, segmentation needs checksum offload.
const OFFLOADS: [(&str, libc::c_ulong); 5] = [
    ("csum", 0x01),
    ("tso4", 0x02),
    ("tso6", 0x04),
    ("uso4", 0x20),
    ("uso6", 0x40),
];

/// Creates (or attaches to) the TUN `name` as a layer-3 device without
/// packet-info headers, with a virtio_net_hdr when `vnet_hdr`. EBUSY means
/// another process still holds a TUN of that name, e.g. a netd that outlived
/// the previous privd.
pub fn create(name: &str, vnet_hdr: bool) -> anyhow::Result<(OwnedFd, String, bool)> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun");
    let file = file.context("cannot open /dev/net/tun")?;
    let vnet = libc::IFF_VNET_HDR * libc::c_int::from(vnet_hdr);
    let mut req = IfReq::new(name, libc::IFF_TUN | libc::IFF_NO_PI | vnet);
    // SAFETY: `req` is a live, correctly sized ifreq for the duration of the
    // call and the fd is open; the kernel writes back at most IFNAMSIZ bytes
    // of name into it.
    unsafe { tunsetiff(file.as_raw_fd(), &mut req as *mut IfReq as libc::c_ulong) }
        .with_context(|| format!("TUNSETIFF {name:?}"))?;
    Ok(req.opened(OwnedFd::from(file)))
}

/// Takes back a TUN fd from systemd's fd store (a previous privd put it
/// there): the interface, its addresses and its routes never went away.
/// TUNGETIFF both proves the fd is a TUN and tells its name and flags.
pub fn adopt(fd: OwnedFd) -> anyhow::Result<(OwnedFd, String, bool)> {
    let mut req = IfReq::new("", 0);
    // SAFETY: `req` is a live, correctly sized ifreq; the kernel writes at
    // most sizeof(struct ifreq) bytes into it, or fails on a non-TUN fd.
    unsafe { tungetiff(fd.as_raw_fd(), &mut req) }.context("the stored fd is not a TUN")?;
    Ok(req.opened(fd))
}

/// Turns on the most of [`OFFLOADS`] the kernel takes and names them (only
/// on a TUN with a virtio_net_hdr, where netd can tell a super-packet).
pub fn offload(fd: &OwnedFd) -> Vec<String> {
    let take = |n: &usize| {
        let bits = OFFLOADS[..*n].iter().fold(0, |b, (_, f)| b | f);
        // SAFETY: the fd is an open TUN; TUNSETOFFLOAD reads only the value.
        unsafe { tunsetoffload(fd.as_raw_fd(), bits) }.is_ok()
    };
    let on = [5, 3, 1].into_iter().find(take).unwrap_or(0);
    OFFLOADS[..on].iter().map(|(n, _)| n.to_string()).collect()
}
