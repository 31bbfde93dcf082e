//! Helpers shared by the admin API tests: a daemon with `[admin]` on, tonic clients with a
//! token, generated masks and a snapshot of every admin table for "nothing changed" checks.

use super::*;
use proxyseg::admin::cli::Bearer;
use proxyseg::admin::masks::mask_png;
use proxyseg::admin::pb;
use proxyseg::admin::pb::jobs_client::JobsClient;
use proxyseg::admin::pb::models_client::ModelsClient;
use proxyseg::admin::pb::rules_client::RulesClient;
use proxyseg::admin::pb::support_sets_client::SupportSetsClient;
use proxyseg::store::support::Mask;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub const ADMIN_TOKEN: &str = "alice-admin-token-0123456789";
pub const VIEWER_TOKEN: &str = "bob-viewer-token-0123456789";

/// A daemon with `[admin]` on, its tokens file and a models dir with one bundle manifest.
pub struct Admin {
    pub d: Daemon,
    pub addr: String,
    pub aux: tempfile::TempDir,
}

pub fn write_tokens(dir: &Path, mode: u32) -> PathBuf {
    let p = dir.join("admin-tokens");
    std::fs::write(
        &p,
        format!("# name role token\nalice admin {ADMIN_TOKEN}\nbob readonly {VIEWER_TOKEN}\n"),
    )
    .unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    p
}

/// Runs `proxyseg admin` against the API at `addr` with the bearer token in `token_file`.
pub fn admin_cli(addr: &str, token_file: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_proxyseg"))
        .args(["admin", "--endpoint", &format!("http://{addr}")])
        .arg("--token-file")
        .arg(token_file)
        .args(args)
        .env_remove("PROXYSEG_TOKEN")
        .output()
        .unwrap()
}

pub fn start() -> Admin {
    start_with("")
}

/// Like [`start`], with extra TOML tables appended (e.g. `[admin.tls]`).
pub fn start_with(tables: &str) -> Admin {
    start_full(tables, &|_| {})
}

/// Like [`start_with`]; `models` fills the models dir (`[engine] models_dir`, CPU provider)
/// before the daemon starts.
pub fn start_full(tables: &str, models_fill: &dyn Fn(&Path)) -> Admin {
    start_admin_keys("", tables, models_fill)
}

/// Like [`start_full`], with extra keys for the `[admin]` table (e.g. `"max_failed_auth = 3\n"`).
pub fn start_admin_keys(admin_keys: &str, tables: &str, models_fill: &dyn Fn(&Path)) -> Admin {
    let aux = tempfile::tempdir().unwrap();
    let tokens = write_tokens(aux.path(), 0o600);
    let models = aux.path().join("models");
    let bundle = models.join("tiny-test");
    std::fs::create_dir_all(&bundle).unwrap();
    std::fs::write(
        bundle.join("manifest.toml"),
        "contract = 1\nname = \"tiny-test\"\nfamily = \"sam\"\ninput_size = 256\n\
         [evaluation.fundus]\ndice = 0.8125\nsplit = \"test\"\n",
    )
    .unwrap();
    models_fill(&models);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let extra = format!(
        "[admin]\nlisten = \"{addr}\"\ntokens_file = \"{}\"\nmax_upload_mb = 2\nexchange_dir = \"{}\"\n{admin_keys}\
         [admin.body_part_synonyms]\nEYE = [\"RETINA\", \"FUNDUS\"]\n\
         [engine]\nmodels_dir = \"{}\"\nproviders = [\"cpu\"]\n{tables}\n",
        tokens.display(),
        aux.path().display(),
        models.display()
    );
    let mut d = Daemon::start(Opts {
        extra,
        ..Default::default()
    });
    d.wait_listening(&addr);
    Admin { d, addr, aux }
}

pub type Authed = InterceptedService<Channel, Bearer>;

