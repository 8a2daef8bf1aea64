#![forbid(unsafe_code)]

use clap::Parser;

fn main() {
    // First of all, before even the arguments are read: pannus's start-up is already work on
    // the CPUs a service's threads wake up on (see `cli::run`, which keeps this only for the
    // commands that work on a process).
    let spare = pannus_kernel::SpareCpu::enter();
    let cli = pannus::cli::Cli::parse();
    std::process::exit(pannus::cli::run(cli, spare));
}
