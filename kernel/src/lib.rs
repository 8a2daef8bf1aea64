//! The part of PANNUS that lived in the kernel, rebuilt on a stock kernel.
//!
//! PANNUS added `mmap3` (map memory into another process) and `accesspvm` (read and write another
//! process's memory) to Linux. This crate provides the same with ptrace and `/proc`:
//!
//! - [`Mem`]: reads and writes of the target's memory through `/proc/PID/mem` (`accesspvm`),
//!   including read-only text, which the kernel copies on write for the target alone.
//! - [`Hijack`]: one thread of the target borrowed briefly to run a system call through a
//!   `syscall` instruction that already exists in the target (`mmap3` and friends), or to call a
//!   function, signal-handler style: its whole state saved in a signal frame on its own stack and
//!   restored by `rt_sigreturn`, even if pannus is killed meanwhile.
//!   Each system call pannus makes has a typed method there ([`Hijack::mmap`],
//!   [`Hijack::openat`], ...) taking nix's flag types and [`RemoteFd`]s.
//! - [`World`]: every thread of the target stopped at once, with its registers, then resumed.
//! - [`maps`]: the target's address space and the holes in it near an address.
//!
//! This is the only crate of pannus with `unsafe`; each use is small and says why it is sound.

pub mod arch;
mod error;
pub mod exec_hold;
pub mod exec_watch;
pub mod fault;
mod frame;
mod fs;
mod hijack;
mod i386;
pub mod maps;
mod mem;
pub mod proc_events;
mod remote;
mod sched;
mod thread;
mod world;

pub use arch::Arch;
pub use error::{Error, Result};
pub use fs::{open_nofollow, take_fd};
pub use hijack::Hijack;
pub use maps::{Gadgets, Mapping};
pub use mem::Mem;
pub use nix::fcntl::OFlag;
pub use nix::libc::user_regs_struct as Regs;
pub use nix::sys::memfd::MemFdCreateFlag;
pub use nix::sys::mman::{MapFlags, ProtFlags};
pub use remote::{RemoteFd, SignalAction};
pub use sched::{background, foreground, is_urgent, keep_up, keep_urgent, on_duty, Paused, RealtimeGuard, SpareCpu};
pub use thread::{cpu_time, list_threads, process_exists, read_seccomp_filters, thread_state, tracer_of};
pub use world::{Seized, StoppedThread, World, STOP_TIMEOUT};

/// Linux x86-64 system call numbers used by pannus.
pub(crate) mod nr {
    pub use nix::libc::{
        SYS_close as CLOSE, SYS_ftruncate as FTRUNCATE, SYS_memfd_create as MEMFD_CREATE, SYS_mmap as MMAP,
        SYS_mprotect as MPROTECT, SYS_munmap as MUNMAP, SYS_openat as OPENAT, SYS_rt_sigaction as RT_SIGACTION,
    };
}

/// Page size on x86-64 Linux.
pub const PAGE: u64 = 4096;

pub fn page_floor(x: u64) -> u64 {
    x & !(PAGE - 1)
}

pub fn page_ceil(x: u64) -> u64 {
    x.saturating_add(PAGE - 1) & !(PAGE - 1)
}
