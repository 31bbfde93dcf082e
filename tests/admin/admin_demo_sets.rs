//! The bundled demo support sets (`models/*/support-sets/*/supportset.toml`, shipped with the
//! model bundle) import through the real daemon: every pair validates and no mask is empty.

use crate::harness::admin::*;
use crate::harness::*;
use proxyseg::admin::pb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundled_demo_support_sets_import() {
    let a = start();
    let mut c = clients(&a.addr, ADMIN_TOKEN).await;
    let mut folders: Vec<_> = std::fs::read_dir(root().join("models"))
        .expect("models/ with the bundled demo support sets")
        .filter_map(|e| e.ok())
        .flat_map(|b| {
            std::fs::read_dir(b.path().join("support-sets"))
                .into_iter()
                .flatten()
                .filter_map(|e| e.ok())
                .map(|e| e.path())
        })
        .filter(|p| p.join("supportset.toml").is_file())
        .collect();
    folders.sort();
    assert!(
        !folders.is_empty(),
        "no models/*/support-sets/*/supportset.toml found"
    );
    for (i, f) in folders.into_iter().enumerate() {
        // Import reads only inside admin.exchange_dir (the harness's aux folder): copy the
        // bundled folder there and name it relative to it, as an admin would.
        let name = format!("demo-{i}");
        copy_tree(&f, &a.aux.path().join(&name));
        let s = c
            .sets
            .import(pb::ImportRequest {
                path: name,
                name: String::new(),
            })
            .await
            .unwrap_or_else(|e| panic!("{}: {e:?}", f.display()))
            .into_inner();
        assert!(!s.pairs.is_empty(), "{}", f.display());
        assert!(s.pairs.iter().all(|p| p.mask_pixels.iter().all(|&n| n > 0)));
    }
}

fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let dest = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_tree(&p, &dest);
        } else {
            std::fs::copy(&p, &dest).unwrap();
        }
    }
}
