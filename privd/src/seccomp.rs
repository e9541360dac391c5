//! privd's pledge: once set up (socket bound, TUN open, NAT applied, uid
//! switched) privd needs only what its poll loop does: accept, read and
//! answer on Unix sockets, pass fds, talk rtnetlink on the socket it already
//! has, read /proc/sys, write its log. No new process or thread, no exec,
//! no new socket but a Unix datagram one (sd_notify), no executable memory.
//! Anything else fails with EPERM, so a missed syscall is a logged error on
//! one path, not a dead privd. Under systemd the unit's SystemCallFilter=
//! applies too; the stricter answer wins.

use nix::libc;
use seccompiler::{BpfProgram, SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op};
use seccompiler::{SeccompCondition, SeccompFilter, SeccompRule};
use std::collections::BTreeMap;

fn err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow::anyhow!("seccomp: {e}")
}

const PLAIN: &[libc::c_long] = &[
    // The loop: poll, accept, read, answer (with SCM_RIGHTS), netlink.
    libc::SYS_ppoll,
    libc::SYS_accept4,
    libc::SYS_getsockopt, // SO_PEERCRED
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_recvfrom,
    libc::SYS_recvmsg,
    libc::SYS_sendto,
    libc::SYS_sendmsg,
    libc::SYS_close,
    libc::SYS_fcntl, // duplicating the TUN fd (F_DUPFD_CLOEXEC)
    // /proc/sys/net/ipv4/ip_forward for the status; the socket at exit.
    libc::SYS_openat,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_lseek,
    libc::SYS_unlinkat,
    // Memory (mmap and mprotect are below), time, the teardown helper.
    libc::SYS_brk,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_futex,
    libc::SYS_getrandom,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_wait4,
    // Signals (signalfd's mask, a panic's abort) and exit.
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_tgkill,
    libc::SYS_exit,
    libc::SYS_exit_group,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_poll,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_unlink,
];

/// The allow-list, compiled.
pub fn program() -> anyhow::Result<BpfProgram> {
    let arch = std::env::consts::ARCH.try_into().map_err(err)?;
    let cond = |arg, op, v| SeccompCondition::new(arg, Len::Qword, op, v).map_err(err);
    let mut m: BTreeMap<i64, Vec<SeccompRule>> = PLAIN.iter().map(|n| (*n, vec![])).collect();
    let no_exec =
        || SeccompRule::new(vec![cond(2, Op::MaskedEq(libc::PROT_EXEC as u64), 0)?]).map_err(err);
    m.insert(libc::SYS_mmap, vec![no_exec()?]);
    m.insert(libc::SYS_mprotect, vec![no_exec()?]);
    let unix = SeccompRule::new(vec![cond(0, Op::Eq, libc::AF_UNIX as u64)?]).map_err(err)?;
    m.insert(libc::SYS_socket, vec![unix]);
    let eperm = SeccompAction::Errno(libc::EPERM as u32);
    let filter = SeccompFilter::new(m, eperm, SeccompAction::Allow, arch).map_err(err)?;
    filter.try_into().map_err(err)
}

/// Installs the allow-list (no_new_privs must be set; privs.rs does).
pub fn install() -> anyhow::Result<()> {
    seccompiler::apply_filter(&program()?).map_err(err)
}

#[cfg(test)]
mod tests {
    use nix::libc::*;
    use nix::sys::wait::{waitpid, WaitStatus};

    /// In a forked child (so the test runner keeps its syscalls): with the
    /// filter on, a process, an IP or netlink socket, exec, ptrace and setuid
    /// are refused with EPERM, while what the loop needs still works.
    #[test]
    fn the_filter_refuses_what_privd_never_needs() {
        let prog = super::program().unwrap();
        // SAFETY: the child makes raw syscalls only, then _exits.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => unsafe {
                let refused = |r: c_long| r < 0 && *__errno_location() == EPERM;
                let checks = [
                    prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
                        && seccompiler::apply_filter(&prog).is_ok(),
                    refused(syscall(SYS_socket, AF_INET, SOCK_DGRAM, 0)),
                    refused(syscall(SYS_socket, AF_NETLINK, SOCK_RAW, 0)),
                    refused(syscall(SYS_clone, SIGCHLD, 0, 0, 0, 0)),
                    refused(syscall(SYS_execve, c"/bin/true".as_ptr(), 0, 0)),
                    refused(syscall(SYS_ptrace, PTRACE_TRACEME, 0, 0, 0)),
                    refused(syscall(SYS_setuid, 0)),
                    socket(AF_UNIX, SOCK_DGRAM, 0) >= 0,
                ];
                let failed = checks.iter().position(|ok| !ok);
                _exit(failed.map_or(0, |i| i as i32 + 1))
            },
            nix::unistd::ForkResult::Parent { child } => {
                // i + 1: check i failed (1: no filter, 8: AF_UNIX refused).
                assert_eq!(waitpid(child, None).unwrap(), WaitStatus::Exited(child, 0));
            }
        }
    }
}
