//! The TUN device privd handed us: one reader task, many writers. Each
//! read/write on a TUN fd is exactly one IP packet (IFF_NO_PI).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

pub struct Tun {
    fd: AsyncFd<OwnedFd>,
    pub name: String,
    pub mtu: u32,
    pub addresses: Vec<String>,
}

impl Tun {
    pub fn new(fd: OwnedFd, name: String, mtu: u32, addresses: Vec<String>) -> io::Result<Self> {
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
        })
    }

    /// Reads one packet into `buf`.
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| Ok(nix::unistd::read(fd.as_raw_fd(), buf)?)) {
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }

    /// Writes one packet without waiting: a TUN write only queues the
    /// packet to the kernel's stack, so it does not block; should it ever
    /// report EAGAIN the packet is dropped like any congested hop's.
    pub fn try_write(&self, packet: &[u8]) -> io::Result<()> {
        nix::unistd::write(self.fd.get_ref(), packet)
            .map(|_| ())
            .map_err(io::Error::from)
    }
}
