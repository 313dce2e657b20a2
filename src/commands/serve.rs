//! `edge-kd serve`: the inspection daemon, configured by one TOML file.

use std::path::PathBuf;

use edge_kd::serve::{self, ServeError, config::ServeConfig};

use crate::{Failure, exit};

/// Run the inspection daemon: cameras, a watched folder and HTTP uploads in; JSONL, MQTT and review frames out
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  \
    edge-kd serve --check-config deploy/edge-kd.toml   validate the file, load every model, then exit\n  \
    edge-kd serve --config deploy/edge-kd.toml         run until SIGTERM/SIGINT (SIGHUP reloads models)\n  \
    curl --data-binary @frame.png http://127.0.0.1:8080/infer\n  \
    curl http://127.0.0.1:8080/metrics\n\n\
    The example configuration, every key explained: deploy/edge-kd.toml.")]
pub struct Args {
    /// The daemon's configuration file.
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present = "check_config",
        conflicts_with = "check_config"
    )]
    pub config: Option<PathBuf>,
    /// Validate FILE, load and trial-run every model (sha256 pins included), and exit.
    #[arg(long, value_name = "FILE")]
    pub check_config: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<u8, Failure> {
    if let Some(path) = args.check_config {
        let config = ServeConfig::load(&path).map_err(Failure::usage)?;
        let lines = serve::check(&config).map_err(failure)?;
        println!("{}: OK", path.display());
        for line in lines {
            println!("  {line}");
        }
        return Ok(exit::OK);
    }
    let path = args.config.expect("clap requires --config without --check-config");
    let config = ServeConfig::load(&path).map_err(Failure::usage)?;
    serve::run(config, path).map_err(failure)?;
    Ok(exit::OK)
}

fn failure(e: ServeError) -> Failure {
    match e {
        ServeError::Model { .. } => Failure::model(e),
        _ => Failure::usage(e),
    }
}
