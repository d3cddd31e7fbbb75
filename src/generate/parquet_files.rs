//! The generator's Parquet output: numbered files of the events schema,
//! each written under a hidden name and renamed when complete.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::{SortColumn, lexsort_to_indices, take_record_batch};
use datafusion::error::DataFusionError;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::WriterProperties;

use sessionql_udfs::blank_to_null::blank_to_null;

use crate::complete_files::{publish, temporary_path};
use crate::error::{Result, SessionqlError};
use crate::event_rows::{EventBatchBuilder, EventRow};
use crate::events_schema::stored_events_schema;

/// Rows per row group of the generated files.
const ROWS_PER_ROW_GROUP: usize = 256 * 1024;

/// Writes rows to numbered Parquet files of at most `rows_per_file` rows.
///
/// Events with an SDK session id and events without one go to separate row
/// groups, as `ingest` puts them in separate files: the sessions view reads
/// the two kinds in two halves, and Parquet statistics on `session_id` let
/// each half skip the other's row groups. Row groups follow one another in
/// arrival order (late events land in later ones); inside each, rows are
/// sorted by (`distinct_id`, `timestamp`), the order `ingest` writes, so a
/// session's events are neighbours.
pub struct ParquetFiles {
    directory: PathBuf,
    rows_per_file: usize,
    /// Rows waiting for their row group: `[with a session id, without]`.
    pending: [EventBatchBuilder; 2],
    current: Option<(ArrowWriter<File>, PathBuf, PathBuf, usize)>,
    written: Vec<PathBuf>,
}

impl ParquetFiles {
    /// Files of at most `rows_per_file` rows in `directory`.
    pub fn new(directory: &Path, rows_per_file: usize) -> Self {
        Self {
            directory: directory.to_path_buf(),
            rows_per_file: rows_per_file.max(1),
            pending: Default::default(),
            current: None,
            written: Vec::new(),
        }
    }

    /// Adds one event.
    pub fn push(&mut self, row: EventRow) -> Result<()> {
        let has_session_id = row.optional[0]
            .as_deref()
            .is_some_and(|id| blank_to_null(id).is_some());
        let kind = usize::from(!has_session_id);
        self.pending[kind].push(row);
        if self.pending[kind].len() >= ROWS_PER_ROW_GROUP {
            self.write_row_group(kind)?;
        }
        let in_file = self.current.as_ref().map_or(0, |(_, _, _, rows)| *rows)
            + self
                .pending
                .iter()
                .map(EventBatchBuilder::len)
                .sum::<usize>();
        if in_file >= self.rows_per_file {
            self.write_row_group(0)?;
            self.write_row_group(1)?;
            self.finish_file()?;
        }
        Ok(())
    }

    /// Writes the waiting rows of one kind as a row group of their own.
    fn write_row_group(&mut self, kind: usize) -> Result<()> {
        if self.pending[kind].is_empty() {
            return Ok(());
        }
        let batch = sorted_for_sessions(&self.pending[kind].finish()?)?;
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
                .set_max_row_group_row_count(Some(ROWS_PER_ROW_GROUP))
                .build();
            let writer = ArrowWriter::try_new(file, stored_events_schema(), Some(properties))
                .map_err(|error| SessionqlError::Query(error.into()))?;
            self.current = Some((writer, temporary_path, final_path, 0));
        }
        if let Some((writer, _, _, rows)) = &mut self.current {
            *rows += batch.num_rows();
            writer
                .write(&batch)
                .and_then(|()| writer.flush())
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
        self.write_row_group(0)?;
        self.write_row_group(1)?;
        self.finish_file()?;
        Ok(self.written)
    }
}

/// The rows of a row group ordered by (`distinct_id`, `timestamp`).
fn sorted_for_sessions(batch: &RecordBatch) -> Result<RecordBatch> {
    let key = ["distinct_id", "timestamp"]
        .into_iter()
        .map(|name| {
            batch
                .column_by_name(name)
                .map(|values| SortColumn {
                    values: Arc::clone(values),
                    options: None,
                })
                .ok_or_else(|| {
                    SessionqlError::Query(DataFusionError::Internal(format!(
                        "generated rows lack the {name} column"
                    )))
                })
        })
        .collect::<Result<Vec<_>>>()?;
    let order =
        lexsort_to_indices(&key, None).map_err(|error| SessionqlError::Query(error.into()))?;
    take_record_batch(batch, &order).map_err(|error| SessionqlError::Query(error.into()))
}
