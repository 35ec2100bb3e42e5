//! The operating-system calls std does not wrap: handing listener fds to a
//! re-executed worker, parent-death signals, reaping any child, signalling,
//! adopting inherited fds, and reading a listener's accept queue. All of wharf-supervisor's `unsafe` is here.
#![allow(unsafe_code)]

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

/// The first fd number a worker finds its listeners at (after stdio).
pub(crate) const FIRST_INHERITED_FD: RawFd = 3;
/// Most fds handed to one worker (listeners plus the control channel).
pub(crate) const MAX_INHERITED_FDS: usize = 32;
/// Temporary fds are moved above this while renumbering in the child.
const SCRATCH_FD_BASE: RawFd = 100;

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ExitKind {
    /// `exit(code)`.
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
}

impl std::fmt::Display for ExitKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Code(code) => write!(f, "exit status {code}"),
            Self::Signal(sig) => write!(f, "signal {sig} ({})", signal_name(*sig)),
        }
    }
}

/// A signal's conventional name.
pub(crate) fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGABRT => "SIGABRT",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGTERM => "SIGTERM",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGBUS => "SIGBUS",
        _ => "other",
    }
}

/// Starts `program` with `fds` renumbered to 3, 4, … in the child (all other
/// fds stay close-on-exec), a parent-death signal of SIGTERM, and the given
/// extra environment. Returns the child's pid; reap it with [`reap`].
pub(crate) fn spawn_with_fds(
    program: &Path,
    args: &[OsString],
    env: &[(String, String)],
    fds: &[RawFd],
    master_pid: u32,
    die_with_parent: bool,
) -> io::Result<u32> {
    if fds.len() > MAX_INHERITED_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many fds to hand over",
        ));
    }
    let mut sources = [0 as RawFd; MAX_INHERITED_FDS];
    sources[..fds.len()].copy_from_slice(fds);
    let count = fds.len();
    let parent = libc::pid_t::try_from(master_pid).unwrap_or(0);
    let mut command = Command::new(program);
    command.args(args).envs(env.iter().map(|(k, v)| (k, v)));
    // SAFETY: the closure runs in the forked child before exec and only calls
    // async-signal-safe functions (fcntl, dup2, close, prctl, getppid) on
    // memory prepared before the fork (a fixed array on the stack); it
    // allocates nothing and takes no locks.
    unsafe {
        command.pre_exec(move || {
            let mut scratch = [0 as RawFd; MAX_INHERITED_FDS];
            // Move every source out of the target range first, so renumbering
            // never overwrites a source that is still needed.
            for i in 0..count {
                let fd = libc::fcntl(sources[i], libc::F_DUPFD, SCRATCH_FD_BASE);
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                scratch[i] = fd;
            }
            for (i, &fd) in scratch.iter().enumerate().take(count) {
                let target = FIRST_INHERITED_FD + RawFd::try_from(i).unwrap_or(0);
                // dup2 leaves the new fd without FD_CLOEXEC: it survives exec.
                if libc::dup2(fd, target) < 0 {
                    return Err(io::Error::last_os_error());
                }
                libc::close(fd);
            }
            // No worker outlives its master: SIGTERM lets it drain and exit.
            // (A new master started for a binary upgrade must outlive us.)
            if die_with_parent && libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The master may have died between fork and prctl.
            if libc::getppid() != parent {
                return Err(io::Error::other("master exited during spawn"));
            }
            Ok(())
        });
    }
    let child = command.spawn()?;
    // The pid is reaped by `reap` (waitpid(-1)), not through `Child`.
    Ok(child.id())
}

/// Reaps every child that has exited (including orphans re-parented to us
/// when we are PID 1), without blocking.
pub(crate) fn reap() -> Vec<(u32, ExitKind)> {
    let mut reaped = Vec::new();
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: waitpid with a valid out-pointer to a local c_int.
        let pid = unsafe { libc::waitpid(-1, &raw mut status, libc::WNOHANG) };
        if pid <= 0 {
            return reaped;
        }
        let kind = if libc::WIFEXITED(status) {
            ExitKind::Code(libc::WEXITSTATUS(status))
        } else if libc::WIFSIGNALED(status) {
            ExitKind::Signal(libc::WTERMSIG(status))
        } else {
            continue;
        };
        reaped.push((u32::try_from(pid).unwrap_or(0), kind));
    }
}

