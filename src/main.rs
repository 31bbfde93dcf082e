//! The `proxyseg` command line: `serve`, `config check`, `admin ...`.

use clap::{Parser, Subcommand};
use proxyseg::config::Config;
use std::path::{Path, PathBuf};
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
    /// Queue DICOM files for delivery to a configured peer (picked up by the running daemon).
    Send {
        /// Path of the TOML configuration.
        #[arg(long, default_value = "config/proxyseg.toml")]
        config: PathBuf,
        /// AE title of a `[[dicom.peers]]` entry.
        #[arg(long)]
        to: String,
        /// Part 10 files to send.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Run the demo: the daemon with the bundled model, the demo studies sent to it over
    /// DICOM, the SEGs received by an in-process PACS, Dice and overlay PNGs.
    Demo {
        /// Folder of model bundles with their demo studies.
        #[arg(long, default_value = "models")]
        models_dir: PathBuf,
        /// Output folder (scratch data, received SEGs, overlays).
        #[arg(long, short = 'o', default_value = "var/demo")]
        out: PathBuf,
        /// Seconds to wait for the results.
        #[arg(long, default_value_t = 300)]
        timeout_s: u64,
    },
    /// Segment DICOM files with a support set, without the network; writes one DICOM SEG per
    /// input plus PNG / raw masks.
    Segment {
        /// Path of the TOML configuration.
        #[arg(long, default_value = "config/proxyseg.toml")]
        config: PathBuf,
        /// Support set: a folder with supportset.toml, or a name under models_dir/*/support-sets.
        #[arg(long)]
        support_set: String,
        /// Output folder.
        #[arg(short = 'o', long)]
        out: PathBuf,
        /// DICOM files to segment.
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCmd,
    },
}

#[derive(Subcommand, Debug)]
enum ConfigCmd {
    /// Validate a configuration and what it expects installed (e.g. the default model
    /// bundle under models_dir); prints every problem with its key, exits 1 on error.
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
        } => config_check(&config),
        Cmd::Send { config, to, files } => send(&config, &to, &files),
        Cmd::Demo {
            models_dir,
            out,
            timeout_s,
        } => demo(models_dir, out, timeout_s),
        Cmd::Segment {
            config,
            support_set,
            out,
            inputs,
        } => segment(&config, &support_set, &out, &inputs),
        Cmd::Serve { config } => serve(&config),
    }
}

/// `proxyseg config check`: the config's problems and what it expects installed.
fn config_check(config: &Path) -> ExitCode {
    match Config::check_file(config) {
        Ok(_) => {
            println!("{}: ok", config.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}

/// `proxyseg send`: queues the files in the outbox for the running daemon to deliver.
fn send(config: &Path, to: &str, files: &[PathBuf]) -> ExitCode {
    let cfg = match load(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match proxyseg::pipeline::deliver::enqueue_files(&cfg, to, files) {
        Ok(rows) => {
            for (f, id) in rows {
                println!("queued {f} as outbox row {id}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("proxyseg send: {e}");
            ExitCode::from(1)
        }
    }
}

/// `proxyseg demo`: runs the demo and prints its table.
fn demo(models_dir: PathBuf, out: PathBuf, timeout_s: u64) -> ExitCode {
    proxyseg::ops::init_logging(&proxyseg::config::LogConfig {
        format: "human".into(),
        filter: "warn,proxyseg=info,ort=error".into(),
    });
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let opts = proxyseg::demo::DemoOptions {
        models_dir,
        out_dir: out,
        onnxruntime: None,
        timeout_s,
    };
    match rt.block_on(proxyseg::demo::run(opts)) {
        Ok(rows) => {
            proxyseg::demo::print_table(&rows);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("proxyseg demo: {e}");
            ExitCode::from(1)
        }
    }
}

/// `proxyseg segment`: segments files offline, one SEG per input.
fn segment(config: &Path, support_set: &str, out: &Path, inputs: &[PathBuf]) -> ExitCode {
    // only the tables it reads are checked: the shipped config's admin tokens file, written by
    // scripts/run, need not exist yet
    let cfg = match Config::load_offline(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    proxyseg::ops::init_logging(&proxyseg::config::LogConfig {
        format: "human".into(),
        filter: "warn,ort=error".into(),
    });
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match rt.block_on(proxyseg::pipeline::offline::segment_to_seg(
        &cfg,
        support_set,
        out,
        inputs,
    )) {
        Ok((report, segs)) => {
            println!(
                "segmented {} frame(s) with {} on {}",
                report.frames, report.support_set, report.bundle
            );
            for (name, how) in report.names.iter().zip(&report.sequence) {
                println!("{name}: {how}");
            }
            for p in segs {
                println!("SEG {}", p.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("proxyseg segment: {e}");
            ExitCode::from(1)
        }
    }
}

/// `proxyseg serve`: runs the daemon until it is stopped.
fn serve(config: &Path) -> ExitCode {
    let cfg = match load(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    proxyseg::ops::init_logging(&cfg.log);
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let served = rt.block_on(proxyseg::daemon::serve(cfg));
    // Everything that stores or delivers has ended by now; what may still run is an engine
    // load abandoned by a shutdown during it (blocking work that cannot be interrupted):
    // dropping the runtime would wait for it, so it is left to end with the process.
    rt.shutdown_background();
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            eprintln!("proxyseg: {e}");
            ExitCode::from(1)
        }
    }
}

/// Loads and validates a config; on error prints every problem and gives exit code 1.
fn load(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("{e}");
        ExitCode::from(1)
    })
}

/// The multi-thread runtime every async command runs on (dicom-ul's writer needs it).
fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("cannot start the async runtime: {e}");
            ExitCode::from(1)
        })
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
