#![forbid(unsafe_code)]
//! pannus: live patching of running Linux x86-64 processes, in the four stages of NTT's PANNUS.

pub mod cli;
pub mod elf;
pub mod engine;
pub mod error;
pub mod fleet;
pub mod journal;
pub mod lock;
pub mod manifest;
pub mod processes;
pub mod registry;
pub mod safety;
pub mod seccomp;
pub mod target;
pub mod trial;
pub mod tui;
pub mod unwind;