/// Sends `signal` to `pid`; a process that is already gone is not an error.
pub(crate) fn kill(pid: u32, signal: i32) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    if pid <= 0 {
        return;
    }
    // SAFETY: kill has no memory-safety preconditions; pid > 0 so it targets
    // one process, never a group.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// This process's parent pid.
pub(crate) fn parent_pid() -> u32 {
    // SAFETY: getppid cannot fail and has no preconditions.
    u32::try_from(unsafe { libc::getppid() }).unwrap_or(0)
}

/// Takes ownership of an fd this process inherited at a known number and
/// marks it close-on-exec so our own children do not inherit it by accident.
///
/// Returns `None` if the fd is not open.
pub(crate) fn adopt_fd(fd: RawFd) -> Option<OwnedFd> {
    // SAFETY: F_GETFD on any integer is safe; it fails with EBADF when closed.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return None;
    }
    // SAFETY: setting FD_CLOEXEC on an open fd we are about to own.
    unsafe {
        libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
    }
    // SAFETY: the fd is open (checked above) and was handed to this process
    // by its parent (supervisor protocol or systemd's LISTEN_FDS) for it to
    // own; nothing else in the process refers to it.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The raw fd of anything that has one (for handing over).
pub(crate) fn raw(fd: &impl AsRawFd) -> RawFd {
    fd.as_raw_fd()
}

/// Resident set size of `pid` in bytes, from `/proc/<pid>/status`.
pub(crate) fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// `CLOCK_MONOTONIC` in microseconds (what systemd compares reload times with).
pub(crate) fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the valid timespec we pass.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts);
    }
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000
        + u64::try_from(ts.tv_nsec).unwrap_or(0) / 1000
}

/// Makes a listening socket ignore new connection attempts (a classic BPF
/// filter that drops every packet), while connections already queued can
/// still be accepted. Closing a listening socket resets whatever is in its
/// queue; doing this first means the final accept sweep leaves nothing behind,
/// and clients that arrive later are refused (their SYN is retried against a
/// closed port) instead of being reset after they connected.
///
/// The filter belongs to the socket, so it affects every process sharing it:
/// only for a full stop, never a rolling replacement.
fn refuse_new_connections(fd: RawFd) -> io::Result<()> {
    // Drop only bare SYNs (a new connection attempt); everything else,
    // including the final ACK of a handshake already under way, passes, so
    // such a connection still lands in the backlog the workers sweep.
    // The filter sees the TCP header at offset 0: byte 13 holds the flags.
    let instruction = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
    let mut drop_all = [
        instruction(0x30, 0, 0, 13),   // A = TCP flags (BPF_LD|BPF_B|BPF_ABS)
        instruction(0x45, 0, 2, 0x02), // SYN? else keep (BPF_JMP|BPF_JSET|BPF_K)
        instruction(0x45, 1, 0, 0x10), // SYN+ACK? keep : drop
        instruction(0x06, 0, 0, 0),    // drop (BPF_RET|BPF_K)
        instruction(0x06, 0, 0, 0xffff_ffff), // keep
    ];
    let program = libc::sock_fprog {
        len: 5,
        filter: drop_all.as_mut_ptr(),
    };
    // SAFETY: setsockopt reads `size_of::<sock_fprog>()` bytes from a valid
    // sock_fprog whose `filter` points to five valid instructions that outlive
    // the call; the kernel copies the program.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&raw const program).cast(),
            libc::socklen_t::try_from(std::mem::size_of::<libc::sock_fprog>()).unwrap_or(0),
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let filter_error = io::Error::last_os_error();
    // Some kernels refuse socket filters to processes without
    // CAP_NET_ADMIN (EPERM, seen on 6.18 as a non-root user). Then shrink
    // the accept queue to one instead: while one connection is queued,
    // further SYNs are dropped (the client retries and, the socket closed by
    // then, is refused). wharf-http's drain takes the queue right before it
    // closes; a client landing between the two is still reset.
    // SAFETY: listen on a valid listening socket only changes its backlog.
    if unsafe { libc::listen(fd, 0) } == 0 {
        tracing::debug!(error = %filter_error, "Socket filter refused; shrank the accept queue instead");
        Ok(())
    } else {
        Err(filter_error)
    }
}

