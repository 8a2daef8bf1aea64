#![forbid(unsafe_code)]
//! pannus: live patching of running Linux x86-64 processes, in the four stages of NTT's PANNUS.
//!
//! The modules are private; this is the surface the binary, the tests, the benchmarks and the
//! fuzz targets use. ARCHITECTURE.md maps the modules behind it.
//!
//! - [`Session`] opens a process under its lock; [`Session::check`], [`Session::apply`] (the four
//!   [`Stage`]s, each confirmed by an [`Observer`]), [`Session::rollback`] and
//!   [`Session::commit`] are what the CLI and the console do to it.
//! - [`Manifest`] is a validated patch manifest; [`Object`] an ELF file; [`Target`] a running
//!   process as pannus reads it; [`processes::list`] every process, with its patches.
//! - [`plan_entry`] and [`symbols`] are stage 4's and stage 2's pure decisions; [`registry`] the
//!   record of patches kept inside each process, and its format.

mod build;
mod canary;
pub mod cli;
mod daemon;
mod elf;
mod engine;
mod error;
mod fleet;
mod fleet_check;
mod fleet_commit;
mod forks;
pub mod install;
mod journal;
mod ledger;
mod lock;
mod manifest;
pub mod processes;
pub mod registry;
mod safety;
mod seccomp;
mod state_dir;
mod target;
pub mod trial;
mod tui;
mod unwind;
mod unwind386;

/// When pannus runs as one of `pannus build`'s compiler wrappers: records the compilation and
/// runs the real compiler (`None` when pannus runs as itself).
pub fn build_wrapper() -> Option<i32> {
    build::wrap::run_if_wrapper()
}

pub use elf::{build_id_of, sha256_file, Object, Reloc, SymKind, Symbol};
pub use engine::symbols;
pub use engine::{
    outcome_of, read_status, remaining, Applied, CheckLine, Engine, Measured, Observer, Quiet, RolledBack, Session,
    Stage, StopTimes, StopWindow, Timings,
};
pub use error::{Error, Kind, Result};
pub use lock::ProcessLock;
pub use manifest::Manifest;
pub use registry::{PatchRecord, State};
pub use safety::{plan_entry, EntryPlan};
pub use target::Target;
