//! Support pairs whose masks come as DICOM SEG (written by highdicom, an independent writer),
//! through the real daemon and the SEG reader (`dicom::seg::read_seg`): upload, export / import
//! round trip, and SEGs that do not fit the image refused with INVALID_ARGUMENT and no change.

use crate::harness::admin::*;
use crate::harness::*;
use proxyseg::admin::pb;
use std::path::Path;
use tonic::Code;

fn make_seg(source: &Path, out: &Path, squares: &[&str]) {
    let mut args = vec![source.to_str().unwrap(), out.to_str().unwrap()];
    args.extend_from_slice(squares);
    let o = run_py("admin_make_seg.py", &args);
    assert!(o.status.success(), "highdicom: {}", text(&o));
}

async fn add_seg_pair(
    c: &mut Clients,
    set: &str,
    image: &[u8],
    seg: &[u8],
) -> Result<pb::SupportSet, tonic::Status> {
    let msgs = proxyseg::admin::cli::add_pair_messages(set, 0, image, &[], Some(seg));
    c.sets
        .add_pair(tokio_stream::iter(msgs))
        .await
        .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seg_masks_upload_export_and_import() {
    let a = start();
    let mut c = clients(&a.addr, ADMIN_TOKEN).await;
    c.sets
        .create(pb::CreateSupportSetRequest {
            name: "seg-set".into(),
            objects: vec![object("liver"), object("spleen")],
            ..Default::default()
        })
        .await
        .unwrap();
    let files = pydicom_files();
    let seg_path = a.aux.path().join("ct.seg.dcm");
    make_seg(
        &files.join("CT_small.dcm"),
        &seg_path,
        &["10,20,30", "70,70,8"],
    );
    let seg = std::fs::read(&seg_path).unwrap();
    let s = add_seg_pair(&mut c, "seg-set", &pydicom("CT_small.dcm"), &seg)
        .await
        .unwrap();
    assert_eq!(s.pairs[0].mask_pixels, [900, 64]);
    assert_eq!(s.pairs[0].mask_source, "seg");
    // A PNG pair in the same set.
    let s = add_pair(
        &mut c.sets,
        "seg-set",
        &pydicom("MR_small.dcm"),
        &pngs(&[square(64, 64, 0, 0, 10), square(64, 64, 30, 30, 5)]),
    )
    .await
    .unwrap();
    assert_eq!(s.version, 3);

    // Export keeps the SEG as uploaded; import reads it back to the same masks.
    let out = a.aux.path().join("exported");
    c.sets
        .export(pb::ExportRequest {
            name: "seg-set".into(),
            version: 0,
            path: out.display().to_string(),
        })
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(out.join("pairs/01/mask.seg.dcm")).unwrap(),
        seg
    );
    let back = c
        .sets
        .import(pb::ImportRequest {
            path: out.display().to_string(),
            name: "seg-copy".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(back.pairs[0].mask_pixels, [900, 64]);
    assert_eq!(back.pairs[1].mask_pixels, [100, 25]);

    // SEGs that do not fit: another image's SEG, the wrong number of segments, an empty
    // segment, a segment that covers the whole image.
    let before = snapshot(&a);
    let mr_seg = a.aux.path().join("mr.seg.dcm");
    make_seg(&files.join("MR_small.dcm"), &mr_seg, &["1,1,5", "10,10,5"]);
    let one_seg = a.aux.path().join("one.seg.dcm");
    make_seg(&files.join("CT_small.dcm"), &one_seg, &["1,1,5"]);
    let empty_seg = a.aux.path().join("empty.seg.dcm");
    make_seg(&files.join("CT_small.dcm"), &empty_seg, &["1,1,5", "0,0,0"]);
    let full_seg = a.aux.path().join("full.seg.dcm");
    make_seg(
        &files.join("CT_small.dcm"),
        &full_seg,
        &["1,1,5", "0,0,128"],
    );
    for (what, p, want) in [
        ("other image", &mr_seg, "does not match the image's 128x128"),
        ("one segment", &one_seg, "1 segment(s)"),
        ("empty segment", &empty_seg, "mask 2 (spleen): empty"),
        (
            "full segment",
            &full_seg,
            "mask 2 (spleen): every pixel is foreground",
        ),
    ] {
        let mut c2 = clients(&a.addr, ADMIN_TOKEN).await;
        let e = add_seg_pair(
            &mut c2,
            "seg-set",
            &pydicom("CT_small.dcm"),
            &std::fs::read(p).unwrap(),
        )
        .await
        .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{what}: {e:?}");
        assert!(
            e.message().contains(want),
            "{what}: {:?} lacks {want:?}",
            e.message()
        );
        assert_eq!(snapshot(&a), before, "{what} changed something");
    }
}
