//! The TUN device privd handed us: one reader task, many writers. Each
//! read/write on a TUN fd is exactly one IP packet (IFF_NO_PI). When privd
//! opened it with IFF_VNET_HDR, every read and write also carries a 10-byte
//! virtio_net_hdr in front: the kernel may then hand us GSO super-packets
//! (up to 64 KiB, checksum left partial) and take them back the same way.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// What privd reported about the TUN's offloads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VnetInfo {
    /// Reads and writes carry a virtio_net_hdr.
    pub vnet_hdr: bool,
    /// The offloads TUNSETOFFLOAD accepted ("csum", "tso4", ...).
    pub offloads: Vec<String>,
}

pub struct Tun {
    fd: AsyncFd<OwnedFd>,
    pub name: String,
    pub mtu: u32,
    pub addresses: Vec<String>,
    pub vnet: VnetInfo,
    /// `vnet.offloads`, parsed.
    pub offloads: sapper_offload::Offloads,
}

/// A virtio_net_hdr that asks nothing of the kernel: a complete packet.
const PLAIN_HDR: [u8; sapper_offload::VNET_HDR_LEN] = [0; sapper_offload::VNET_HDR_LEN];

impl Tun {
    pub fn new(
        fd: OwnedFd,
        name: String,
        mtu: u32,
        addresses: Vec<String>,
        vnet: VnetInfo,
    ) -> io::Result<Self> {
        let flags = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL)?;
        let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(flags))?;
        Ok(Self {
            // SAFETY: an OwnedFd is a valid open descriptor that keeps
            // referring to the same file until the AsyncFd drops it.
            fd: unsafe {
                AsyncFd::register_with_interest(fd, Interest::READABLE | Interest::WRITABLE)
            }
            .map_err(|e| io::Error::other(e.to_string()))?,
            name,
            mtu,
            addresses,
            offloads: sapper_offload::Offloads::from_names(&vnet.offloads),
            vnet,
        })
    }

    /// True when reads and writes carry a virtio_net_hdr.
    pub fn vnet_hdr(&self) -> bool {
        self.vnet.vnet_hdr
    }

    /// Reads one packet into `buf` (behind its virtio_net_hdr on a vnet TUN).
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| Ok(nix::unistd::read(fd.as_raw_fd(), buf)?)) {
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }

    /// Reads one packet (with its virtio_net_hdr on a vnet TUN) into the
    /// spare capacity of `buf`, at most `max` bytes, and extends `buf` by
    /// it. Nothing is zeroed first: a 64 KiB read buffer would otherwise
    /// cost a 64 KiB memset per (small) packet.
    pub async fn read_buf(&self, buf: &mut bytes::BytesMut, max: usize) -> io::Result<usize> {
        buf.reserve(max);
        loop {
            let mut guard = self.fd.readable().await?;
            let spare = buf.spare_capacity_mut();
            let len = spare.len().min(max);
            let ptr = spare.as_mut_ptr().cast::<libc::c_void>();
            match guard.try_io(|fd| {
                // SAFETY: `ptr` points at `len` writable bytes of `buf`'s
                // spare capacity, which the kernel writes and nothing reads
                // before `set_len` below covers exactly what it wrote.
                let n = unsafe { libc::read(fd.as_raw_fd(), ptr, len) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            }) {
                Ok(Ok(n)) => {
                    // SAFETY: the kernel initialised `n` ≤ `len` bytes there.
                    unsafe { buf.set_len(buf.len() + n) };
                    return Ok(n);
                }
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    /// Writes one complete packet without waiting: a TUN write only queues
    /// the packet to the kernel's stack, so it does not block; should it
    /// ever report EAGAIN the packet is dropped like any congested hop's.
    /// On a vnet TUN the packet goes behind a header that asks nothing.
    pub fn try_write(&self, packet: &[u8]) -> io::Result<()> {
        if self.vnet.vnet_hdr {
            // Header and packet in one system call, not copied together.
            let iov = [io::IoSlice::new(&PLAIN_HDR), io::IoSlice::new(packet)];
            return nix::sys::uio::writev(self.fd.get_ref(), &iov)
                .map(|_| ())
                .map_err(io::Error::from);
        }
        nix::unistd::write(self.fd.get_ref(), packet)
            .map(|_| ())
            .map_err(io::Error::from)
    }

    /// Writes a virtio_net_hdr and its packet, already side by side in
    /// `frame`, as one packet. Only on a vnet TUN.
    pub fn try_write_frame(&self, frame: &[u8]) -> io::Result<()> {
        debug_assert!(self.vnet.vnet_hdr);
        nix::unistd::write(self.fd.get_ref(), frame)
            .map(|_| ())
            .map_err(io::Error::from)
    }
}
