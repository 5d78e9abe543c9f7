//! Reading a whole dataset file into memory, gunzipping it when needed.

use std::io::Read;
use std::path::Path;

use anyhow::{anyhow, Result};
use flate2::read::MultiGzDecoder;

/// The two bytes every gzip stream starts with.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Reads `path` into memory. Files starting with the gzip magic bytes are
/// decompressed, whatever their extension; other files are returned as they are.
pub(crate) fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path)
        .map_err(|e| anyhow!("cannot open dataset file {}: {e}", path.display()))?;
    if !raw.starts_with(&GZIP_MAGIC) {
        return Ok(raw);
    }
    let mut decoded = Vec::new();
    MultiGzDecoder::new(raw.as_slice())
        .read_to_end(&mut decoded)
        .map_err(|e| {
            anyhow!(
                "{}: corrupt gzip stream ({e}); the file is damaged, copy it again",
                path.display()
            )
        })?;
    Ok(decoded)
}

/// The first `limit` bytes of `path` (fewer if it is shorter), decompressed as [`read_bytes`]
/// does: enough to recognize a file's layout without reading all of it.
pub(crate) fn read_head(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let open_err = |e: std::io::Error| anyhow!("cannot open dataset file {}: {e}", path.display());
    let mut file = std::fs::File::open(path).map_err(open_err)?;
    let mut magic = Vec::new();
    (&mut file)
        .take(2)
        .read_to_end(&mut magic)
        .map_err(open_err)?;
    let mut head = Vec::new();
    let rest = magic.as_slice().chain(file);
    let read = if magic == GZIP_MAGIC {
        MultiGzDecoder::new(rest).take(limit).read_to_end(&mut head)
    } else {
        rest.take(limit).read_to_end(&mut head)
    };
    read.map_err(|e| {
        anyhow!(
            "{}: cannot read ({e}); if it is gzip-compressed, the file is damaged",
            path.display()
        )
    })?;
    Ok(head)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use flate2::Compression;
    use std::io::Write;

    /// Gzip-compresses `bytes`.
    pub(crate) fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    #[test]
    fn raw_and_gzip_files_read_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let content: Vec<u8> = (0..=255).cycle().take(5000).collect();
        let raw = dir.path().join("data.gz"); // extension deliberately misleading
        let packed = dir.path().join("data.bin");
        std::fs::write(&raw, &content).unwrap();
        std::fs::write(&packed, gzip(&content)).unwrap();
        assert_eq!(read_bytes(&raw).unwrap(), content);
        assert_eq!(read_bytes(&packed).unwrap(), content);
        assert_eq!(read_head(&raw, 300).unwrap(), &content[..300]);
        assert_eq!(read_head(&packed, 300).unwrap(), &content[..300]);
        assert_eq!(read_head(&raw, 9000).unwrap(), content);
    }

    #[test]
    fn missing_file_names_path_and_os_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.gz");
        let msg = read_bytes(&path).unwrap_err().to_string();
        assert!(msg.starts_with(&format!("cannot open dataset file {}: ", path.display())));
        assert!(msg.contains("os error"), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
    }

    #[test]
    fn corrupt_gzip_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broken.gz");
        let mut packed = gzip(&[7u8; 1000]);
        packed.truncate(packed.len() / 2);
        std::fs::write(&path, &packed).unwrap();
        let msg = read_bytes(&path).unwrap_err().to_string();
        assert!(
            msg.starts_with(&format!("{}: corrupt gzip stream", path.display())),
            "{msg}"
        );
        assert!(msg.ends_with("copy it again"), "{msg}");
    }
}
