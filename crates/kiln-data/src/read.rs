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
