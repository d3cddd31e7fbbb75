//! The quarantine file: every input line (or batch item) that could not be
//! ingested, with where it came from and why, as NDJSON, so nothing read is
//! lost and a fixed line can be ingested again.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::error::{Result, SessionqlError};

/// Writes rejected input lines; the file is created at the first one.
pub struct Quarantine {
    path: PathBuf,
    writer: Option<BufWriter<File>>,
    count: u64,
}

impl Quarantine {
    /// A quarantine that will write to `path` if anything is rejected.
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            writer: None,
            count: 0,
        }
    }

    /// Records one rejected line (`item`: its position in a batch, if any).
    pub fn add(
        &mut self,
        file: &Path,
        line: u64,
        item: Option<usize>,
        reason: &str,
        raw: &str,
    ) -> Result<()> {
        if self.writer.is_none() {
            if let Some(parent) = self.path.parent() {
                std::fs::create_dir_all(parent).map_err(|source| SessionqlError::Write {
                    path: parent.to_path_buf(),
                    source,
                })?;
            }
            let file = File::create(&self.path).map_err(|source| SessionqlError::Write {
                path: self.path.clone(),
                source,
            })?;
            self.writer = Some(BufWriter::new(file));
        }
        let mut record = json!({
            "file": file.display().to_string(),
            "line": line,
            "reason": reason,
            "raw": raw,
        });
        if let (Some(item), Some(object)) = (item, record.as_object_mut()) {
            object.insert("batch_item".into(), json!(item));
        }
        if let Some(writer) = &mut self.writer {
            writeln!(writer, "{record}").map_err(|source| SessionqlError::Write {
                path: self.path.clone(),
                source,
            })?;
        }
        self.count += 1;
        Ok(())
    }

    /// Flushes the file; returns how many lines were rejected and where they are.
    pub fn finish(self) -> Result<(u64, Option<PathBuf>)> {
        match self.writer {
            Some(mut writer) => {
                writer.flush().map_err(|source| SessionqlError::Write {
                    path: self.path.clone(),
                    source,
                })?;
                Ok((self.count, Some(self.path)))
            }
            None => Ok((0, None)),
        }
    }
}
