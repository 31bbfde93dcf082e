//! The ingest attributes kept by the walk ([`crate::dicom::walk::INGEST_TAGS`]), checked
//! against the command that announced the data set and against the size limits
//! ([`check_pixels`]), and the instance's index record made from them ([`inspect`]).

use super::InstanceRecord;
use super::{Invalid, MAX_DIM, MAX_FRAMES};
use crate::dicom::dimse::{status, Command};
use crate::dicom::sop;
use crate::dicom::walk::PixelHeader;
use dicom_core::Tag;
use dicom_dictionary_std::tags;

/// Checks a data set's ingest attributes (see [`crate::dicom::walk::INGEST_TAGS`]) against
/// its command and its pixel header, and makes its index row.
pub fn inspect(
    obj: &dicom_object::InMemDicomObject,
    pixel: Option<PixelHeader>,
    cmd: &Command,
    ts: &str,
    max_decoded: u64,
) -> Result<InstanceRecord, Invalid> {
    let text = |tag: Tag| -> String {
        obj.element_opt(tag)
            .ok()
            .flatten()
            .and_then(|e| e.to_str().ok())
            .map(|s| s.trim_end_matches(['\0', ' ']).trim().to_string())
            .unwrap_or_default()
    };
    let int = |tag: Tag| -> Option<i64> {
        obj.element_opt(tag)
            .ok()
            .flatten()
            .and_then(|e| e.to_int::<i64>().ok())
    };
    let sop_class = text(tags::SOP_CLASS_UID);
    let sop_instance = text(tags::SOP_INSTANCE_UID);
    if sop_class != cmd.sop_class_uid {
        return Err(Invalid::new(
            status::DATASET_DOES_NOT_MATCH_SOP_CLASS,
            format!(
                "SOPClassUID {sop_class:?} differs from the command's {}",
                cmd.sop_class_uid
            ),
        ));
    }
    if sop_instance != cmd.sop_instance_uid {
        return Err(Invalid::new(
            status::DATASET_DOES_NOT_MATCH_SOP_CLASS,
            "SOPInstanceUID differs from the command's",
        ));
    }
    let study = text(tags::STUDY_INSTANCE_UID);
    let series = text(tags::SERIES_INSTANCE_UID);
    for (name, v) in [("StudyInstanceUID", &study), ("SeriesInstanceUID", &series)] {
        if !sop::is_valid_uid(v) {
            return Err(Invalid::new(
                status::DATASET_DOES_NOT_MATCH_SOP_CLASS,
                format!("missing or invalid {name}"),
            ));
        }
    }
    if let Some(pixel) = pixel {
        check_pixels(obj, pixel, max_decoded)?;
    }
    Ok(InstanceRecord {
        sop_instance_uid: sop_instance,
        sop_class_uid: sop_class,
        study_uid: study,
        series_uid: series,
        patient_id: text(tags::PATIENT_ID),
        patient_name: text(tags::PATIENT_NAME),
        modality: text(tags::MODALITY),
        body_part: text(tags::BODY_PART_EXAMINED),
        series_description: text(tags::SERIES_DESCRIPTION),
        series_number: int(tags::SERIES_NUMBER),
        instance_number: int(tags::INSTANCE_NUMBER),
        transfer_syntax: ts.to_string(),
        calling_ae: String::new(),
        source_host: String::new(),
        size_bytes: 0,
        digest: String::new(),
        path: String::new(),
        received_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0),
        content_key: crate::dicom::content::content_key(obj),
    })
}

