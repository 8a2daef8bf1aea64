#![forbid(unsafe_code)]

use clap::Parser;

fn main() {
    // Run as a compiler wrapper by `pannus build`: record the compilation and become the
    // compiler, before anything else.
    if let Some(code) = pannus::build_wrapper() {
        std::process::exit(code);
    }
    // First of all, before even the arguments are read: pannus's start-up is already work on
    // the CPUs a service's threads wake up on (see `cli::run`, which keeps this only for the
    // commands that work on a process).
    let spare = pannus_kernel::SpareCpu::enter();
    let cli = pannus::cli::Cli::parse();
    std::process::exit(pannus::cli::run(cli, spare));
}
