//! `proxyseg admin ...`: the command-line client of the admin API.
//!
//! Mirrors the services: `support-set`, `pair`, `rule`, `jobs`, `study`, `models`, `preview`, `audit`. Prints readable tables
//! by default and JSON with `--json`; uploads show a progress bar on a terminal. The token comes
//! from `--token-file` (first non-empty line) or the `PROXYSEG_TOKEN` environment variable. Exit
//! status: 0 on success, 1 on an API or connection error (the message names the gRPC code),
//! 2 on a usage error.

use crate::admin::pb;
use crate::admin::pb::audit_client::AuditClient;
use crate::admin::pb::jobs_client::JobsClient;
use crate::admin::pb::models_client::ModelsClient;
use crate::admin::pb::preview_client::PreviewClient;
use crate::admin::pb::rules_client::RulesClient;
use crate::admin::pb::studies_client::StudiesClient;
use crate::admin::pb::support_sets_client::SupportSetsClient;
use crate::sequence_mode::ModeSetting;
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Request, Status};

mod audit;
mod jobs;
mod output;
mod preview;
mod rules;
mod support_sets;

pub use audit::{AuditCmd, ModelsCmd};
pub use jobs::{JobsCmd, StudyCmd};
#[cfg(test)]
use output::*;
pub use output::{evaluate_flag_line, table};
pub use preview::PreviewArgs;
pub use rules::RuleCmd;
#[cfg(test)]
use support_sets::msg_len;
pub use support_sets::{add_pair_messages, PairCmd, SetCmd};

/// Size of one upload message.
pub const CHUNK: usize = 1024 * 1024;

/// `proxyseg admin` options and command.
#[derive(Args, Debug)]
pub struct AdminArgs {
    /// Admin API endpoint (https://... for TLS).
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub endpoint: String,
    /// File whose first non-empty line holds the bearer token as its last field (a bare token, or a `name role token` line of the server's tokens file); else $PROXYSEG_TOKEN.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    /// PEM CA bundle that signed the server certificate (TLS).
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// PEM client certificate (mutual TLS).
    #[arg(long, requires = "key")]
    pub cert: Option<PathBuf>,
    /// PEM client private key (mutual TLS).
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
    /// Server name to verify in its certificate (default: the endpoint's host).
    #[arg(long)]
    pub tls_domain: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: AdminCmd,
}

/// Admin commands.
#[derive(Subcommand, Debug)]
pub enum AdminCmd {
    /// Support sets.
    #[command(subcommand, name = "support-set")]
    SupportSet(SetCmd),
    /// Image + mask pairs of a support set.
    #[command(subcommand)]
    Pair(PairCmd),
    /// Routing rules.
    #[command(subcommand)]
    Rule(RuleCmd),
    /// Jobs.
    #[command(subcommand)]
    Jobs(JobsCmd),
    /// Studies the daemon holds (received instances, results).
    #[command(subcommand)]
    Study(StudyCmd),
    /// Model bundles.
    #[command(subcommand)]
    Models(ModelsCmd),
    /// Who changed what.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Segment one image with a support set and write the overlays as PNG files (no job, no
    /// change).
    Preview(PreviewArgs),
}

/// Adds the bearer token to every call.
#[derive(Clone, Debug)]
pub struct Bearer(MetadataValue<Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

impl Bearer {
    /// The `authorization: Bearer <token>` value for `token`.
    pub fn new(token: &str) -> Result<Bearer, CliError> {
        format!("Bearer {token}").parse().map(Bearer).map_err(|_| {
            CliError::Local("the token holds characters not allowed in a header".into())
        })
    }
}

/// A channel with the token attached.
pub type Authed = InterceptedService<Channel, Bearer>;

/// Errors of the CLI.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The API answered with an error.
    #[error("{}: {}", code_name(.0.code()), .0.message())]
    Api(#[from] Status),
    /// Could not connect.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// Local problem (token, files).
    #[error("{0}")]
    Local(String),
}

fn code_name(c: tonic::Code) -> String {
    format!("{c:?}")
        .chars()
        .enumerate()
        .flat_map(|(i, ch)| {
            let sep = (i > 0 && ch.is_uppercase()).then_some('_');
            sep.into_iter().chain(ch.to_uppercase())
        })
        .collect()
}

fn token(args: &AdminArgs) -> Result<String, CliError> {
    let raw = match &args.token_file {
        Some(p) => std::fs::read_to_string(p)
            .map_err(|e| CliError::Local(format!("--token-file {}: {e}", p.display())))?,
        None => std::env::var("PROXYSEG_TOKEN").map_err(|_| {
            CliError::Local("no token: pass --token-file FILE or set PROXYSEG_TOKEN".into())
        })?,
    };
    // A bare token, or a line of the server's tokens file (`name role token`): the token is
    // the last field either way, so admins can point --token-file at the server's file.
    raw.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .and_then(|l| l.split_whitespace().last())
        .map(str::to_string)
        .ok_or_else(|| CliError::Local("the token is empty".into()))
}

/// Connects to the endpoint with optional TLS / mutual TLS.
pub async fn connect(args: &AdminArgs) -> Result<(Channel, Bearer), CliError> {
    let bearer = Bearer::new(&token(args)?)?;
    let mut ep = Endpoint::from_shared(args.endpoint.clone())
        .map_err(|e| CliError::Connect(format!("{}: {e}", args.endpoint)))?;
    if args.endpoint.starts_with("https://") || args.ca.is_some() {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|e| CliError::Local(format!("{}: {e}", p.display())))
        };
        let mut tls = ClientTlsConfig::new();
        if let Some(ca) = &args.ca {
            tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
        }
        if let (Some(c), Some(k)) = (&args.cert, &args.key) {
            tls = tls.identity(Identity::from_pem(read(c)?, read(k)?));
        }
        if let Some(d) = &args.tls_domain {
            tls = tls.domain_name(d.clone());
        }
        ep = ep
            .tls_config(tls)
            .map_err(|e| CliError::Connect(e.to_string()))?;
    }
    let ch = ep
        .connect_timeout(std::time::Duration::from_secs(10))
        .connect()
        .await
        .map_err(|e| CliError::Connect(format!("{}: {e}", args.endpoint)))?;
    Ok((ch, bearer))
}

