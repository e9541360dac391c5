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

    fn name(&self) -> String {
        let name = std::ffi::CStr::from_bytes_until_nul(&self.name);
        name.map_or_else(|_| String::new(), |n| n.to_string_lossy().into_owned())
    }
}

// TUNSETIFF is declared _IOW('T', 202, int) although it takes an ifreq.
nix::ioctl_write_int!(tunsetiff, b'T', 202);
// TUNGETIFF is declared _IOR('T', 210, unsigned int) and fills an ifreq.
nix::ioctl_read_bad!(
    tungetiff,
    nix::request_code_read!(b'T', 210, std::mem::size_of::<libc::c_uint>()),
    IfReq
);

/// Creates (or attaches to) the TUN `name` as a layer-3 device without
/// packet-info headers. Returns the fd and the name the kernel chose.
/// EBUSY means another process still holds a TUN of that name, e.g. a netd
/// that outlived the previous privd.
pub fn create(name: &str) -> anyhow::Result<(OwnedFd, String)> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun");
    let file = file.context("cannot open /dev/net/tun")?;
    let mut req = IfReq::new(name, libc::IFF_TUN | libc::IFF_NO_PI);
    // SAFETY: `req` is a live, correctly sized ifreq for the duration of the
    // call and the fd is open; the kernel writes back at most IFNAMSIZ bytes
    // of name into it.
    unsafe { tunsetiff(file.as_raw_fd(), &mut req as *mut IfReq as libc::c_ulong) }
        .with_context(|| format!("TUNSETIFF {name:?}"))?;
    Ok((OwnedFd::from(file), req.name()))
}

/// Takes back a TUN fd from systemd's fd store (a previous privd put it
/// there): the interface, its addresses and its routes never went away.
/// TUNGETIFF both proves the fd is a TUN and tells its name.
pub fn adopt(fd: OwnedFd) -> anyhow::Result<(OwnedFd, String)> {
    let mut req = IfReq::new("", 0);
    // SAFETY: `req` is a live, correctly sized ifreq; the kernel writes at
    // most sizeof(struct ifreq) bytes into it, or fails on a non-TUN fd.
    unsafe { tungetiff(fd.as_raw_fd(), &mut req) }.context("the stored fd is not a TUN")?;
    Ok((fd, req.name()))
}
