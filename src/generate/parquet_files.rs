//! The generator's Parquet output: numbered files of the events schema,
//! each written under a hidden name and renamed when complete.

use std::fs::File;
use std::path::{Path, PathBuf};

use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::WriterProperties;

use crate::complete_files::{publish, temporary_path};
use crate::error::{Result, SessionqlError};
use crate::event_rows::{EventBatchBuilder, EventRow};
use crate::events_schema::events_schema;

/// Writes rows to numbered Parquet files of at most `rows_per_file` rows.
pub struct ParquetFiles {
    directory: PathBuf,
    rows_per_file: usize,
    batch: EventBatchBuilder,
    current: Option<(ArrowWriter<File>, PathBuf, PathBuf, usize)>,
    written: Vec<PathBuf>,
}

impl ParquetFiles {
    /// Files of at most `rows_per_file` rows in `directory`.
    pub fn new(directory: &Path, rows_per_file: usize) -> Self {
        Self {
            directory: directory.to_path_buf(),
            rows_per_file: rows_per_file.max(1),
            batch: EventBatchBuilder::default(),
            current: None,
            written: Vec::new(),
        }
    }

    /// Adds one event.
    pub fn push(&mut self, row: EventRow) -> Result<()> {
        self.batch.push(row);
        let in_file = self.current.as_ref().map_or(0, |(_, _, _, rows)| *rows) + self.batch.len();
        if self.batch.len() >= 65_536 || in_file >= self.rows_per_file {
            self.flush_batch()?;
        }
        if self
            .current
            .as_ref()
            .is_some_and(|(_, _, _, rows)| *rows >= self.rows_per_file)
        {
            self.finish_file()?;
        }
        Ok(())
    }

    fn flush_batch(&mut self) -> Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = self.batch.finish()?;
        if self.current.is_none() {
            let name = format!("events-{:04}.parquet", self.written.len());
            let final_path = self.directory.join(&name);
            let temporary_path = temporary_path(&self.directory, &name);
            let file = File::create(&temporary_path).map_err(|source| SessionqlError::Write {
                path: temporary_path.clone(),
                source,
            })?;
            let properties = WriterProperties::builder()
                .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).unwrap_or_default()))
                .set_max_row_group_row_count(Some(256 * 1024))
                .build();
            let writer = ArrowWriter::try_new(file, events_schema(), Some(properties))
                .map_err(|error| SessionqlError::Query(error.into()))?;
            self.current = Some((writer, temporary_path, final_path, 0));
        }
        if let Some((writer, _, _, rows)) = &mut self.current {
            *rows += batch.num_rows();
            writer
                .write(&batch)
                .map_err(|error| SessionqlError::Query(error.into()))?;
        }
        Ok(())
    }

    fn finish_file(&mut self) -> Result<()> {
        if let Some((writer, temporary_path, final_path, _)) = self.current.take() {
            writer
                .close()
                .map_err(|error| SessionqlError::Query(error.into()))?;
            publish(&temporary_path, &final_path)?;
            self.written.push(final_path);
        }
        Ok(())
    }

    /// Finishes the last file; returns every file written.
    pub fn close(mut self) -> Result<Vec<PathBuf>> {
        self.flush_batch()?;
        self.finish_file()?;
        Ok(self.written)
    }
}
