//! The Models service: the model bundles under `[engine] models_dir`, each with its manifest and
//! evaluation table, read from disk on every call (no engine needed).
//!
//! A bundle whose manifest cannot be read is still listed, with the error, so an admin sees
//! why the engine would refuse it.

use crate::admin::auth::{require, Access};
use crate::admin::pb;
use crate::admin::server::State;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The Models service.
#[derive(Debug, Clone)]
pub struct Svc {
    st: Arc<State>,
}

impl Svc {
    /// A service on shared state.
    pub fn new(st: Arc<State>) -> Svc {
        Svc { st }
    }
}

fn scalar(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        toml::Value::Datetime(d) => Some(d.to_string()),
        toml::Value::Array(a) if a.iter().all(|x| !x.is_table()) => {
            Some(a.iter().filter_map(scalar).collect::<Vec<_>>().join(", "))
        }
        _ => None,
    }
}

fn row(name: &str, t: &toml::Table) -> pb::EvaluationRow {
    let mut labels = HashMap::new();
    let mut metrics = Vec::new();
    for (k, v) in t {
        match v {
            toml::Value::Integer(i) => metrics.push(pb::Metric {
                name: k.clone(),
                value: *i as f64,
            }),
            toml::Value::Float(f) => metrics.push(pb::Metric {
                name: k.clone(),
                value: *f,
            }),
            other => {
                if let Some(s) = scalar(other) {
                    labels.insert(k.clone(), s);
                }
            }
        }
    }
    pb::EvaluationRow {
        name: name.to_string(),
        labels,
        metrics,
    }
}

/// Flattens an `evaluation` value: a table of scalars is one row; sub-tables are rows named by
/// their key; an array of tables gives one row each (named by `name` / `dataset` if present).
pub fn evaluation_rows(v: &toml::Value) -> Vec<pb::EvaluationRow> {
    match v {
        toml::Value::Table(t) => {
            let mut out = Vec::new();
            let scalars: toml::Table = t
                .iter()
                .filter(|(_, v)| !v.is_table() && !v.is_array())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            if !scalars.is_empty() {
                out.push(row("evaluation", &scalars));
            }
            for (k, v) in t {
                match v {
                    toml::Value::Table(sub) => out.push(row(k, sub)),
                    toml::Value::Array(a) if a.iter().any(|x| x.is_table()) => {
                        for (i, x) in a.iter().enumerate() {
                            if let Some(sub) = x.as_table() {
                                out.push(row(&format!("{k}[{i}]"), sub));
                            }
                        }
                    }
                    _ => {}
                }
            }
            out
        }
        toml::Value::Array(a) => a
            .iter()
            .enumerate()
            .filter_map(|(i, x)| x.as_table().map(|t| (i, t)))
            .map(|(i, t)| {
                let name = t
                    .get("name")
                    .or_else(|| t.get("dataset"))
                    .and_then(scalar)
                    .unwrap_or_else(|| format!("evaluation[{i}]"));
                row(&name, t)
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Reads one bundle folder.
pub fn read_bundle(dir: &Path) -> pb::ModelBundle {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut b = pb::ModelBundle {
        name,
        path: dir.display().to_string(),
        ..Default::default()
    };
    if let Ok(rd) = std::fs::read_dir(dir) {
        let mut graphs: Vec<String> = rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".onnx"))
            .collect();
        graphs.sort();
        b.graphs = graphs;
    }
    let path = dir.join("manifest.toml");
    match std::fs::read_to_string(&path) {
        Err(e) => b.error = format!("cannot read {}: {e}", path.display()),
        Ok(text) => {
            match toml::from_str::<toml::Table>(&text) {
                Err(e) => b.error = format!("{} is not valid TOML: {e}", path.display()),
                Ok(t) => {
                    for (k, v) in &t {
                        if k == "evaluation" {
                            b.evaluation = evaluation_rows(v);
                        } else if let Some(s) = scalar(v) {
                            b.summary.insert(k.clone(), s);
                        } else if let toml::Value::Table(sub) = v {
                            for (k2, v2) in sub {
                                if let Some(s) = scalar(v2) {
                                    b.summary.insert(format!("{k}.{k2}"), s);
                                }
                            }
                        }
                    }
                }
            }
            b.manifest_toml = text;
        }
    }
    b
}

/// Every bundle folder (`<models_dir>/<name>/manifest.toml`), by name.
pub fn list_bundles(models_dir: &Path) -> Vec<pb::ModelBundle> {
    let mut dirs: Vec<_> = std::fs::read_dir(models_dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.join("manifest.toml").is_file())
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs.iter().map(|d| read_bundle(d)).collect()
}

#[tonic::async_trait]
impl pb::models_server::Models for Svc {
    async fn list(
        &self,
        req: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        require(&req, Access::Read, "Models.List")?;
        let dir = self.st.models_dir.clone();
        let bundles = tokio::task::spawn_blocking(move || list_bundles(&dir))
            .await
            .map_err(crate::admin::internal)?;
        Ok(Response::new(pb::ListModelsResponse { bundles }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_are_summarised_with_their_evaluation() {
        let dir = tempfile::tempdir().unwrap();
        let b = dir.path().join("tiny");
        std::fs::create_dir(&b).unwrap();
        std::fs::write(
            b.join("manifest.toml"),
            "contract = 1\nname = \"tiny\"\nfamily = \"sam\"\ninput_size = 256\n\
             [graphs]\nimage_encoder = \"image_encoder.onnx\"\n\
             [evaluation]\nseed = 7\n[evaluation.fundus]\ndice = 0.81\nsplit = \"test\"\n",
        )
        .unwrap();
        std::fs::write(b.join("image_encoder.onnx"), b"x").unwrap();
        std::fs::create_dir(dir.path().join("broken")).unwrap();
        std::fs::write(dir.path().join("broken/manifest.toml"), "contract = [").unwrap();
        let all = list_bundles(dir.path());
        assert_eq!(all.len(), 2);
        assert!(
            !all[0].error.is_empty(),
            "broken manifest must carry its error"
        );
        let t = &all[1];
        assert_eq!(t.summary["family"], "sam");
        assert_eq!(t.summary["graphs.image_encoder"], "image_encoder.onnx");
        assert_eq!(t.graphs, ["image_encoder.onnx"]);
        let fundus = t.evaluation.iter().find(|r| r.name == "fundus").unwrap();
        assert_eq!(fundus.metrics[0].name, "dice");
        assert_eq!(fundus.labels["split"], "test");
    }
}
