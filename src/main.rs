//! The `proxyseg` command line: `serve`, `config check`, `admin ...`.

use clap::{Parser, Subcommand};
use proxyseg::config::{Config, ConfigError};
use std::path::PathBuf;
use std::process::ExitCode;

/// proxyseg: few-shot DICOM segmentation daemon for PACS.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the daemon.
    Serve {
        /// Path of the TOML configuration.
        #[arg(long, default_value = "config/proxyseg.toml")]
        config: PathBuf,
    },
    /// Admin API client: support sets, pairs, rules, jobs, models.
    Admin(Box<proxyseg::admin::cli::AdminArgs>),
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCmd,
    },
}

#[derive(Subcommand, Debug)]
enum ConfigCmd {
    /// Validate a configuration; prints every problem with its key, exits 1 on error.
    Check {
        /// Path of the TOML configuration.
        #[arg(long, default_value = "config/proxyseg.toml")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Admin(args) => proxyseg::admin::cli::main(*args),
        Cmd::Config {
            command: ConfigCmd::Check { config },
        } => match Config::load(&config) {
            Ok(_) => {
                println!("{}: ok", config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(1)
            }
        },
        Cmd::Serve { config } => {
            let cfg = match Config::load(&config) {
                Ok(c) => c,
                Err(
                    e @ (ConfigError::Read { .. }
                    | ConfigError::Parse { .. }
                    | ConfigError::Invalid { .. }),
                ) => {
                    eprintln!("{e}");
                    return ExitCode::from(1);
                }
            };
            proxyseg::ops::init_logging(&cfg.log);
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start the async runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            match rt.block_on(proxyseg::daemon::serve(cfg)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "cannot start");
                    eprintln!("proxyseg: {e}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn verify_cli() {
        Cli::command().debug_assert();
    }
}
