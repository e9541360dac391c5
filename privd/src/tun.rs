//! Creating the TUN device. privd holds the fd for its whole life: a TUN
//! without the persist flag disappears (with its addresses and routes) when
//! its last fd closes, so privd's copy keeps the interface stable while netd
//! restarts, and netd only ever receives duplicates.

use nix::libc;
use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, OwnedFd};

/// TUN creation errors.
#[derive(Debug, thiserror::Error)]
pub enum TunError {
    /// The name does not fit in an ifreq.
    #[error("interface name {0:?} is longer than 15 bytes")]
    NameTooLong(String),
    /// /dev/net/tun could not be opened.
    #[error("cannot open /dev/net/tun: {0}")]
    Open(std::io::Error),
    /// A stored fd is not an attached TUN (TUNGETIFF failed).
    #[error("the stored fd is not a TUN: {0}")]
    NotTun(nix::Error),
    /// The kernel refused TUNSETIFF (EBUSY: another process still holds a
    /// TUN of that name, e.g. a netd that outlived the previous privd).
    #[error("TUNSETIFF {name:?}: {source}")]
    SetIff {
        /// Requested name.
        name: String,
        /// The errno.
        source: nix::Error,
    },
}

// struct ifreq as TUNSETIFF uses it: name then a short of flags, padded to
// the full size of the union so the kernel's copy_from_user stays in bounds.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
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
pub fn create(name: &str) -> Result<(OwnedFd, String), TunError> {
    if name.len() >= libc::IFNAMSIZ {
        return Err(TunError::NameTooLong(name.to_string()));
    }
    let file =
        OpenOptions::new().read(true).write(true).open("/dev/net/tun").map_err(TunError::Open)?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: `req` is a live, correctly sized ifreq for the duration of the
    // call and the fd is open; the kernel writes back at most IFNAMSIZ bytes
    // of name into it.
    unsafe { tunsetiff(file.as_raw_fd(), &mut req as *mut IfReq as libc::c_ulong) }
        .map_err(|source| TunError::SetIff { name: name.to_string(), source })?;
    let len = req.name.iter().position(|b| *b == 0).unwrap_or(req.name.len());
    let actual = String::from_utf8_lossy(&req.name[..len]).into_owned();
    Ok((OwnedFd::from(file), actual))
}

/// Takes back a TUN fd from systemd's fd store (a previous privd put it
/// there): the interface, its addresses and its routes never went away.
/// TUNGETIFF both proves the fd is a TUN and tells its name.
pub fn adopt(fd: OwnedFd) -> Result<(OwnedFd, String), TunError> {
    let mut req = IfReq { name: [0; libc::IFNAMSIZ], flags: 0, _pad: [0; 22] };
    // SAFETY: `req` is a live, correctly sized ifreq; the kernel writes at
    // most sizeof(struct ifreq) bytes into it, or fails on a non-TUN fd.
    unsafe { tungetiff(fd.as_raw_fd(), &mut req) }.map_err(TunError::NotTun)?;
    let len = req.name.iter().position(|b| *b == 0).unwrap_or(req.name.len());
    Ok((fd, String::from_utf8_lossy(&req.name[..len]).into_owned()))
}