/// Runs `proxyseg admin ...`.
pub fn main(args: AdminArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(&args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

fn read_file(p: &Path) -> Result<Vec<u8>, CliError> {
    std::fs::read(p).map_err(|e| CliError::Local(format!("{}: {e}", p.display())))
}

/// One client per service, on one channel.
pub(super) struct Clients {
    sets: SupportSetsClient<InterceptedService<Channel, Bearer>>,
    rules: RulesClient<InterceptedService<Channel, Bearer>>,
    jobs: JobsClient<InterceptedService<Channel, Bearer>>,
    models: ModelsClient<InterceptedService<Channel, Bearer>>,
    audit: AuditClient<InterceptedService<Channel, Bearer>>,
    studies: StudiesClient<InterceptedService<Channel, Bearer>>,
    preview: PreviewClient<InterceptedService<Channel, Bearer>>,
}

impl Clients {
    async fn connect(args: &AdminArgs) -> Result<Clients, CliError> {
        let (ch, auth) = connect(args).await?;
        let big = 512 * 1024 * 1024;
        let sets = SupportSetsClient::with_interceptor(ch.clone(), auth.clone())
            .max_decoding_message_size(big)
            .max_encoding_message_size(big);
        let rules =
            RulesClient::with_interceptor(ch.clone(), auth.clone()).max_encoding_message_size(big);
        let jobs = JobsClient::with_interceptor(ch.clone(), auth.clone());
        let models = ModelsClient::with_interceptor(ch.clone(), auth.clone());
        let audit = AuditClient::with_interceptor(ch.clone(), auth.clone());
        let studies = StudiesClient::with_interceptor(ch.clone(), auth.clone());
        let preview = PreviewClient::with_interceptor(ch, auth)
            .max_decoding_message_size(big)
            .max_encoding_message_size(big);
        Ok(Clients {
            sets,
            rules,
            jobs,
            models,
            audit,
            studies,
            preview,
        })
    }
}

/// Runs one command: each resource's commands live in a module of their own.
async fn run(args: &AdminArgs) -> Result<(), CliError> {
    let mut c = Clients::connect(args).await?;
    match &args.command {
        AdminCmd::SupportSet(cmd) => support_sets::run(args, &mut c, cmd).await,
        AdminCmd::Pair(cmd) => support_sets::run_pair(args, &mut c, cmd).await,
        AdminCmd::Rule(cmd) => rules::run(args, &mut c, cmd).await,
        AdminCmd::Jobs(cmd) => jobs::run(args, &mut c, cmd).await,
        AdminCmd::Study(cmd) => jobs::run_study(args, &mut c, cmd).await,
        AdminCmd::Models(cmd) => audit::run_models(args, &mut c, cmd).await,
        AdminCmd::Audit(cmd) => audit::run(args, &mut c, cmd).await,
        AdminCmd::Preview(cmd) => preview::run(args, &mut c, cmd).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_codes_read_well() {
        let t = table(
            &["A", "LONGER"],
            &[
                vec!["xyz".into(), "1".into()],
                vec!["q".into(), "22".into()],
            ],
        );
        assert_eq!(t, "A    LONGER\n---  ------\nxyz  1\nq    22");
        assert_eq!(code_name(tonic::Code::InvalidArgument), "INVALID_ARGUMENT");
        assert_eq!(code_name(tonic::Code::Unauthenticated), "UNAUTHENTICATED");
        assert_eq!(
            ts(&Some(prost_types::Timestamp {
                seconds: 1_795_000_000,
                nanos: 0
            })),
            "2026-11-18 11:06:40Z"
        );
    }

    #[test]
    fn evaluate_flags_read_as_pair_or_set_flags() {
        let pair = pb::MaskFlag {
            pair_number: 3,
            object_index: 1,
            kind: pb::FlagKind::DiceOutlier as i32,
            detail: "disc: low".into(),
        };
        assert_eq!(
            evaluate_flag_line(&pair),
            "\nFLAG pair 3 object 1: disc: low"
        );
        let set = pb::MaskFlag {
            pair_number: 0,
            object_index: 2,
            kind: pb::FlagKind::PoorSet as i32,
            detail: "cup: poor".into(),
        };
        assert_eq!(
            evaluate_flag_line(&set),
            "\nFLAG POOR SET object 2: cup: poor"
        );
    }

    #[test]
    fn uploads_are_chunked_in_order() {
        let img = vec![1u8; CHUNK + 10];
        let m = add_pair_messages("s", 3, &img, &[vec![2u8; 5], vec![3u8; 6]], None);
        assert_eq!(m.len(), 5);
        assert_eq!(m.iter().map(msg_len).sum::<u64>(), (CHUNK + 21) as u64);
        match &m[4].part {
            Some(pb::add_pair_request::Part::MaskChunk(c)) => assert_eq!(c.object_index, 2),
            other => panic!("{other:?}"),
        }
    }
}
