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
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Request, Status};

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
    Preview {
        /// Support set.
        set: String,
        /// DICOM image file.
        image: PathBuf,
        /// Folder for `overlay-N.png`, one per object (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Version (default: current).
        #[arg(long, default_value_t = 0)]
        version: u32,
    },
}

/// `support-set ...`.
#[derive(Subcommand, Debug)]
pub enum SetCmd {
    /// Create a support set.
    Create {
        /// Name (A-Z a-z 0-9 . _ -).
        name: String,
        /// Object labels, in mask order (repeat; SNOMED codes default to "Tissue").
        #[arg(long = "object", required = true)]
        objects: Vec<String>,
        /// Model bundle (default: the daemon's `[engine] default_bundle`).
        #[arg(long, default_value = "")]
        bundle: String,
        /// Modality hint.
        #[arg(long, default_value = "")]
        modality: String,
        /// Body part hint.
        #[arg(long, default_value = "")]
        body_part: String,
        /// Description.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List support sets.
    List,
    /// Show one support set with its objects and pairs.
    Show {
        /// Name.
        name: String,
        /// Version (default: current).
        #[arg(long, default_value_t = 0)]
        version: u32,
    },
    /// Change description, bundle or match hints (a new version).
    Update {
        /// Name.
        name: String,
        /// New description.
        #[arg(long)]
        description: Option<String>,
        /// New model bundle.
        #[arg(long)]
        bundle: Option<String>,
        /// New modality hint.
        #[arg(long)]
        modality: Option<String>,
        /// New body part hint.
        #[arg(long)]
        body_part: Option<String>,
    },
    /// Delete a support set.
    Delete {
        /// Name.
        name: String,
    },
    /// Import a support-set folder (path on the server, inside admin.exchange_dir; relative
    /// paths are taken inside it).
    Import {
        /// Folder holding supportset.toml.
        path: String,
        /// Import under this name instead.
        #[arg(long, default_value = "")]
        name: String,
    },
    /// Export a version as a folder (path on the server, inside admin.exchange_dir; relative
    /// paths are taken inside it).
    Export {
        /// Name.
        name: String,
        /// Target folder (must not exist or be empty).
        path: String,
        /// Version (default: current).
        #[arg(long, default_value_t = 0)]
        version: u32,
    },
    /// Leave-one-out Dice and mask flags.
    Evaluate {
        /// Name.
        name: String,
        /// Version (default: current).
        #[arg(long, default_value_t = 0)]
        version: u32,
    },
}

/// `pair ...`.
#[derive(Subcommand, Debug)]
pub enum PairCmd {
    /// Upload an image with its masks (one PNG per object, or one DICOM SEG).
    Add {
        /// Support set.
        set: String,
        /// DICOM image file.
        image: PathBuf,
        /// PNG masks in object order.
        #[arg(long = "png", conflicts_with = "seg")]
        pngs: Vec<PathBuf>,
        /// DICOM SEG with one segment per object.
        #[arg(long)]
        seg: Option<PathBuf>,
        /// Refuse unless the set is still at this version.
        #[arg(long, default_value_t = 0)]
        expected_version: u32,
    },
    /// Remove a pair by number.
    Remove {
        /// Support set.
        set: String,
        /// Pair number.
        number: u32,
    },
}

/// `rule ...`.
#[derive(Subcommand, Debug)]
pub enum RuleCmd {
    /// Add a routing rule.
    Add {
        /// Support set to use.
        #[arg(long)]
        support_set: String,
        /// Lower is tried first.
        #[arg(long, default_value_t = 100)]
        priority: i32,
        /// Modality.
        #[arg(long, default_value = "")]
        modality: String,
        /// Body Part Examined (synonyms apply).
        #[arg(long, default_value = "")]
        body_part: String,
        /// SOP Class UID.
        #[arg(long, default_value = "")]
        sop_class: String,
        /// Regex on the Series Description.
        #[arg(long, default_value = "")]
        series_regex: String,
        /// Calling AE title.
        #[arg(long, default_value = "")]
        calling_ae: String,
        /// Destination AE (default: back to the sender).
        #[arg(long, default_value = "")]
        destination: String,
        /// Stable age override in seconds.
        #[arg(long)]
        stable_age: Option<f64>,
        /// Also match localizers / scouts.
        #[arg(long)]
        include_localizers: bool,
        /// Create it disabled.
        #[arg(long)]
        disabled: bool,
        /// Description.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List rules in routing order.
    List,
    /// Change a rule in place (its id stays; audited as rule.update); fields not given keep
    /// their value.
    Update {
        /// Rule id.
        id: i64,
        /// Support set to use.
        #[arg(long)]
        support_set: Option<String>,
        /// Lower is tried first.
        #[arg(long)]
        priority: Option<i32>,
        /// Modality ("" = any).
        #[arg(long)]
        modality: Option<String>,
        /// Body Part Examined ("" = any; synonyms apply).
        #[arg(long)]
        body_part: Option<String>,
        /// SOP Class UID ("" = any).
        #[arg(long)]
        sop_class: Option<String>,
        /// Regex on the Series Description ("" = any).
        #[arg(long)]
        series_regex: Option<String>,
        /// Calling AE title ("" = any).
        #[arg(long)]
        calling_ae: Option<String>,
        /// Destination AE ("" = back to the sender).
        #[arg(long)]
        destination: Option<String>,
        /// Stable age override in seconds.
        #[arg(long, conflicts_with = "no_stable_age")]
        stable_age: Option<f64>,
        /// Drop the stable age override ([pipeline] stable_age_s applies).
        #[arg(long)]
        no_stable_age: bool,
        /// Also match localizers / scouts (true or false).
        #[arg(long)]
        include_localizers: Option<bool>,
        /// Enable (true) or disable (false) the rule.
        #[arg(long)]
        enabled: Option<bool>,
        /// Description.
        #[arg(long)]
        description: Option<String>,
    },
    /// Delete a rule.
    Delete {
        /// Rule id.
        id: i64,
    },
    /// Which rule a DICOM file (or given header fields) would get, and why.
    DryRun {
        /// DICOM file.
        file: Option<PathBuf>,
        /// Modality (without a file).
        #[arg(long, default_value = "")]
        modality: String,
        /// Body part (without a file).
        #[arg(long, default_value = "")]
        body_part: String,
        /// Series description (without a file).
        #[arg(long, default_value = "")]
        series_description: String,
        /// SOP Class UID (without a file).
        #[arg(long, default_value = "")]
        sop_class: String,
        /// Calling AE to assume.
        #[arg(long, default_value = "")]
        calling_ae: String,
    },
}

/// `jobs ...`.
#[derive(Subcommand, Debug)]
pub enum JobsCmd {
    /// List jobs, newest first.
    List {
        /// Only this state (repeat).
        #[arg(long = "state")]
        states: Vec<String>,
        /// Only this study.
        #[arg(long, default_value = "")]
        study: String,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// One job with its state history.
    Show {
        /// Job id.
        id: i64,
    },
    /// Follow state changes until interrupted.
    Watch {
        /// Only this job.
        #[arg(long, default_value_t = 0)]
        job: i64,
        /// Only this study.
        #[arg(long, default_value = "")]
        study: String,
        /// Only this state (repeat).
        #[arg(long = "state")]
        states: Vec<String>,
        /// Print the recorded history first.
        #[arg(long)]
        history: bool,
    },
    /// Run a failed or unmatched job again.
    Retry {
        /// Job id.
        id: i64,
    },
}

/// `study ...`.
#[derive(Subcommand, Debug)]
pub enum StudyCmd {
    /// Purge a study now: its received instances, SEG results, delivery files and index rows
    /// (audited). Refused (FAILED_PRECONDITION) while it is receiving, a job of it is
    /// unfinished or a SEG of it waits for delivery; NOT_FOUND when the daemon does not hold it.
    Purge {
        /// Study Instance UID.
        uid: String,
        /// Why (recorded in the audit row).
        #[arg(long, default_value = "")]
        reason: String,
    },
}

/// `audit ...`.
#[derive(Subcommand, Debug)]
pub enum AuditCmd {
    /// Audit rows, newest first.
    List {
        /// Only this token name.
        #[arg(long, default_value = "")]
        token: String,
        /// Only this target, e.g. support_set:NAME or rule:ID.
        #[arg(long, default_value = "")]
        target: String,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

/// `models ...`.
#[derive(Subcommand, Debug)]
pub enum ModelsCmd {
    /// List model bundles with their evaluation.
    List,
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

fn ts(t: &Option<prost_types::Timestamp>) -> String {
    let s = crate::admin::seconds(t);
    if s == 0.0 {
        return String::new();
    }
    // UTC, without a date library: civil-from-days (Howard Hinnant).
    let secs = s as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (m <= 2) as i64;
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// One line of `sets evaluate`'s text output for a flag (leading newline included): a pair's
/// mask flag, or (pair number 0) a set-level flag such as a poor set.
pub fn evaluate_flag_line(f: &pb::MaskFlag) -> String {
    if f.pair_number == 0 {
        let kind = match pb::FlagKind::try_from(f.kind) {
            Ok(pb::FlagKind::PoorSet) => "POOR SET",
            _ => "SET",
        };
        format!("\nFLAG {kind} object {}: {}", f.object_index, f.detail)
    } else {
        format!(
            "\nFLAG pair {} object {}: {}",
            f.pair_number, f.object_index, f.detail
        )
    }
}

/// Prints rows as an aligned table.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < w.len() {
                w[i] = w[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = w[i]))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = line(headers.iter().map(|s| s.to_string()).collect());
    out.push('\n');
    out += &line(w.iter().map(|n| "-".repeat(*n)).collect());
    for r in rows {
        out.push('\n');
        out += &line(r.clone());
    }
    out
}

fn code_json(c: &Option<pb::Code>) -> Value {
    c.as_ref()
        .map(|c| json!({"scheme": c.scheme, "code": c.code, "meaning": c.meaning}))
        .unwrap_or(Value::Null)
}

fn set_json(s: &pb::SupportSet) -> Value {
    json!({
        "name": s.name, "description": s.description, "version": s.version, "bundle": s.bundle,
        "modality": s.modality, "body_part": s.body_part, "pair_count": s.pair_count,
        "created_at": ts(&s.created_at), "updated_at": ts(&s.updated_at),
        "objects": s.objects.iter().map(|o| json!({
            "index": o.index, "label": o.label, "category": code_json(&o.category),
            "type": code_json(&o.r#type), "color": o.color,
        })).collect::<Vec<_>>(),
        "pairs": s.pairs.iter().map(|p| json!({
            "number": p.number, "sop_instance_uid": p.sop_instance_uid,
            "sop_class_uid": p.sop_class_uid, "modality": p.modality, "rows": p.rows,
            "columns": p.columns, "image_sha256": p.image_sha256, "mask_pixels": p.mask_pixels,
            "mask_source": p.mask_source, "added_in_version": p.added_in_version,
        })).collect::<Vec<_>>(),
    })
}

fn set_text(s: &pb::SupportSet) -> String {
    let mut out = format!(
        "{} (version {})  bundle {}  match {} / {}\n{}\n\nobjects:\n",
        s.name,
        s.version,
        or_dash(&s.bundle),
        or_dash(&s.modality),
        or_dash(&s.body_part),
        s.description
    );
    out += &table(
        &["#", "LABEL", "CATEGORY", "TYPE", "COLOR"],
        &s.objects
            .iter()
            .map(|o| {
                let c = |c: &Option<pb::Code>| {
                    c.as_ref()
                        .map(|c| format!("{} ({}:{})", c.meaning, c.scheme, c.code))
                        .unwrap_or_default()
                };
                vec![
                    o.index.to_string(),
                    o.label.clone(),
                    c(&o.category),
                    c(&o.r#type),
                    format!("{:?}", o.color),
                ]
            })
            .collect::<Vec<_>>(),
    );
    out += "\n\npairs:\n";
    out += &table(
        &[
            "#",
            "SOP INSTANCE UID",
            "MODALITY",
            "SIZE",
            "MASK PIXELS",
            "FROM",
            "SINCE",
        ],
        &s.pairs
            .iter()
            .map(|p| {
                vec![
                    p.number.to_string(),
                    p.sop_instance_uid.clone(),
                    p.modality.clone(),
                    format!("{}x{}", p.rows, p.columns),
                    p.mask_pixels
                        .iter()
                        .map(|x| x.to_string())
                        .collect::<Vec<_>>()
                        .join(","),
                    p.mask_source.clone(),
                    format!("v{}", p.added_in_version),
                ]
            })
            .collect::<Vec<_>>(),
    );
    out
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

fn rule_json(r: &pb::Rule) -> Value {
    json!({
        "id": r.id, "priority": r.priority, "modality": r.modality, "body_part": r.body_part,
        "sop_class_uid": r.sop_class_uid, "series_description_regex": r.series_description_regex,
        "calling_ae": r.calling_ae, "support_set": r.support_set,
        "destination_ae": r.destination_ae, "stable_age_s": r.stable_age_s,
        "enabled": !r.disabled, "include_localizers": r.include_localizers,
        "description": r.description,
    })
}

fn job_json(j: &pb::Job) -> Value {
    json!({
        "id": j.id, "study_uid": j.study_uid, "state": j.state, "calling_ae": j.calling_ae,
        "instance_count": j.instance_count, "created_at": ts(&j.created_at),
        "updated_at": ts(&j.updated_at), "attempts": j.attempts, "error": j.error,
        "rule_id": j.rule_id, "support_set": j.support_set,
        "support_set_version": j.support_set_version, "bundle": j.bundle,
        "destination_ae": j.destination_ae,
        "events": j.events.iter().map(event_json).collect::<Vec<_>>(),
    })
}

fn event_json(e: &pb::JobEvent) -> Value {
    json!({"job_id": e.job_id, "study_uid": e.study_uid, "state": e.state,
           "at": ts(&e.at), "detail": e.detail})
}

fn print(args: &AdminArgs, v: Value, text: impl FnOnce() -> String) {
    if args.json {
        println!("{v}");
    } else {
        println!("{}", text());
    }
}

/// Where a dry run's results go, for people: the destination AE, or "the sender (AE X)" when
/// the rule sends back to whoever sent the study.
fn destination_text(to_sender: bool, destination_ae: &str) -> String {
    match (to_sender, destination_ae.trim()) {
        (false, ae) => ae.to_string(),
        (true, "") => "the sender (its calling AE; give --calling-ae to name it)".into(),
        (true, ae) => format!("the sender (AE {ae})"),
    }
}

fn read_file(p: &Path) -> Result<Vec<u8>, CliError> {
    std::fs::read(p).map_err(|e| CliError::Local(format!("{}: {e}", p.display())))
}

fn progress(total: u64, hidden: bool) -> indicatif::ProgressBar {
    if hidden {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec})",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message("uploading");
    bar
}

/// The AddPair messages for an image and its masks.
pub fn add_pair_messages(
    set: &str,
    expected_version: u32,
    image: &[u8],
    pngs: &[Vec<u8>],
    seg: Option<&[u8]>,
) -> Vec<pb::AddPairRequest> {
    use pb::add_pair_request::Part;
    let mut out = vec![pb::AddPairRequest {
        part: Some(Part::Header(pb::AddPairHeader {
            support_set: set.to_string(),
            mask_format: if seg.is_some() {
                pb::MaskFormat::DicomSeg
            } else {
                pb::MaskFormat::Png
            } as i32,
            expected_version,
        })),
    }];
    for c in image.chunks(CHUNK) {
        out.push(pb::AddPairRequest {
            part: Some(Part::ImageChunk(c.to_vec())),
        });
    }
    let masks: Vec<(u32, &[u8])> = match seg {
        Some(s) => vec![(0, s)],
        None => pngs
            .iter()
            .enumerate()
            .map(|(i, p)| (i as u32 + 1, p.as_slice()))
            .collect(),
    };
    for (index, bytes) in masks {
        for c in bytes.chunks(CHUNK) {
            out.push(pb::AddPairRequest {
                part: Some(Part::MaskChunk(pb::MaskChunk {
                    object_index: index,
                    data: c.to_vec(),
                })),
            });
        }
    }
    out
}

fn msg_len(m: &pb::AddPairRequest) -> u64 {
    use pb::add_pair_request::Part;
    match &m.part {
        Some(Part::ImageChunk(b)) => b.len() as u64,
        Some(Part::MaskChunk(c)) => c.data.len() as u64,
        _ => 0,
    }
}

async fn run(args: &AdminArgs) -> Result<(), CliError> {
    let (ch, auth) = connect(args).await?;
    let big = 512 * 1024 * 1024;
    let mut sets = SupportSetsClient::with_interceptor(ch.clone(), auth.clone())
        .max_decoding_message_size(big)
        .max_encoding_message_size(big);
    let mut rules =
        RulesClient::with_interceptor(ch.clone(), auth.clone()).max_encoding_message_size(big);
    let mut jobs = JobsClient::with_interceptor(ch.clone(), auth.clone());
    let mut models = ModelsClient::with_interceptor(ch.clone(), auth.clone());
    let mut audit = AuditClient::with_interceptor(ch.clone(), auth.clone());
    let mut studies = StudiesClient::with_interceptor(ch.clone(), auth.clone());
    let mut preview = PreviewClient::with_interceptor(ch, auth)
        .max_decoding_message_size(big)
        .max_encoding_message_size(big);
    match &args.command {
        AdminCmd::SupportSet(cmd) => match cmd {
            SetCmd::Create {
                name,
                objects,
                bundle,
                modality,
                body_part,
                description,
            } => {
                let s = sets
                    .create(pb::CreateSupportSetRequest {
                        name: name.clone(),
                        description: description.clone(),
                        bundle: bundle.clone(),
                        modality: modality.clone(),
                        body_part: body_part.clone(),
                        objects: objects
                            .iter()
                            .map(|l| pb::SupportObject {
                                label: l.clone(),
                                ..Default::default()
                            })
                            .collect(),
                    })
                    .await?
                    .into_inner();
                print(args, set_json(&s), || {
                    format!("created support set {} (version {})", s.name, s.version)
                });
            }
            SetCmd::List => {
                let l = sets.list(pb::ListSupportSetsRequest {}).await?.into_inner();
                print(
                    args,
                    Value::Array(l.support_sets.iter().map(set_json).collect()),
                    || {
                        table(
                            &[
                                "NAME",
                                "VERSION",
                                "BUNDLE",
                                "MODALITY",
                                "BODY PART",
                                "OBJECTS",
                                "PAIRS",
                                "UPDATED",
                            ],
                            &l.support_sets
                                .iter()
                                .map(|s| {
                                    vec![
                                        s.name.clone(),
                                        s.version.to_string(),
                                        s.bundle.clone(),
                                        s.modality.clone(),
                                        s.body_part.clone(),
                                        s.objects
                                            .iter()
                                            .map(|o| o.label.clone())
                                            .collect::<Vec<_>>()
                                            .join(", "),
                                        s.pair_count.to_string(),
                                        ts(&s.updated_at),
                                    ]
                                })
                                .collect::<Vec<_>>(),
                        )
                    },
                );
            }
            SetCmd::Show { name, version } => {
                let s = sets
                    .get(pb::GetSupportSetRequest {
                        name: name.clone(),
                        version: *version,
                    })
                    .await?
                    .into_inner();
                print(args, set_json(&s), || set_text(&s));
            }
            SetCmd::Update {
                name,
                description,
                bundle,
                modality,
                body_part,
            } => {
                let s = sets
                    .update(pb::UpdateSupportSetRequest {
                        name: name.clone(),
                        description: description.clone(),
                        bundle: bundle.clone(),
                        modality: modality.clone(),
                        body_part: body_part.clone(),
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                print(args, set_json(&s), || {
                    format!("support set {} is at version {}", s.name, s.version)
                });
            }
            SetCmd::Delete { name } => {
                sets.delete(pb::DeleteSupportSetRequest { name: name.clone() })
                    .await?;
                print(args, json!({"deleted": name}), || {
                    format!("deleted support set {name}")
                });
            }
            SetCmd::Import { path, name } => {
                let s = sets
                    .import(pb::ImportRequest {
                        path: path.clone(),
                        name: name.clone(),
                    })
                    .await?
                    .into_inner();
                print(args, set_json(&s), || {
                    format!(
                        "imported support set {} (version {}, {} pair(s))",
                        s.name, s.version, s.pair_count
                    )
                });
            }
            SetCmd::Export {
                name,
                path,
                version,
            } => {
                let r = sets
                    .export(pb::ExportRequest {
                        name: name.clone(),
                        version: *version,
                        path: path.clone(),
                    })
                    .await?
                    .into_inner();
                print(
                    args,
                    json!({"path": r.path, "version": r.version, "files": r.files}),
                    || {
                        format!(
                            "exported {name} version {} to {} ({} files)",
                            r.version,
                            r.path,
                            r.files.len()
                        )
                    },
                );
            }
            SetCmd::Evaluate { name, version } => {
                let r = sets
                    .evaluate(pb::EvaluateRequest {
                        name: name.clone(),
                        version: *version,
                    })
                    .await?
                    .into_inner();
                let v = json!({
                    "name": r.name, "version": r.version, "mean_dice": r.mean_dice,
                    "object_mean_dice": r.object_mean_dice,
                    "pairs": r.pairs.iter().map(|p| json!({"pair": p.pair_number, "dice": p.dice, "mean_dice": p.mean_dice})).collect::<Vec<_>>(),
                    // A set-level flag (pair_number 0) has "pair": null.
                    "flags": r.flags.iter().map(|f| json!({"pair": (f.pair_number > 0).then_some(f.pair_number),
                        "object": f.object_index,
                        "kind": pb::FlagKind::try_from(f.kind).map(|k| k.as_str_name()).unwrap_or("?"), "detail": f.detail})).collect::<Vec<_>>(),
                });
                print(args, v, || {
                    let mut s = format!(
                        "{} version {}: mean leave-one-out Dice {:.3}\n",
                        r.name, r.version, r.mean_dice
                    );
                    s += &table(
                        &["PAIR", "DICE PER OBJECT", "MEAN"],
                        &r.pairs
                            .iter()
                            .map(|p| {
                                vec![
                                    p.pair_number.to_string(),
                                    p.dice
                                        .iter()
                                        .map(|d| format!("{d:.3}"))
                                        .collect::<Vec<_>>()
                                        .join(" "),
                                    format!("{:.3}", p.mean_dice),
                                ]
                            })
                            .collect::<Vec<_>>(),
                    );
                    for f in &r.flags {
                        s += &evaluate_flag_line(f);
                    }
                    s
                });
            }
        },
        AdminCmd::Pair(cmd) => match cmd {
            PairCmd::Add {
                set,
                image,
                pngs,
                seg,
                expected_version,
            } => {
                let img = read_file(image)?;
                let png_bytes = pngs
                    .iter()
                    .map(|p| read_file(p))
                    .collect::<Result<Vec<_>, _>>()?;
                let seg_bytes = seg.as_deref().map(read_file).transpose()?;
                if png_bytes.is_empty() && seg_bytes.is_none() {
                    return Err(CliError::Local(
                        "give the masks: --png FILE per object, or --seg FILE".into(),
                    ));
                }
                let msgs = add_pair_messages(
                    set,
                    *expected_version,
                    &img,
                    &png_bytes,
                    seg_bytes.as_deref(),
                );
                let total: u64 = msgs.iter().map(msg_len).sum();
                let bar = progress(total, args.json);
                let b2 = bar.clone();
                let stream = tokio_stream::StreamExt::map(tokio_stream::iter(msgs), move |m| {
                    b2.inc(msg_len(&m));
                    m
                });
                let r = sets.add_pair(stream).await;
                bar.finish_and_clear();
                let s = r?.into_inner();
                let n = s.pairs.iter().map(|p| p.number).max().unwrap_or(0);
                print(args, set_json(&s), || {
                    format!("added pair {n} to {} (now version {})", s.name, s.version)
                });
            }
            PairCmd::Remove { set, number } => {
                let s = sets
                    .remove_pair(pb::RemovePairRequest {
                        support_set: set.clone(),
                        pair_number: *number,
                        expected_version: 0,
                    })
                    .await?
                    .into_inner();
                print(args, set_json(&s), || {
                    format!(
                        "removed pair {number} from {} (now version {})",
                        s.name, s.version
                    )
                });
            }
        },
        AdminCmd::Rule(cmd) => match cmd {
            RuleCmd::Add {
                support_set,
                priority,
                modality,
                body_part,
                sop_class,
                series_regex,
                calling_ae,
                destination,
                stable_age,
                include_localizers,
                disabled,
                description,
            } => {
                let r = rules
                    .create(pb::CreateRuleRequest {
                        rule: Some(pb::Rule {
                            priority: *priority,
                            modality: modality.clone(),
                            body_part: body_part.clone(),
                            sop_class_uid: sop_class.clone(),
                            series_description_regex: series_regex.clone(),
                            calling_ae: calling_ae.clone(),
                            support_set: support_set.clone(),
                            destination_ae: destination.clone(),
                            stable_age_s: *stable_age,
                            disabled: *disabled,
                            include_localizers: *include_localizers,
                            description: description.clone(),
                            ..Default::default()
                        }),
                    })
                    .await?
                    .into_inner();
                print(args, rule_json(&r), || format!("created rule {}", r.id));
            }
            RuleCmd::List => {
                let l = rules.list(pb::ListRulesRequest {}).await?.into_inner();
                print(
                    args,
                    Value::Array(l.rules.iter().map(rule_json).collect()),
                    || {
                        table(
                            &[
                                "ID",
                                "PRIO",
                                "ON",
                                "MODALITY",
                                "BODY PART",
                                "SERIES /RE/",
                                "FROM AE",
                                "SUPPORT SET",
                                "TO AE",
                                "STABLE",
                            ],
                            &l.rules
                                .iter()
                                .map(|r| {
                                    vec![
                                        r.id.to_string(),
                                        r.priority.to_string(),
                                        if r.disabled { "no" } else { "yes" }.into(),
                                        or_dash(&r.modality).into(),
                                        or_dash(&r.body_part).into(),
                                        or_dash(&r.series_description_regex).into(),
                                        or_dash(&r.calling_ae).into(),
                                        r.support_set.clone(),
                                        if r.destination_ae.is_empty() {
                                            "(sender)".into()
                                        } else {
                                            r.destination_ae.clone()
                                        },
                                        r.stable_age_s
                                            .map(|s| format!("{s}s"))
                                            .unwrap_or_else(|| "-".into()),
                                    ]
                                })
                                .collect::<Vec<_>>(),
                        )
                    },
                );
            }
            RuleCmd::Update {
                id,
                support_set,
                priority,
                modality,
                body_part,
                sop_class,
                series_regex,
                calling_ae,
                destination,
                stable_age,
                no_stable_age,
                include_localizers,
                enabled,
                description,
            } => {
                let mut r = rules
                    .list(pb::ListRulesRequest {})
                    .await?
                    .into_inner()
                    .rules
                    .into_iter()
                    .find(|r| r.id == *id)
                    .ok_or_else(|| Status::not_found(format!("rule {id} not found")))?;
                let set = |field: &mut String, v: &Option<String>| {
                    if let Some(v) = v {
                        *field = v.clone();
                    }
                };
                set(&mut r.support_set, support_set);
                set(&mut r.modality, modality);
                set(&mut r.body_part, body_part);
                set(&mut r.sop_class_uid, sop_class);
                set(&mut r.series_description_regex, series_regex);
                set(&mut r.calling_ae, calling_ae);
                set(&mut r.destination_ae, destination);
                set(&mut r.description, description);
                r.priority = priority.unwrap_or(r.priority);
                if *no_stable_age {
                    r.stable_age_s = None;
                } else if stable_age.is_some() {
                    r.stable_age_s = *stable_age;
                }
                r.include_localizers = include_localizers.unwrap_or(r.include_localizers);
                r.disabled = enabled.map_or(r.disabled, |e| !e);
                let r = rules
                    .update(pb::UpdateRuleRequest { rule: Some(r) })
                    .await?
                    .into_inner();
                print(args, rule_json(&r), || format!("updated rule {}", r.id));
            }
            RuleCmd::Delete { id } => {
                rules.delete(pb::DeleteRuleRequest { id: *id }).await?;
                print(args, json!({"deleted": id}), || {
                    format!("deleted rule {id}")
                });
            }
            RuleCmd::DryRun {
                file,
                modality,
                body_part,
                series_description,
                sop_class,
                calling_ae,
            } => {
                let input = match file {
                    Some(f) => pb::dry_run_request::Input::Dicom(read_file(f)?),
                    None => pb::dry_run_request::Input::Header(pb::StudyHeader {
                        modality: modality.clone(),
                        body_part: body_part.clone(),
                        sop_class_uid: sop_class.clone(),
                        series_description: series_description.clone(),
                        calling_ae: calling_ae.clone(),
                        image_type: Vec::new(),
                    }),
                };
                let r = rules
                    .dry_run(pb::DryRunRequest {
                        input: Some(input),
                        calling_ae: calling_ae.clone(),
                    })
                    .await?
                    .into_inner();
                let v = json!({
                    "matched": r.matched, "rule_id": r.rule_id, "support_set": r.support_set,
                    "support_set_version": r.support_set_version,
                    "destination_ae": r.destination_ae, "reason": r.reason,
                    "stable_age_s": r.stable_age_s, "to_sender": r.to_sender,
                    "considered": r.considered.iter().map(|c| json!({"rule_id": c.rule_id, "matched": c.matched, "reason": c.reason})).collect::<Vec<_>>(),
                });
                print(args, v, || {
                    let mut s = if r.matched {
                        format!(
                            "rule {} -> support set {} (version {}) -> {}\n",
                            r.rule_id,
                            r.support_set,
                            r.support_set_version,
                            destination_text(r.to_sender, &r.destination_ae)
                        )
                    } else {
                        "unmatched\n".to_string()
                    };
                    s += &format!("why: {}", r.reason);
                    s
                });
            }
        },
        AdminCmd::Jobs(cmd) => match cmd {
            JobsCmd::List {
                states,
                study,
                limit,
            } => {
                let l = jobs
                    .list(pb::ListJobsRequest {
                        states: states.clone(),
                        study_uid: study.clone(),
                        limit: *limit,
                    })
                    .await?
                    .into_inner();
                print(
                    args,
                    Value::Array(l.jobs.iter().map(job_json).collect()),
                    || {
                        table(
                            &[
                                "ID",
                                "STATE",
                                "STUDY",
                                "FROM AE",
                                "N",
                                "SUPPORT SET",
                                "UPDATED",
                                "ERROR",
                            ],
                            &l.jobs
                                .iter()
                                .map(|j| {
                                    vec![
                                        j.id.to_string(),
                                        j.state.clone(),
                                        j.study_uid.clone(),
                                        j.calling_ae.clone(),
                                        j.instance_count.to_string(),
                                        if j.support_set.is_empty() {
                                            "-".into()
                                        } else {
                                            format!("{} v{}", j.support_set, j.support_set_version)
                                        },
                                        ts(&j.updated_at),
                                        j.error.clone(),
                                    ]
                                })
                                .collect::<Vec<_>>(),
                        )
                    },
                );
            }
            JobsCmd::Show { id } => {
                let j = jobs.get(pb::GetJobRequest { id: *id }).await?.into_inner();
                print(args, job_json(&j), || {
                    let mut s = format!(
                        "job {} ({}) study {} from {}\n",
                        j.id, j.state, j.study_uid, j.calling_ae
                    );
                    if !j.error.is_empty() {
                        s += &format!("error: {}\n", j.error);
                    }
                    s += &table(
                        &["AT", "STATE", "DETAIL"],
                        &j.events
                            .iter()
                            .map(|e| vec![ts(&e.at), e.state.clone(), e.detail.clone()])
                            .collect::<Vec<_>>(),
                    );
                    s
                });
            }
            JobsCmd::Watch {
                job,
                study,
                states,
                history,
            } => {
                let mut stream = jobs
                    .watch(pb::WatchJobsRequest {
                        states: states.clone(),
                        study_uid: study.clone(),
                        job_id: *job,
                        include_history: *history,
                    })
                    .await?
                    .into_inner();
                while let Some(e) = stream.message().await? {
                    print(args, event_json(&e), || {
                        format!(
                            "{}  job {}  {}  {}  {}",
                            ts(&e.at),
                            e.job_id,
                            e.state,
                            e.study_uid,
                            e.detail
                        )
                    });
                }
            }
            JobsCmd::Retry { id } => {
                let j = jobs
                    .retry(pb::RetryJobRequest { id: *id })
                    .await?
                    .into_inner();
                print(args, job_json(&j), || {
                    format!("job {} is {} again", j.id, j.state)
                });
            }
        },
        AdminCmd::Study(StudyCmd::Purge { uid, reason }) => {
            let p = studies
                .purge(pb::PurgeStudyRequest {
                    study_instance_uid: uid.clone(),
                    reason: reason.clone(),
                })
                .await?
                .into_inner();
            print(
                args,
                json!({"study_instance_uid": p.study_instance_uid, "outcome": p.outcome,
                       "instances": p.instances, "jobs": p.jobs, "outbox_rows": p.outbox_rows,
                       "files": p.files, "bytes": p.bytes, "missing_files": p.missing_files}),
                || {
                    let mut s = format!(
                        "purged study {} ({}): {} instance(s), {} job(s), {} SEG delivery row(s); {} file(s), {} byte(s) removed",
                        p.study_instance_uid,
                        p.outcome,
                        p.instances,
                        p.jobs,
                        p.outbox_rows,
                        p.files,
                        p.bytes
                    );
                    if p.missing_files > 0 {
                        s += &format!("; {} instance file(s) were already gone", p.missing_files);
                    }
                    s
                },
            );
        }
        AdminCmd::Preview {
            set,
            image,
            out,
            version,
        } => {
            use pb::preview_request::Part;
            let img = read_file(image)?;
            let mut msgs = vec![pb::PreviewRequest {
                part: Some(Part::Header(pb::PreviewHeader {
                    support_set: set.clone(),
                    version: *version,
                })),
            }];
            msgs.extend(img.chunks(CHUNK).map(|c| pb::PreviewRequest {
                part: Some(Part::ImageChunk(c.to_vec())),
            }));
            let r = preview
                .segment(tokio_stream::iter(msgs))
                .await?
                .into_inner();
            std::fs::create_dir_all(out)
                .map_err(|e| CliError::Local(format!("{}: {e}", out.display())))?;
            let mut files = Vec::new();
            for o in &r.overlays {
                let p = out.join(format!("overlay-{}.png", o.object_index));
                std::fs::write(&p, &o.png)
                    .map_err(|e| CliError::Local(format!("{}: {e}", p.display())))?;
                files.push(json!({"object": o.object_index, "label": o.label,
                                  "pixels": o.pixels, "file": p.display().to_string()}));
            }
            print(
                args,
                json!({"support_set": r.support_set, "version": r.version, "rows": r.rows,
                       "columns": r.columns, "overlays": files}),
                || {
                    let mut s = format!(
                        "{} version {} on a {}x{} image:",
                        r.support_set, r.version, r.rows, r.columns
                    );
                    for o in &r.overlays {
                        s += &format!(
                            "\n  {} ({}): {} px -> {}",
                            o.object_index,
                            o.label,
                            o.pixels,
                            out.join(format!("overlay-{}.png", o.object_index))
                                .display()
                        );
                    }
                    s
                },
            );
        }
        AdminCmd::Audit(AuditCmd::List {
            token,
            target,
            limit,
        }) => {
            let l = audit
                .list(pb::ListAuditRequest {
                    limit: *limit,
                    token_name: token.clone(),
                    target: target.clone(),
                })
                .await?
                .into_inner();
            print(
                args,
                Value::Array(
                    l.entries
                        .iter()
                        .map(|e| {
                            json!({"id": e.id, "at": ts(&e.at), "token_name": e.token_name,
                                   "action": e.action, "target": e.target, "detail": e.detail})
                        })
                        .collect(),
                ),
                || {
                    table(
                        &["AT", "WHO", "ACTION", "TARGET", "DETAIL"],
                        &l.entries
                            .iter()
                            .map(|e| {
                                vec![
                                    ts(&e.at),
                                    e.token_name.clone(),
                                    e.action.clone(),
                                    e.target.clone(),
                                    e.detail.clone(),
                                ]
                            })
                            .collect::<Vec<_>>(),
                    )
                },
            );
        }
        AdminCmd::Models(ModelsCmd::List) => {
            let l = models.list(pb::ListModelsRequest {}).await?.into_inner();
            let v = Value::Array(
                l.bundles
                    .iter()
                    .map(|b| {
                        json!({
                            "name": b.name, "path": b.path, "summary": b.summary, "graphs": b.graphs,
                            "error": b.error, "manifest_toml": b.manifest_toml,
                            "evaluation": b.evaluation.iter().map(|r| json!({
                                "name": r.name, "labels": r.labels,
                                "metrics": r.metrics.iter().map(|m| (m.name.clone(), json!(m.value))).collect::<serde_json::Map<_, _>>(),
                            })).collect::<Vec<_>>(),
                        })
                    })
                    .collect(),
            );
            print(args, v, || {
                let mut s = String::new();
                for b in &l.bundles {
                    s += &format!("{}  ({})\n", b.name, b.path);
                    if !b.error.is_empty() {
                        s += &format!("  error: {}\n", b.error);
                    }
                    let mut keys: Vec<_> = b.summary.iter().collect();
                    keys.sort();
                    for (k, v) in keys {
                        s += &format!("  {k} = {v}\n");
                    }
                    for r in &b.evaluation {
                        s += &format!(
                            "  evaluation {}: {}\n",
                            r.name,
                            r.metrics
                                .iter()
                                .map(|m| format!("{} {:.4}", m.name, m.value))
                                .collect::<Vec<_>>()
                                .join(", ")
                        );
                    }
                }
                if s.is_empty() {
                    s = "no model bundles".into();
                }
                s.trim_end().to_string()
            });
        }
    }
    Ok(())
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
