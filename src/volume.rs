//! Volumes: a bundle split into files of at most a given size (removable media, FAT32's 4 GiB
//! limit), and the reading of a bundle from one file or from a set of volumes.
//!
//! # Format 2: volumes
//!
//! `hexmirror export --out FILE --max-size SIZE` writes the bundle (the byte stream of
//! [`crate::bundle`], unchanged) cut into `FILE.001`, `FILE.002`, …, each at most SIZE bytes, and
//! beside each a `FILE.NNN.sha256` in `sha256sum -c` form. Every volume starts with a 512-byte
//! header block, then carries the next `bytes` bytes of the bundle:
//!
//! ```text
//! hexmirror bundle volume\n
//! {"bytes":1048064,"format":2,"set":"<32 hex>","total":2621440,"volume":1,"volumes":3}\n
//! <spaces up to byte 511>\n
//! ```
//!
//! `set` is chosen at random for each export, so volumes of different exports never mix;
//! `total` is the whole bundle's length and `volumes` the number of volumes. Stripping the
//! headers and joining the volumes in order gives the bundle file a single-file export writes,
//! with the same sha256 (the digest import reports). A reader refuses a set with a missing,
//! duplicated, truncated or foreign volume, or an extra file where the set was named by its
//! directory, with a one-line reason naming it, before reading any object.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The volume layout this module writes and the only one it reads.
pub const FORMAT: u32 = 2;
/// The size of the header block every volume starts with.
pub const HEADER_LEN: u64 = 512;
const MAGIC: &[u8] = b"hexmirror bundle volume\n";
/// The smallest `--max-size`: a header and a little of the bundle.
pub const MIN_VOLUME: u64 = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub format: u32,
    pub set: String,
    pub volume: u32,
    pub volumes: u32,
    /// Bundle bytes in this volume.
    pub bytes: u64,
    /// Bundle bytes in all volumes.
    pub total: u64,
}

impl Header {
    fn encode(&self) -> Vec<u8> {
        let mut block = MAGIC.to_vec();
        block.extend_from_slice(&serde_json::to_vec(self).expect("headers serialize"));
        block.push(b'\n');
        block.resize(HEADER_LEN as usize - 1, b' ');
        block.push(b'\n');
        block
    }

    /// `None` when `block` is not a volume header at all; an error when it is one this
    /// hexmirror cannot read.
    fn decode(block: &[u8]) -> Option<Result<Header, String>> {
        let rest = block.strip_prefix(MAGIC)?;
        let line = rest.split(|b| *b == b'\n').next().unwrap_or_default();
        let value: serde_json::Value = match serde_json::from_slice(line) {
            Ok(value) => value,
            Err(e) => return Some(Err(format!("unreadable volume header: {e}"))),
        };
        match value.get("format").and_then(|f| f.as_u64()) {
            Some(f) if f == u64::from(FORMAT) => {}
            Some(f) => {
                return Some(Err(format!("unsupported volume format {f} (this hexmirror reads format {FORMAT})")))
            }
            None => return Some(Err("volume header without a format".into())),
        }
        Some(serde_json::from_value(value).map_err(|e| format!("unreadable volume header: {e}")))
    }
}

/// How many volumes of at most `max_size` bytes a bundle of `total` bytes takes.
pub fn count(total: u64, max_size: u64) -> u64 {
    total.div_ceil(max_size - HEADER_LEN).max(1)
}

/// The name of volume `n` of `out`: `FILE.001`.
pub fn volume_path(out: &Path, n: u32) -> PathBuf {
    let mut name = out.as_os_str().to_os_string();
    name.push(format!(".{n:03}"));
    PathBuf::from(name)
}

fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| path.display().to_string())
}

/// Writes a bundle of known length as volumes: into a hidden directory beside `out`, moved
/// into place by [`VolumeWriter::finish`] (dropped unfinished, it removes what it wrote).
pub struct VolumeWriter {
    out: PathBuf,
    partial: PathBuf,
    max_payload: u64,
    total: u64,
    set: String,
    volumes: u32,
    current: Option<(File, Sha256, u64)>,
    next: u32,
    sums: Vec<(u32, String)>,
    written: u64,
}