/// Checks image dimensions, that decoding them fits `max_decoded` bytes, and, for native
/// (uncompressed) pixel data, that its length agrees with Rows x Columns x Samples x Bits
/// Allocated x Frames (encapsulated: at least one fragment per frame).
pub fn check_pixels(
    obj: &dicom_object::InMemDicomObject,
    pixel: PixelHeader,
    max_decoded: u64,
) -> Result<(), Invalid> {
    let bad = |m: String| Invalid::new(status::DATASET_DOES_NOT_MATCH_SOP_CLASS, m);
    let u = |tag: Tag, name: &str| -> Result<u64, Invalid> {
        obj.element_opt(tag)
            .ok()
            .flatten()
            .and_then(|e| e.to_int::<u64>().ok())
            .ok_or_else(|| {
                bad(format!(
                    "Pixel Data present but {name} missing or not a number"
                ))
            })
    };
    let rows = u(tags::ROWS, "Rows")?;
    let cols = u(tags::COLUMNS, "Columns")?;
    let spp = u(tags::SAMPLES_PER_PIXEL, "SamplesPerPixel")?;
    let bits = u(tags::BITS_ALLOCATED, "BitsAllocated")?;
    let frames = match obj.element_opt(tags::NUMBER_OF_FRAMES).ok().flatten() {
        Some(e) => e
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .ok_or_else(|| bad("NumberOfFrames is not a number".into()))?,
        None => 1,
    };
    if rows == 0 || cols == 0 || rows > MAX_DIM as u64 || cols > MAX_DIM as u64 {
        return Err(bad(format!("absurd image size {rows}x{cols}")));
    }
    if !matches!(spp, 1 | 3 | 4) {
        return Err(bad(format!("SamplesPerPixel {spp} is not 1, 3 or 4")));
    }
    if !matches!(bits, 1 | 8 | 16 | 32 | 64) {
        return Err(bad(format!(
            "BitsAllocated {bits} is not 1, 8, 16, 32 or 64"
        )));
    }
    if frames == 0 || frames > MAX_FRAMES {
        return Err(bad(format!("absurd NumberOfFrames {frames}")));
    }
    // What the worker would allocate to decode it (review H1: a few hundred kB declaring
    // 100 000 frames of 32768 x 32768 x 32 bits). Refused now, never decoded later.
    let need =
        crate::dicom::pixels::decoded_bytes(rows, cols, spp, bits, frames).unwrap_or(u64::MAX);
    if need > max_decoded {
        return Err(bad(format!(
            "decoded pixels need {} MiB > pipeline.max_decoded_mb",
            need / 1048576
        )));
    }
    match pixel {
        PixelHeader::Native { declared } => {
            // YBR_FULL_422 stores two luminance and two chroma samples per two pixels.
            let photometric = obj
                .element_opt(tags::PHOTOMETRIC_INTERPRETATION)
                .ok()
                .flatten()
                .and_then(|e| e.to_str().ok())
                .map(|s| s.trim().to_string())
                .unwrap_or_default();
            let samples = if spp == 3 && photometric == "YBR_FULL_422" {
                2
            } else {
                spp
            };
            let expected = (rows * cols * samples * bits * frames).div_ceil(8);
            if declared != expected && declared != expected + (expected % 2) {
                return Err(bad(format!(
                    "Pixel Data holds {declared} bytes; Rows x Columns x Samples x Bits x Frames needs {expected}"
                )));
            }
        }
        PixelHeader::Encapsulated { fragments: 0 } => {
            return Err(bad("encapsulated Pixel Data has no fragments".into()));
        }
        // Each frame takes one fragment or more (PS3.5 A.4).
        PixelHeader::Encapsulated { fragments } if fragments < frames => {
            return Err(bad(format!(
                "encapsulated Pixel Data has {fragments} fragments for {frames} frames"
            )));
        }
        PixelHeader::Encapsulated { .. } => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::*;
    use dicom_core::{DataElement, PrimitiveValue, VR};

    #[test]
    fn pixel_headers_are_checked_against_the_limits() {
        let mut o = image(32);
        o.put(DataElement::new(
            tags::ROWS,
            VR::US,
            PrimitiveValue::from(0u16),
        ));
        let e = check_pixels(&o, PixelHeader::Native { declared: 32 }, 1 << 20).unwrap_err();
        assert!(e.comment.contains("absurd image size"), "{e}");
        let o = image(32);
        // What the worker needs for 4x4 16-bit samples: one byte less is refused.
        let need = crate::dicom::pixels::decoded_bytes(4, 4, 1, 16, 1).unwrap();
        let e = check_pixels(&o, PixelHeader::Native { declared: 32 }, need - 1).unwrap_err();
        assert!(e.comment.contains("max_decoded_mb"), "{e}");
        assert!(check_pixels(&o, PixelHeader::Native { declared: 32 }, need).is_ok());
        let e = check_pixels(&o, PixelHeader::Encapsulated { fragments: 0 }, 1 << 20).unwrap_err();
        assert!(e.comment.contains("no fragments"), "{e}");
        let mut o = image(32);
        o.put(DataElement::new(
            tags::NUMBER_OF_FRAMES,
            VR::IS,
            PrimitiveValue::from("3"),
        ));
        let e = check_pixels(&o, PixelHeader::Encapsulated { fragments: 2 }, 1 << 20).unwrap_err();
        assert!(e.comment.contains("2 fragments for 3 frames"), "{e}");
        assert_eq!(e.status, status::DATASET_DOES_NOT_MATCH_SOP_CLASS);
    }
}
