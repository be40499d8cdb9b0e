//! Output files written whole or not at all: into a temporary file beside the
//! target (so the rename stays on one file system), flushed to disk, then
//! renamed over it. An interrupted or failed write leaves no partial file.

use std::error::Error as StdError;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use crate::error::{file_err, Result};

/// Writes `path` through `write`; on failure removes the temporary file and
/// reports "`failure`: cause" against `path`.
pub(crate) fn write_atomically(
    path: &Path,
    failure: &str,
    write: impl FnOnce(&mut BufWriter<File>) -> std::result::Result<(), Box<dyn StdError>>,
) -> Result<()> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let run = || -> std::result::Result<(), Box<dyn StdError>> {
        let mut out = BufWriter::new(File::create(&tmp)?);
        write(&mut out)?;
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    };
    run().or_else(|e| {
        let _ = std::fs::remove_file(&tmp);
        file_err(path, format!("{failure}: {e}"))
    })
}

/// Writes `text` to `path` through a temporary sibling renamed into place, so a
/// failure never leaves a half-written file (metadata files beside images).
pub fn write_text_atomically(path: &Path, text: &str) -> Result<()> {
    write_atomically(path, "cannot write", |out| {
        out.write_all(text.as_bytes())?;
        Ok(())
    })
}
