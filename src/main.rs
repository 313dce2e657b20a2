//! The `edge-kd` command: parses arguments and dispatches to one function per
//! subcommand. The work lives in the library; this file decides exit codes.

mod commands;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit codes of design §1.
pub mod exit {
    pub const OK: u8 = 0;
    pub const USAGE: u8 = 2;
    pub const MODEL: u8 = 3;
    pub const SOME_INPUTS_FAILED: u8 = 4;
}

/// An error that carries the exit code it should end the process with.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub error: anyhow::Error,
}

impl Failure {
    pub fn model(error: impl Into<anyhow::Error>) -> Self {
        Failure { code: exit::MODEL, error: error.into() }
    }
    pub fn usage(error: impl Into<anyhow::Error>) -> Self {
        Failure { code: exit::USAGE, error: error.into() }
    }
}

#[derive(Parser)]
#[command(
    name = "edge-kd",
    version,
    about = "Run distilled, calibrated ONNX students on CPU boxes next to a production line",
    long_about = "edge-kd runs a self-describing ONNX student (its model card travels inside the \
        file) on this box's CPU with tract or ONNX Runtime, and says for each image what it is, \
        how sure it is (calibrated) and whether that is sure enough (accept / review).",
    after_help = "Examples:\n  \
        edge-kd run models/samples/               classify the shipped samples with the default student\n  \
        edge-kd distill --config training/configs/fashion-kd.toml --device cuda\n  \
        edge-kd run --engine ort --format jsonl photo.png\n  \
        edge-kd serve --config deploy/edge-kd.toml   the inspection daemon\n  \
        edge-kd card models/default/student.onnx\n  \
        edge-kd bench --engine tract,ort --threads 1,2\n  \
        edge-kd doctor\n\n\
        Exit codes: 0 all inputs processed, 2 usage or configuration error, 3 model problem,\n\
        4 some inputs failed (each reported on its own line; the rest were processed)."
)]
struct Cli {
    /// More log output on stderr (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Distill(commands::distill::Args),
    Run(commands::run::Args),
    Serve(commands::serve::Args),
    Card(commands::card::Args),
    Bench(commands::bench::Args),
    Parity(commands::parity::Args),
    Doctor(commands::doctor::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A daemon's log is its journal: say what it does by default.
    let quiet_level = if matches!(cli.command, Command::Serve(_)) { "info" } else { "warn" };
    let default_level = match cli.verbose {
        0 => quiet_level,
        1 => "info",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
    let result = match cli.command {
        Command::Distill(args) => commands::distill::run(args),
        Command::Run(args) => commands::run::run(args),
        Command::Serve(args) => commands::serve::run(args),
        Command::Card(args) => commands::card::run(args),
        Command::Bench(args) => commands::bench::run(args),
        Command::Parity(args) => commands::parity::run(args),
        Command::Doctor(args) => commands::doctor::run(args),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            eprintln!("edge-kd: error: {:#}", failure.error);
            ExitCode::from(failure.code)
        }
    }
}
