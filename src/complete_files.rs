//! Files that appear complete or not at all: written under a hidden temporary
//! name in their final directory, then renamed into place (atomic on one file
//! system). Readers skip hidden names, so a query never reads a file that is
//! still being written or was cut off by a crash.

use std::path::{Path, PathBuf};

use crate::error::{Result, SessionqlError};

/// Where `name` is written in `directory` until it is complete.
pub fn temporary_path(directory: &Path, name: &str) -> PathBuf {
    directory.join(format!(".{name}.tmp"))
}

/// True for a name [`temporary_path`] makes (a leftover of an interrupted write).
pub fn is_temporary_name(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(".tmp")
}

/// Moves a complete temporary file to its final path.
pub fn publish(temporary: &Path, target: &Path) -> Result<()> {
    std::fs::rename(temporary, target).map_err(|source| SessionqlError::Write {
        path: target.to_path_buf(),
        source,
    })
}