impl VolumeWriter {
    /// Refuses to start when a `FILE.NNN` already exists: volumes of two exports would mix.
    pub fn create(out: &Path, max_size: u64, total: u64) -> io::Result<VolumeWriter> {
        if max_size < MIN_VOLUME {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("--max-size {max_size} is below the smallest volume ({MIN_VOLUME} bytes)"),
            ));
        }
        let volumes = u32::try_from(count(total, max_size)).map_err(|_| io::Error::other("too many volumes"))?;
        for n in 1..=volumes.max(1) + 1 {
            let path = volume_path(out, n);
            if path.exists() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!(
                        "{} already exists (an earlier export?): remove it or choose another --out",
                        path.display()
                    ),
                ));
            }
        }
        let dir = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let partial = dir.join(format!(".{}.partial", file_name(out)));
        let _ = std::fs::remove_dir_all(&partial);
        std::fs::create_dir_all(&partial)?;
        let mut random = [0u8; 16];
        getrandom::getrandom(&mut random).map_err(io::Error::other)?;
        Ok(VolumeWriter {
            out: out.to_path_buf(),
            partial,
            max_payload: max_size - HEADER_LEN,
            total,
            set: hex::encode(random),
            volumes,
            current: None,
            next: 1,
            sums: Vec::new(),
            written: 0,
        })
    }

    pub fn volumes(&self) -> u32 {
        self.volumes
    }

    fn close_current(&mut self) -> io::Result<()> {
        if let Some((file, hasher, _)) = self.current.take() {
            file.sync_all()?;
            self.sums.push((self.next - 1, hex::encode(hasher.finalize())));
        }
        Ok(())
    }

    fn open_next(&mut self) -> io::Result<()> {
        self.close_current()?;
        let n = self.next;
        if n > self.volumes {
            return Err(io::Error::other(format!("the bundle is longer than the {} bytes announced", self.total)));
        }
        let bytes = (self.total - self.written).min(self.max_payload);
        let header = Header {
            format: FORMAT,
            set: self.set.clone(),
            volume: n,
            volumes: self.volumes,
            bytes,
            total: self.total,
        };
        let block = header.encode();
        let mut file = File::create(self.partial.join(format!("{n:03}")))?;
        file.write_all(&block)?;
        let mut hasher = Sha256::new();
        hasher.update(&block);
        self.current = Some((file, hasher, bytes));
        self.next += 1;
        Ok(())
    }

    /// Closes the last volume, checks that exactly the announced length was written, moves the
    /// volumes into place and writes their `.sha256` files. Returns the volumes' paths.
    pub fn finish(mut self) -> io::Result<Vec<PathBuf>> {
        if self.written != self.total || self.current.as_ref().is_some_and(|(_, _, left)| *left > 0) {
            return Err(io::Error::other(format!("wrote {} bytes of the {} announced", self.written, self.total)));
        }
        if self.current.is_none() {
            self.open_next()?;
        }
        self.close_current()?;
        let mut paths = Vec::new();
        for (n, sum) in std::mem::take(&mut self.sums) {
            let path = volume_path(&self.out, n);
            std::fs::rename(self.partial.join(format!("{n:03}")), &path)?;
            let mut sums = path.clone().into_os_string();
            sums.push(".sha256");
            std::fs::write(&sums, format!("{sum}  {}\n", file_name(&path)))?;
            paths.push(path);
        }
        let _ = std::fs::remove_dir_all(&self.partial);
        Ok(paths)
    }
}