/// `TCP_LISTEN` in the kernel's `tcp_states.h` (libc does not name it).
const TCP_LISTEN: u8 = 10;

/// A listening TCP socket's accept queue from `TCP_INFO`: for a socket in
/// `LISTEN` state the kernel reports the queue's length in `tcpi_unacked`
/// and its limit in `tcpi_sacked` (what `ss -lnt` shows as Recv-Q and
/// Send-Q). Returns `(length, limit)`; an error for any other socket.
pub(crate) fn listen_queue(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<(u32, u32)> {
    // SAFETY: tcp_info is plain integers; all zeroes is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::tcp_info>();
    let mut len = libc::socklen_t::try_from(size).unwrap_or(0);
    // SAFETY: getsockopt writes at most `len` bytes into `info`, which is
    // `len` bytes long and lives across the call, and updates `len`; the fd
    // is borrowed, so open for the call.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // Every kernel since 2.6 fills at least the fields up to tcpi_sacked.
    let filled = usize::try_from(len).unwrap_or(0);
    if filled < std::mem::offset_of!(libc::tcp_info, tcpi_lost) || info.tcpi_state != TCP_LISTEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a listening TCP socket",
        ));
    }
    Ok((info.tcpi_unacked, info.tcpi_sacked))
}

/// [`refuse_new_connections`] on each of `listeners`; a socket that cannot
/// be made to refuse is logged (debug) and otherwise left as it is.
pub(crate) fn refuse_all<'a>(listeners: impl IntoIterator<Item = &'a std::net::TcpListener>) {
    for listener in listeners {
        if let Err(error) = refuse_new_connections(raw(listener)) {
            tracing::debug!(%error, "Cannot stop new connections before closing");
        }
    }
}

/// The signal a master sends a worker whose runtime stopped sending
/// heartbeats, before killing it: the worker logs what each thread is doing.
pub(crate) const STALL_REPORT_SIGNAL: i32 = libc::SIGUSR1;

/// Starts a thread that waits for [`STALL_REPORT_SIGNAL`] and then logs the
/// state of every thread of this process (from `/proc/self/task`). Call it
/// before the async runtime starts: the signal is blocked in the calling
/// thread, and threads started later inherit that, so only this thread ever
/// takes it — it works however stuck the runtime's threads are.
pub(crate) fn spawn_stall_reporter() -> io::Result<()> {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t; pthread_sigmask changes only this
    // thread's mask and reads `set` during the call.
    let rc = unsafe {
        libc::sigemptyset(&raw mut set);
        libc::sigaddset(&raw mut set, STALL_REPORT_SIGNAL);
        libc::pthread_sigmask(libc::SIG_BLOCK, &raw const set, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    std::thread::Builder::new()
        .name("wharf-stall-report".to_owned())
        .spawn(move || loop {
            let mut signal: libc::c_int = 0;
            // SAFETY: `set` is a valid, initialised sigset_t with the signal
            // blocked in this thread (inherited); sigwait writes `signal`.
            let rc = unsafe { libc::sigwait(&raw const set, &raw mut signal) };
            if rc == 0 {
                tracing::error!(
                    threads = %thread_states(),
                    "Runtime blocked: the master saw no heartbeat; what each thread is doing (name[tid] state syscall cpu_ms)"
                );
            }
        })?;
    Ok(())
}

/// One line per thread of this process: name, tid, scheduler state (R =
/// running on a CPU, S = sleeping, D = uninterruptible), the system call it
/// is in, and the CPU time it has used.
fn thread_states() -> String {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return String::new();
    };
    // SAFETY: sysconf has no memory effects.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .unwrap_or(100)
        .max(1);
    for task in tasks.flatten() {
        let dir = task.path();
        let tid = task.file_name().to_string_lossy().into_owned();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let stat = std::fs::read_to_string(dir.join("stat")).unwrap_or_default();
        // Fields after the ")" that closes the name: state is the first,
        // utime and stime the 12th and 13th (clock ticks).
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let state = fields.first().copied().unwrap_or("?");
        let ticks: u64 = fields
            .get(11..13)
            .map_or(0, |t| t.iter().filter_map(|x| x.parse::<u64>().ok()).sum());
        let syscall = std::fs::read_to_string(dir.join("syscall")).unwrap_or_default();
        let syscall = syscall.split_whitespace().next().unwrap_or("?");
        let syscall = match syscall.parse::<i64>() {
            Ok(number) => syscall_name(number).map_or_else(|| number.to_string(), str::to_owned),
            Err(_) => syscall.to_owned(), // "running" or "-1" (not in a call)
        };
        out.push(format!(
            "{}[{tid}] {state} {syscall} {}",
            name.trim(),
            ticks * 1000 / hz
        ));
    }
    out.join("; ")
}

/// The names of the system calls a stuck thread is most often found in.
fn syscall_name(number: i64) -> Option<&'static str> {
    #[cfg(target_arch = "x86_64")]
    let name = match number {
        0 => "read",
        1 => "write",
        7 => "poll",
        23 => "select",
        35 => "nanosleep",
        42 => "connect",
        43 => "accept",
        44 => "sendto",
        45 => "recvfrom",
        61 => "wait4",
        202 => "futex",
        230 => "clock_nanosleep",
        232 => "epoll_wait",
        281 => "epoll_pwait",
        288 => "accept4",
        _ => return None,
    };
    #[cfg(not(target_arch = "x86_64"))]
    let name = {
        let _ = number;
        return None;
    };
    Some(name)
}