pub struct Clients {
    pub sets: SupportSetsClient<Authed>,
    pub rules: RulesClient<Authed>,
    pub jobs: JobsClient<Authed>,
    pub models: ModelsClient<Authed>,
}

pub async fn channel(addr: &str) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

pub async fn clients(addr: &str, token: &str) -> Clients {
    let ch = channel(addr).await;
    let b = Bearer::new(token).unwrap();
    Clients {
        sets: SupportSetsClient::with_interceptor(ch.clone(), b.clone()),
        rules: RulesClient::with_interceptor(ch.clone(), b.clone()),
        jobs: JobsClient::with_interceptor(ch.clone(), b.clone()),
        models: ModelsClient::with_interceptor(ch, b),
    }
}

pub fn square(rows: usize, cols: usize, y0: usize, x0: usize, side: usize) -> Mask {
    let mut data = vec![0u8; rows * cols];
    for y in y0..(y0 + side).min(rows) {
        for x in x0..(x0 + side).min(cols) {
            data[y * cols + x] = 1;
        }
    }
    Mask { rows, cols, data }
}

pub fn grey_png(w: u32, h: u32, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, w, h);
    enc.set_color(png::ColorType::Grayscale);
    enc.set_depth(png::BitDepth::Eight);
    let mut wr = enc.write_header().unwrap();
    wr.write_image_data(data).unwrap();
    wr.finish().unwrap();
    out
}

pub fn pydicom(name: &str) -> Vec<u8> {
    std::fs::read(pydicom_files().join(name)).unwrap()
}

pub fn object(label: &str) -> pb::SupportObject {
    pb::SupportObject {
        label: label.into(),
        category: Some(pb::Code {
            scheme: "SCT".into(),
            code: "91723000".into(),
            meaning: "Anatomical structure".into(),
        }),
        r#type: Some(pb::Code {
            scheme: "SCT".into(),
            code: "12738006".into(),
            meaning: "Brain".into(),
        }),
        color: vec![255, 0, 0],
        index: 0,
    }
}

pub fn pngs(masks: &[Mask]) -> Vec<Vec<u8>> {
    masks.iter().map(mask_png).collect()
}

pub async fn add_pair(
    c: &mut SupportSetsClient<Authed>,
    set: &str,
    image: &[u8],
    png_masks: &[Vec<u8>],
) -> Result<pb::SupportSet, tonic::Status> {
    let msgs = proxyseg::admin::cli::add_pair_messages(set, 0, image, png_masks, None);
    c.add_pair(tokio_stream::iter(msgs))
        .await
        .map(|r| r.into_inner())
}

/// Row counts of every admin table plus the files under support/: what a refused change must
/// leave untouched.
/// Creates set `name` with one object "a" and one pair: pydicom's CT_small with `mask`.
pub async fn one_pair_set(sets: &mut SupportSetsClient<Authed>, name: &str, mask: Mask) {
    sets.create(pb::CreateSupportSetRequest {
        name: name.into(),
        objects: vec![object("a")],
        ..Default::default()
    })
    .await
    .unwrap();
    add_pair(sets, name, &pydicom("CT_small.dcm"), &pngs(&[mask]))
        .await
        .unwrap();
}

pub fn snapshot(a: &Admin) -> (Vec<i64>, usize) {
    let db = a.d.db();
    let counts = [
        "support_sets",
        "support_set_versions",
        "support_objects",
        "support_pairs",
        "rules",
        "audit",
    ]
    .iter()
    .map(|t| {
        db.query_row(&format!("SELECT COUNT(*) FROM {t}"), [], |r| r.get(0))
            .unwrap()
    })
    .collect();
    (counts, count_files(&a.d.data_dir().join("support")))
}

pub fn count_files(p: &Path) -> usize {
    match std::fs::read_dir(p) {
        Err(_) => 0,
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .map(|e| {
                let p = e.path();
                if p.is_dir() {
                    count_files(&p)
                } else {
                    1
                }
            })
            .sum(),
    }
}