impl Write for VolumeWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.current.as_ref().is_none_or(|(_, _, left)| *left == 0) {
            self.open_next()?;
        }
        let (file, hasher, left) = self.current.as_mut().expect("a volume is open");
        let n = (*left).min(buf.len() as u64) as usize;
        file.write_all(&buf[..n])?;
        hasher.update(&buf[..n]);
        *left -= n as u64;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.current {
            Some((file, _, _)) => file.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for VolumeWriter {
    fn drop(&mut self) {
        // Finished, the directory is already gone; unfinished, nothing of it is kept.
        let _ = std::fs::remove_dir_all(&self.partial);
    }
}

/// Where a bundle is read from: one file, or a complete set of volumes in order.
#[derive(Debug, Clone)]
pub enum Source {
    File(PathBuf),
    Volumes(Vec<(PathBuf, Header)>),
}

/// Why a bundle's files cannot be read as one bundle: one line, naming the file.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SourceError(pub String);

fn read_header(path: &Path) -> Result<Option<Header>, SourceError> {
    let mut file = File::open(path).map_err(|e| SourceError(format!("{}: {e}", path.display())))?;
    let mut block = Vec::with_capacity(HEADER_LEN as usize);
    (&mut file)
        .take(HEADER_LEN)
        .read_to_end(&mut block)
        .map_err(|e| SourceError(format!("{}: {e}", path.display())))?;
    match Header::decode(&block) {
        None => Ok(None),
        Some(Ok(header)) => {
            let len = file.metadata().map_err(|e| SourceError(format!("{}: {e}", path.display())))?.len();
            if len != HEADER_LEN + header.bytes {
                return Err(SourceError(format!(
                    "{}: volume {} is {len} bytes long, its header says {} (truncated or altered)",
                    path.display(),
                    header.volume,
                    HEADER_LEN + header.bytes
                )));
            }
            Ok(Some(header))
        }
        Some(Err(reason)) => Err(SourceError(format!("{}: {reason}", path.display()))),
    }
}

impl Source {
    /// What `paths` name: one bundle file, the volumes of one export in any order, or a
    /// directory holding exactly the volumes of one export (and their `.sha256` files).
    pub fn open(paths: &[PathBuf]) -> Result<Source, SourceError> {
        let files: Vec<PathBuf> = match paths {
            [] => return Err(SourceError("no bundle named".into())),
            [dir] if dir.is_dir() => {
                let entries = std::fs::read_dir(dir).map_err(|e| SourceError(format!("{}: {e}", dir.display())))?;
                let mut files = Vec::new();
                for entry in entries {
                    let path = entry.map_err(|e| SourceError(format!("{}: {e}", dir.display())))?.path();
                    let name = file_name(&path);
                    if name.starts_with('.') || name.ends_with(".sha256") {
                        continue;
                    }
                    files.push(path);
                }
                if files.is_empty() {
                    return Err(SourceError(format!("{}: no volumes in this directory", dir.display())));
                }
                files.sort();
                files
            }
            paths => paths.to_vec(),
        };
        let mut volumes = Vec::new();
        for path in &files {
            match read_header(path)? {
                Some(header) => volumes.push((path.clone(), header)),
                None if files.len() == 1 => return Ok(Source::File(path.clone())),
                None => {
                    return Err(SourceError(format!("{}: not a volume of a hexmirror bundle", path.display())));
                }
            }
        }
        let (first_path, first) = volumes[0].clone();
        let mut by_number: BTreeMap<u32, (PathBuf, Header)> = BTreeMap::new();
        for (path, header) in volumes {
            if header.set != first.set || header.volumes != first.volumes || header.total != first.total {
                return Err(SourceError(format!(
                    "{} is from another export than {} (set {}, not {}): volumes of different exports never mix",
                    path.display(),
                    first_path.display(),
                    header.set,
                    first.set
                )));
            }
            if header.volume == 0 || header.volume > header.volumes {
                return Err(SourceError(format!(
                    "{}: volume {} of a set of {}",
                    path.display(),
                    header.volume,
                    header.volumes
                )));
            }
            if let Some((other, _)) = by_number.get(&header.volume) {
                return Err(SourceError(format!(
                    "{} and {} are both volume {} of {}: give each volume once",
                    other.display(),
                    path.display(),
                    header.volume,
                    header.volumes
                )));
            }
            by_number.insert(header.volume, (path, header));
        }
        let missing: Vec<String> =
            (1..=first.volumes).filter(|n| !by_number.contains_key(n)).map(|n| format!("{n:03}")).collect();
        if !missing.is_empty() {
            let what = if missing.len() == 1 { "volume" } else { "volumes" };
            return Err(SourceError(format!(
                "{what} {} of {} missing (the set of {}): give all volumes, or their directory",
                missing.join(", "),
                first.volumes,
                first_path.display()
            )));
        }
        let sum: u64 = by_number.values().map(|(_, h)| h.bytes).sum();
        if sum != first.total {
            return Err(SourceError(format!(
                "the volumes of {} carry {sum} bytes, their headers announce {}",
                first_path.display(),
                first.total
            )));
        }
        Ok(Source::Volumes(by_number.into_values().collect()))
    }

    /// Opens the bundle's byte stream from its start (again, for every call).
    pub fn reader(&self) -> io::Result<Box<dyn Read + Send>> {
        match self {
            Source::File(path) => Ok(Box::new(io::BufReader::new(File::open(path)?))),
            Source::Volumes(volumes) => Ok(Box::new(io::BufReader::new(Joined {
                volumes: volumes.iter().map(|(p, h)| (p.clone(), h.bytes)).collect(),
                current: None,
                next: 0,
            }))),
        }
    }

    /// What to call the bundle in messages: its file, or its first volume and the count.
    pub fn describe(&self) -> String {
        match self {
            Source::File(path) => path.display().to_string(),
            Source::Volumes(volumes) => format!("{} (+{} more volumes)", volumes[0].0.display(), volumes.len() - 1),
        }
    }

    /// The bundle's length in bytes.
    pub fn len(&self) -> io::Result<u64> {
        match self {
            Source::File(path) => Ok(std::fs::metadata(path)?.len()),
            Source::Volumes(volumes) => Ok(volumes[0].1.total),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len().is_ok_and(|n| n == 0)
    }
}

/// The volumes' payloads, one after the other.
struct Joined {
    volumes: Vec<(PathBuf, u64)>,
    current: Option<io::Take<File>>,
    next: usize,
}

impl Read for Joined {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some(current) = &mut self.current {
                let n = current.read(buf)?;
                if n > 0 || buf.is_empty() {
                    return Ok(n);
                }
                if current.limit() > 0 {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "a volume ended early"));
                }
                self.current = None;
            }
            let Some((path, bytes)) = self.volumes.get(self.next) else { return Ok(0) };
            let mut file =
                File::open(path).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
            file.seek(SeekFrom::Start(HEADER_LEN))?;
            self.current = Some(file.take(*bytes));
            self.next += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_set(dir: &Path, data: &[u8], max: u64) -> Vec<PathBuf> {
        let out = dir.join("b.tar");
        let mut writer = VolumeWriter::create(&out, max, data.len() as u64).unwrap();
        for chunk in data.chunks(1000) {
            writer.write_all(chunk).unwrap();
        }
        writer.finish().unwrap()
    }

    fn read_all(source: &Source) -> Vec<u8> {
        let mut out = Vec::new();
        source.reader().unwrap().read_to_end(&mut out).unwrap();
        out
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn volumes_join_back_into_the_bundle_in_any_order_and_by_directory() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = data(20_000);
        let paths = write_set(dir.path(), &bytes, 4096);
        assert_eq!(paths.len(), count(20_000, 4096) as usize);
        assert_eq!(paths.len(), 6);
        for path in &paths {
            assert!(std::fs::metadata(path).unwrap().len() <= 4096);
        }
        let mut names: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| file_name(&e.unwrap().path())).collect();
        names.sort();
        assert_eq!(names.len(), 12, "volumes and their .sha256 files only: {names:?}");
        assert!(names.iter().all(|n| n.starts_with("b.tar.0")), "{names:?}");
        let mut reversed = paths.clone();
        reversed.reverse();
        assert_eq!(read_all(&Source::open(&reversed).unwrap()), bytes);
        assert_eq!(read_all(&Source::open(&[dir.path().to_path_buf()]).unwrap()), bytes);
        let sum = std::fs::read_to_string(format!("{}.sha256", paths[0].display())).unwrap();
        let expected = hex::encode(Sha256::digest(std::fs::read(&paths[0]).unwrap()));
        assert_eq!(sum, format!("{expected}  b.tar.001\n"));
    }

    #[test]
    fn a_missing_duplicated_truncated_or_foreign_volume_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let paths = write_set(dir.path(), &data(10_000), 4096);
        let err = Source::open(&[paths[0].clone(), paths[2].clone()]).unwrap_err().to_string();
        assert!(err.starts_with("volume 002 of 3 missing"), "{err}");
        let err = Source::open(&[paths[0].clone()]).unwrap_err().to_string();
        assert!(err.contains("volumes 002, 003 of 3 missing"), "{err}");

        let copy = dir.path().join("copy");
        std::fs::copy(&paths[1], &copy).unwrap();
        let err = Source::open(&[paths[0].clone(), paths[1].clone(), copy.clone(), paths[2].clone()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("are both volume 2 of 3"), "{err}");
        // The copy sits in the directory too: an extra file is refused.
        let err = Source::open(&[dir.path().to_path_buf()]).unwrap_err().to_string();
        assert!(err.contains("are both volume 2"), "{err}");
        std::fs::remove_file(&copy).unwrap();

        let other = tempfile::tempdir().unwrap();
        let foreign = write_set(other.path(), &data(10_000), 4096);
        let err = Source::open(&[paths[0].clone(), foreign[1].clone(), paths[2].clone()]).unwrap_err().to_string();
        assert!(err.contains("is from another export"), "{err}");

        let stray = dir.path().join("notes.txt");
        std::fs::write(&stray, b"hello").unwrap();
        let err = Source::open(&[dir.path().to_path_buf()]).unwrap_err().to_string();
        assert!(err.contains("notes.txt: not a volume"), "{err}");
        std::fs::remove_file(&stray).unwrap();

        let file = std::fs::OpenOptions::new().write(true).open(&paths[1]).unwrap();
        file.set_len(3000).unwrap();
        let err = Source::open(&[dir.path().to_path_buf()]).unwrap_err().to_string();
        assert!(err.contains("b.tar.002: volume 2 is 3000 bytes long"), "{err}");
    }

    #[test]
    fn an_unknown_volume_format_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let paths = write_set(dir.path(), &data(5000), 4096);
        let text = std::fs::read(&paths[0]).unwrap();
        let altered = String::from_utf8_lossy(&text).replacen("\"format\":2", "\"format\":9", 1);
        std::fs::write(&paths[0], altered.as_bytes()).unwrap();
        let err = Source::open(&paths).unwrap_err().to_string();
        assert!(err.contains("unsupported volume format 9 (this hexmirror reads format 2)"), "{err}");
    }

    #[test]
    fn a_writer_refuses_an_existing_set_and_leaves_nothing_when_dropped_unfinished() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("b.tar");
        let mut writer = VolumeWriter::create(&out, 4096, 10_000).unwrap();
        writer.write_all(&data(5000)).unwrap();
        drop(writer);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "an unfinished export leaves nothing");
        write_set(dir.path(), &data(100), 4096);
        let err = VolumeWriter::create(&out, 4096, 100).err().unwrap().to_string();
        assert!(err.contains("b.tar.001 already exists"), "{err}");
        let err = VolumeWriter::create(&dir.path().join("c"), 100, 100).err().unwrap().to_string();
        assert!(err.contains("below the smallest volume"), "{err}");
        let mut short = VolumeWriter::create(&dir.path().join("d"), 4096, 100).unwrap();
        short.write_all(&data(50)).unwrap();
        assert!(short.finish().unwrap_err().to_string().contains("wrote 50 bytes of the 100 announced"));
    }
}
