//! Where the walked bytes come from ([`Source`]): a slice in memory, a stream that can only be
//! read forward ([`Streamed`], an inflating reader), or a data set whose first bytes are in
//! memory and whose rest is in the spool file ([`HeadThenFile`]). Skipping never allocates.

use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

/// Where the walked bytes come from.
pub trait Source {
    /// Fills `buf` completely; `Ok(false)` on a clean end before its first byte.
    fn read_or_end(&mut self, buf: &mut [u8]) -> std::io::Result<bool>;
    /// Moves `n` bytes forward (the walker checked they exist, or are within the cap).
    fn skip(&mut self, n: u64) -> std::io::Result<()>;
}

fn fill(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

impl Source for &[u8] {
    fn read_or_end(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        fill(self, buf)
    }
    fn skip(&mut self, n: u64) -> std::io::Result<()> {
        let n = usize::try_from(n).unwrap_or(usize::MAX);
        if n > self.len() {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        *self = &self[n..];
        Ok(())
    }
}

/// A stream that can only be read forward (an inflating reader): skipping reads and drops
/// through one fixed buffer.
pub struct Streamed<R> {
    inner: R,
    scratch: Vec<u8>,
}

impl<R: Read> Streamed<R> {
    /// Wraps a reader.
    pub fn new(inner: R) -> Streamed<R> {
        Streamed {
            inner,
            scratch: vec![0; 64 * 1024],
        }
    }
}

impl<R: Read> Source for Streamed<R> {
    fn read_or_end(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        fill(&mut self.inner, buf)
    }
    fn skip(&mut self, mut n: u64) -> std::io::Result<()> {
        while n > 0 {
            let k = n.min(self.scratch.len() as u64) as usize;
            if !fill(&mut self.inner, &mut self.scratch[..k])? {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            n -= k as u64;
        }
        Ok(())
    }
}

/// A data set whose first bytes are in memory and whose rest is in a file: the file is
/// opened only when the walk reads beyond the bytes in memory (skipped values are seeked
/// over, never read).
pub struct HeadThenFile<'a> {
    head: &'a [u8],
    path: &'a Path,
    /// Where the data set starts in the file.
    base: u64,
    /// Position in the data set.
    at: u64,
    file: Option<(BufReader<std::fs::File>, u64)>,
}

impl<'a> HeadThenFile<'a> {
    /// `head` holds the data set's first bytes; the data set starts at `base` in `path`.
    pub fn new(head: &'a [u8], path: &'a Path, base: u64) -> HeadThenFile<'a> {
        HeadThenFile {
            head,
            path,
            base,
            at: 0,
            file: None,
        }
    }
}

impl Source for HeadThenFile<'_> {
    fn read_or_end(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        let in_head = (self.head.len() as u64).saturating_sub(self.at) as usize;
        let n = in_head.min(buf.len());
        if n > 0 {
            let from = self.at as usize;
            buf[..n].copy_from_slice(&self.head[from..from + n]);
            self.at += n as u64;
        }
        if n == buf.len() {
            return Ok(true);
        }
        let want = self.base + self.at;
        let (file, pos) = match &mut self.file {
            Some(f) => f,
            None => {
                let f = std::fs::File::open(self.path)?;
                self.file
                    .insert((BufReader::with_capacity(64 * 1024, f), u64::MAX))
            }
        };
        if *pos != want {
            file.seek(SeekFrom::Start(want))?;
        }
        let rest = &mut buf[n..];
        let got = fill(file, rest)?;
        if !got && n > 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if got {
            self.at += rest.len() as u64;
        }
        *pos = self.base + self.at;
        Ok(got)
    }
    fn skip(&mut self, n: u64) -> std::io::Result<()> {
        self.at += n;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{el, EXPLICIT};
    use super::super::{walk, PixelHeader, INGEST_TAGS};
    use super::*;
    use dicom_dictionary_std::tags;

    #[test]
    fn head_then_file_reads_past_the_head() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.dcm");
        let mut ds = el(0x0008, 0x0016, b"UI", b"1.2\0");
        ds.extend(el(0x0009, 0x1001, b"OB", &[7; 300]));
        ds.extend(el(0x0020, 0x000D, b"UI", b"1.3\0"));
        ds.extend(el(0x7FE0, 0x0010, b"OB", &[0; 64]));
        let mut file = vec![0xAA; 10];
        file.extend(&ds);
        std::fs::write(&path, &file).unwrap();
        let head = &file[10..40];
        let w = walk(
            HeadThenFile::new(head, &path, 10),
            EXPLICIT,
            Some(ds.len() as u64),
            u64::MAX,
            INGEST_TAGS,
        )
        .unwrap();
        assert_eq!(w.pixel, Some(PixelHeader::Native { declared: 64 }));
        let obj = dicom_object::InMemDicomObject::read_dataset_with_ts(
            &w.kept[..],
            &dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN.erased(),
        )
        .unwrap();
        assert_eq!(
            obj.element(tags::STUDY_INSTANCE_UID)
                .unwrap()
                .to_str()
                .unwrap()
                .trim_end_matches('\0'),
            "1.3"
        );
    }
}
