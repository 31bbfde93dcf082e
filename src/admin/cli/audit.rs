//! `audit ...` and `models ...`: who changed what, and the installed model bundles.

use super::output::*;
use super::*;

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

/// Runs `audit ...`.
pub(super) async fn run(args: &AdminArgs, c: &mut Clients, cmd: &AuditCmd) -> Result<(), CliError> {
    let audit = &mut c.audit;
    match cmd {
        AuditCmd::List {
            token,
            target,
            limit,
        } => {
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
    }
    Ok(())
}

/// Runs `models ...`.
pub(super) async fn run_models(
    args: &AdminArgs,
    c: &mut Clients,
    cmd: &ModelsCmd,
) -> Result<(), CliError> {
    let models = &mut c.models;
    match cmd {
        ModelsCmd::List => {
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
