//! netd's seccomp allow-list: once setup is done (sockets bound, privileges
//! dropped, TUN in hand) netd needs only a small set of syscalls. The filter
//! holds without systemd's SystemCallFilter= (a hand-started netd, another
//! service manager); under systemd both apply and the stricter answer wins.
//!
//! Syscalls outside the list fail with EPERM instead of killing netd: a
//! syscall missed here then shows up as a logged I/O error on one code path,
//! not as a dead tunnel. `SAPPER_SECCOMP_LOG=1` makes them allowed but
//! logged by the kernel (audit type=1326 in dmesg/journal) to find such gaps.

use anyhow::{Context, Result};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use std::collections::BTreeMap;

/// Builds and installs the filters on every thread of the process (TSYNC),
/// so threads started earlier are covered too. Requires no_new_privs (set
/// by privs::drop_all).
pub fn install(log_only: bool) -> Result<()> {
    let arch: TargetArch = std::env::consts::ARCH
        .try_into()
        .context("seccomp: unsupported architecture")?;
    // clone3(2) passes its flags in memory, where a filter cannot look, so it
    // cannot be limited to threads. ENOSYS makes glibc fall back to clone(2),
    // whose flags the allow-list checks. A separate filter because
    // seccompiler gives one action to all matches of a filter; with several
    // filters installed the most restrictive answer wins.
    let mut clone3 = BTreeMap::new();
    clone3.insert(libc::SYS_clone3, Vec::new());
    let clone3 = SeccompFilter::new(
        clone3,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )
    .context("seccomp: building the clone3 filter")?;
    let mismatch = if log_only {
        SeccompAction::Log
    } else {
        SeccompAction::Errno(libc::EPERM as u32)
    };
    let allow = SeccompFilter::new(rules()?, mismatch, SeccompAction::Allow, arch)
        .context("seccomp: building the allow-list")?;
    for (what, filter) in [("clone3", clone3), ("allow-list", allow)] {
        let prog: BpfProgram = filter
            .try_into()
            .with_context(|| format!("seccomp: compiling the {what} filter"))?;
        seccompiler::apply_filter_all_threads(&prog)
            .with_context(|| format!("seccomp: installing the {what} filter"))?;
    }
    Ok(())
}

/// Syscalls allowed without condition.
const PLAIN: &[libc::c_long] = &[
    // I/O on sockets, the TUN, pipes and files.
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_recvmmsg,
    libc::SYS_sendmmsg,
    libc::SYS_sendfile,
    // Sockets: peers, the userspace exit's flows (ping/UDP/TCP), DNS
    // (getaddrinfo), privd and the management socket. socket(2) and
    // socketpair(2) are in rules() (address family).
    libc::SYS_connect,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_accept,
    libc::SYS_accept4,
    libc::SYS_setsockopt,
    libc::SYS_getsockopt,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    libc::SYS_shutdown,
    // The reactor (tokio/mio).
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_pwait2,
    libc::SYS_eventfd2,
    libc::SYS_ppoll,
    libc::SYS_pselect6,
    libc::SYS_pipe2,
    // Threads, locks, memory (mmap and mprotect are in CONDITIONAL).
    libc::SYS_futex,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_set_robust_list,
    libc::SYS_get_robust_list,
    libc::SYS_rseq,
    libc::SYS_set_tid_address,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_membarrier,
    libc::SYS_getrandom,
    libc::SYS_memfd_create, // tracing-journald hands large entries over in a memfd
    // Time.
    libc::SYS_clock_gettime,
    libc::SYS_clock_getres,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_gettimeofday,
    // Files: /etc/passwd and /etc/group for the operator check, NSS and
    // resolver files, removing the management socket at shutdown. What may
    // be opened is Landlock's business.
    libc::SYS_openat,
    libc::SYS_close,
    libc::SYS_close_range,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_lseek,
    libc::SYS_fcntl,
    libc::SYS_dup,
    libc::SYS_dup3,
    libc::SYS_getdents64,
    libc::SYS_readlinkat,
    libc::SYS_faccessat,
    libc::SYS_faccessat2,
    libc::SYS_unlinkat,
    libc::SYS_getcwd,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    // Signals (tokio's SIGTERM/SIGINT handling) and thread exit.
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_restart_syscall,
    libc::SYS_tgkill,
    libc::SYS_exit,
    libc::SYS_exit_group,
    // Identity queries.
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_getppid,
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getegid,
    libc::SYS_getresuid,
    libc::SYS_getresgid,
    libc::SYS_getgroups,
    libc::SYS_uname,
    libc::SYS_sysinfo,
    libc::SYS_prlimit64,
    libc::SYS_getrusage,
];

/// x86_64 keeps older syscalls that glibc or std still use there.
#[cfg(target_arch = "x86_64")]
const PLAIN_X86_64: &[libc::c_long] = &[
    libc::SYS_open,
    libc::SYS_stat,
    libc::SYS_lstat,
    libc::SYS_access,
    libc::SYS_poll,
    libc::SYS_select,
    libc::SYS_pipe,
    libc::SYS_dup2,
    libc::SYS_epoll_wait,
    libc::SYS_readlink,
    libc::SYS_unlink,
    libc::SYS_arch_prctl,
];
#[cfg(not(target_arch = "x86_64"))]
const PLAIN_X86_64: &[libc::c_long] = &[];

fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Qword, op, value)
        .context("seccomp: building a condition")
}

fn rule(conds: Vec<SeccompCondition>) -> Result<SeccompRule> {
    SeccompRule::new(conds).context("seccomp: building a rule")
}

/// `arg` has none of the bits in `bits` set.
fn without(arg: u8, bits: u64) -> Result<SeccompRule> {
    rule(vec![cond(arg, SeccompCmpOp::MaskedEq(bits), 0)?])
}

/// `arg` equals one of `values`: one rule each (rules of a syscall are OR-ed).
fn one_of(arg: u8, values: &[u64]) -> Result<Vec<SeccompRule>> {
    values
        .iter()
        .map(|v| rule(vec![cond(arg, SeccompCmpOp::Eq, *v)?]))
        .collect()
}

fn rules() -> Result<BTreeMap<i64, Vec<SeccompRule>>> {
    let mut m: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for nr in PLAIN.iter().chain(PLAIN_X86_64) {
        m.insert(*nr, Vec::new());
    }
    let exec = libc::PROT_EXEC as u64;
    // No new executable memory: after startup netd loads no code (glibc's
    // NSS modules for files/dns are built in). Same idea as the unit's
    // MemoryDenyWriteExecute=, stricter, and it holds without systemd.
    m.insert(libc::SYS_mmap, vec![without(2, exec)?]);
    m.insert(libc::SYS_mprotect, vec![without(2, exec)?]);
    // Answered ENOSYS by the first filter (see install); allowed here so
    // that this filter's EPERM does not win: filters run newest first and
    // of equal-precedence answers the first seen is returned.
    m.insert(libc::SYS_clone3, Vec::new());
    // Threads only (tokio's blocking pool starts threads on demand): no
    // fork, so no new process can be started, with or without exec.
    m.insert(
        libc::SYS_clone,
        vec![rule(vec![cond(
            0,
            SeccompCmpOp::MaskedEq(libc::CLONE_THREAD as u64),
            libc::CLONE_THREAD as u64,
        )?])?],
    );
    // Address families, as the unit's RestrictAddressFamilies=: no netlink
    // (routes are privd's business), no packet sockets.
    let families = [
        libc::AF_UNIX as u64,
        libc::AF_INET as u64,
        libc::AF_INET6 as u64,
    ];
    m.insert(libc::SYS_socket, one_of(0, &families)?);
    // tokio's signal handling pairs Unix sockets.
    m.insert(libc::SYS_socketpair, one_of(0, &[libc::AF_UNIX as u64])?);
    // Naming threads; nothing else prctl can do is needed after setup.
    m.insert(
        libc::SYS_prctl,
        one_of(0, &[libc::PR_SET_NAME as u64, libc::PR_GET_NAME as u64])?,
    );
    // Non-blocking mode and queued-bytes queries (std, glibc's resolver).
    m.insert(
        libc::SYS_ioctl,
        one_of(
            1,
            &[libc::FIONBIO, libc::FIONREAD, libc::FIOCLEX, libc::FIONCLEX],
        )?,
    );
    Ok(m)
}

/// A named syscall attempt returning the raw result.
type Probe = (&'static str, fn() -> libc::c_long);

/// For the hidden `--sandbox-selftest`, after the filter is installed:
/// tries syscalls netd must not be able to make, printing one line per
/// syscall with the errno. The tests read these lines.
pub fn probe() {
    let probes: [Probe; 6] = [
        // SAFETY (all probes): invalid or query-only arguments; the calls
        // are expected to fail before doing anything.
        ("mount", || unsafe {
            libc::syscall(libc::SYS_mount, 0usize, 0usize, 0usize, 0usize, 0usize)
        }),
        ("ptrace", || unsafe {
            libc::syscall(libc::SYS_ptrace, libc::PTRACE_TRACEME, 0, 0, 0)
        }),
        ("personality", || unsafe {
            libc::syscall(libc::SYS_personality, 0xffff_ffffu64)
        }),
        (
            "fork",
            // clone without CLONE_THREAD: a new process.
            || unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD, 0, 0, 0, 0) },
        ),
        ("netlink_socket", || unsafe {
            libc::syscall(
                libc::SYS_socket,
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        }),
        ("mprotect_exec", || unsafe {
            libc::syscall(
                libc::SYS_mprotect,
                0usize,
                4096usize,
                libc::PROT_READ | libc::PROT_EXEC,
            )
        }),
    ];
    for (name, call) in probes {
        let r = call();
        if r == 0 {
            // A fork that succeeded: the child must not run the rest.
            if name == "fork" {
                // SAFETY: plain exit of the child.
                unsafe { libc::_exit(0) };
            }
            println!("{name}: allowed");
        } else if r > 0 {
            println!("{name}: allowed");
        } else {
            let e = std::io::Error::last_os_error();
            let errno = nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(0));
            println!("{name}: {errno}");
        }
    }
}
