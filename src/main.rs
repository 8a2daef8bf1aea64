#![forbid(unsafe_code)]

use clap::Parser;

fn main() {
    let cli = pannus::cli::Cli::parse();
    std::process::exit(pannus::cli::run(cli));
}