/// A new anonymous memory file (`memfd_create`, close-on-exec) of `bytes`
/// bytes, zeroed: shared memory a master hands its workers as an fd.
pub(crate) fn memfd(name: &str, bytes: usize) -> io::Result<OwnedFd> {
    let name = std::ffi::CString::new(format!("wharf-{name}"))
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a segment name"))?;
    // SAFETY: `name` is a valid NUL-terminated string for the call's duration.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: memfd_create returned a new fd that nothing else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let file = std::fs::File::from(owned);
    file.set_len(u64::try_from(bytes).unwrap_or(u64::MAX))?;
    Ok(file.into())
}

/// The size in bytes of the file behind `fd`.
pub(crate) fn file_len(fd: &OwnedFd) -> io::Result<usize> {
    let file = std::fs::File::from(fd.try_clone()?);
    usize::try_from(file.metadata()?.len()).map_err(io::Error::other)
}

/// A `MAP_SHARED` read-write mapping of a whole memory file, unmapped on drop.
#[derive(Debug)]
pub(crate) struct Mapping {
    ptr: std::ptr::NonNull<libc::c_void>,
    len: usize,
}

// SAFETY: the mapping is plain memory, accessed only as atomics (see
// `words`); moving or sharing the handle between threads is sound.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps the first `len` bytes of `fd` shared (every process that maps
    /// the same file sees the same memory).
    pub(crate) fn new(fd: &OwnedFd, len: usize) -> io::Result<Self> {
        if len == 0 || !len.is_multiple_of(8) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a shared segment is a whole number of 8-byte words",
            ));
        }
        // SAFETY: a fresh mapping at an address of the kernel's choosing; it
        // aliases no Rust object. The fd stays valid for the call.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = std::ptr::NonNull::new(ptr).ok_or_else(|| io::Error::other("mmap gave NULL"))?;
        Ok(Self { ptr, len })
    }

    /// The mapping as 64-bit atomic words. Other processes write the same
    /// memory at any time, so it is never exposed as plain integers.
    pub(crate) fn words(&self) -> &[std::sync::atomic::AtomicU64] {
        // SAFETY: the mapping is page-aligned (so 8-aligned), `len` bytes
        // long (a multiple of 8, checked in `new`) and valid until `self` is
        // dropped, which outlives the returned borrow. AtomicU64 has u64's
        // size and layout and permits concurrent access from any thread or
        // process; every access goes through it.
        unsafe {
            std::slice::from_raw_parts(
                self.ptr.as_ptr().cast::<std::sync::atomic::AtomicU64>(),
                self.len / 8,
            )
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the range `new` mapped; no borrow of it
        // outlives `self` (`words` borrows `self`).
        unsafe {
            libc::munmap(self.ptr.as_ptr(), self.len);
        }
    }
}
