//! Ingested events, bucketed by UTC date and written as sorted Parquet.
//!
//! While input is read, each date's events wait in memory; past a memory
//! budget they go to a spill file per date (an Arrow IPC stream in a hidden
//! run directory), so memory stays bounded however large the input. At the
//! end each date is read back alone (a thread per core, a date each):
//! duplicates of events already stored (in this run or in the date's
//! existing files) are dropped, the rest sorted by (`distinct_id`,
//! `timestamp`, `uuid`), split into events with and without an SDK session
//! id, and written to `date=YYYY-MM-DD/part-<run>-<n>.parquet`. Each file is
//! written under a hidden temporary name and renamed when complete, so a
//! reader never sees a partial file.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};

use std::sync::Mutex;

use chrono::{DateTime, NaiveDate};
use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch, UInt32Array};
use datafusion::arrow::compute::{
    SortColumn, concat, interleave_record_batch, lexsort_to_indices, take_record_batch,
};
use datafusion::arrow::datatypes::TimestampMicrosecondType;
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::common::HashSet;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::arrow::ProjectionMask;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::metadata::SortingColumn;
use datafusion::parquet::file::properties::WriterProperties;
use sessionql_udfs::blank_to_null::blank_to_null;
use sessionql_udfs::stable_hash::stable_hash64;

use crate::complete_files::{publish, temporary_path};
use crate::error::{Result, SessionqlError};
use crate::events_schema::stored_events_schema;

/// Rows per Parquet row group: small enough for time pruning to skip some.
const ROWS_PER_ROW_GROUP: usize = 128 * 1024;

/// Column positions in the events schema of the sort key.
const UUID_COLUMN: usize = 0;
const DISTINCT_ID_COLUMN: usize = 2;
const TIMESTAMP_COLUMN: usize = 3;
const SESSION_ID_COLUMN: usize = 4;

/// The sort order every ingested file declares in its footer.
pub fn declared_sorting_columns() -> Vec<SortingColumn> {
    [DISTINCT_ID_COLUMN, TIMESTAMP_COLUMN]
        .into_iter()
        .map(|column| SortingColumn {
            column_idx: column as i32,
            descending: false,
            nulls_first: false,
        })
        .collect()
}

/// The directory of one date's files under the output directory.
pub fn date_directory(out: &Path, date: NaiveDate) -> PathBuf {
    out.join(format!("date={}", date.format("%Y-%m-%d")))
}

/// One date's events while input is still being read: batches waiting to be
/// written together, and the spill file they go to.
#[derive(Default)]
struct DateSpill {
    pending: Vec<RecordBatch>,
    pending_rows: usize,
    writer: Option<StreamWriter<BufWriter<File>>>,
    path: PathBuf,
}

/// What writing the dates produced.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WrittenDates {
    /// Events written.
    pub events: u64,
    /// Events left out as already stored.
    pub duplicates: u64,
    /// The files written, in date order.
    pub files: Vec<PathBuf>,
}

impl WrittenDates {
    fn add(&mut self, other: WrittenDates) {
        self.events += other.events;
        self.duplicates += other.duplicates;
        self.files.extend(other.files);
    }
}

/// Buckets events by date and writes each date's sorted files at the end.
pub struct DatePartitions {
    out: PathBuf,
    run_id: String,
    spill_directory: PathBuf,
    rows_per_file: usize,
    dates: BTreeMap<i64, DateSpill>,
    buffered_bytes: usize,
    memory_budget: usize,
}

/// Microseconds in a day: event times divide into UTC dates by it.
const DAY_US: i64 = 86_400_000_000;

impl DatePartitions {
    /// Prepares a run writing into `out`; spills go to a hidden directory in it.
    /// `memory_budget` bytes of events wait in memory before spilling.
    pub fn new(
        out: &Path,
        run_id: &str,
        rows_per_file: usize,
        memory_budget: usize,
    ) -> Result<Self> {
        let spill_directory = out.join(format!(".ingest-{run_id}"));
        std::fs::create_dir_all(&spill_directory).map_err(|source| SessionqlError::Write {
            path: spill_directory.clone(),
            source,
        })?;
        Ok(Self {
            out: out.to_path_buf(),
            run_id: run_id.to_string(),
            spill_directory,
            rows_per_file: rows_per_file.max(1),
            dates: BTreeMap::new(),
            buffered_bytes: 0,
            memory_budget,
        })
    }

    /// Adds a batch of events (of the events schema), each to its date.
    pub fn push_batch(&mut self, batch: RecordBatch) -> Result<()> {
        let times = batch
            .column(TIMESTAMP_COLUMN)
            .as_primitive::<TimestampMicrosecondType>();
        let days: Vec<i64> = times
            .values()
            .iter()
            .map(|time| time.div_euclid(DAY_US))
            .collect();
        let Some(first_day) = days.first().copied() else {
            return Ok(());
        };
        if days.iter().all(|day| *day == first_day) {
            return self.push_to_day(first_day, batch);
        }
        let mut rows_by_day: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
        for (row, day) in days.iter().enumerate() {
            rows_by_day.entry(*day).or_default().push(row as u32);
        }
        for (day, rows) in rows_by_day {
            let part = take_record_batch(&batch, &UInt32Array::from(rows))?;
            self.push_to_day(day, part)?;
        }
        Ok(())
    }

    fn push_to_day(&mut self, day: i64, batch: RecordBatch) -> Result<()> {
        self.buffered_bytes += batch.get_array_memory_size();
        let spill = self.dates.entry(day).or_default();
        spill.pending_rows += batch.num_rows();
        spill.pending.push(batch);
        if self.buffered_bytes > self.memory_budget {
            // Over budget: every date's waiting rows go to its spill file.
            for (day, spill) in &mut self.dates {
                let path = self.spill_directory.join(format!("{day}.arrows"));
                flush_spill(spill, path)?;
            }
            self.buffered_bytes = 0;
        }
        Ok(())
    }

    /// Writes every date's new events, `threads` dates at a time, and removes
    /// the spill directory.
    pub fn finish(mut self, threads: usize) -> Result<WrittenDates> {
        let dates: Vec<(i64, DateSpill)> = std::mem::take(&mut self.dates).into_iter().collect();
        let queue = Mutex::new(dates.into_iter());
        let results: Mutex<Vec<(i64, Result<WrittenDates>)>> = Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            for _ in 0..threads.max(1) {
                scope.spawn(|| {
                    loop {
                        let next = match queue.lock() {
                            Ok(mut queue) => queue.next(),
                            Err(_) => None,
                        };
                        let Some((day, mut spill)) = next else {
                            return;
                        };
                        let result = self.write_day(day, &mut spill);
                        let _ = std::fs::remove_file(&spill.path);
                        if let Ok(mut results) = results.lock() {
                            results.push((day, result));
                        }
                    }
                });
            }
        });
        let _ = std::fs::remove_dir_all(&self.spill_directory);
        let mut results = results
            .into_inner()
            .map_err(|_| SessionqlError::Invalid("a date writer stopped unexpectedly".into()))?;
        results.sort_by_key(|(day, _)| *day);
        let mut written = WrittenDates::default();
        for (_, result) in results {
            written.add(result?);
        }
        Ok(written)
    }

    fn write_day(&self, day: i64, spill: &mut DateSpill) -> Result<WrittenDates> {
        let date = DateTime::from_timestamp_micros(day * DAY_US)
            .map(|time| time.date_naive())
            .unwrap_or_default();
        let batches = read_spill(spill)?;
        let mut written = WrittenDates::default();
        if batches.is_empty() {
            return Ok(written);
        }
        // Only the key columns are joined into one array each; the rows
        // themselves are copied once, already in order, by `interleave`
        // (joining all columns and then taking them in order copied the
        // large `properties` text twice).
        let key_column = |column: usize| -> Result<ArrayRef> {
            let parts: Vec<&dyn Array> = batches
                .iter()
                .map(|batch| batch.column(column).as_ref())
                .collect();
            Ok(concat(&parts)?)
        };
        let uuid_array = key_column(UUID_COLUMN)?;
        let directory = date_directory(&self.out, date);
        let mut stored = stored_uuid_hashes(&directory)?;
        let uuids = uuid_array.as_string::<i32>();
        let keep: Vec<bool> = (0..uuids.len())
            .map(|row| stored.insert(uuid_hash(uuids.value(row))))
            .collect();
        let sort_key: Vec<SortColumn> = [
            key_column(DISTINCT_ID_COLUMN)?,
            key_column(TIMESTAMP_COLUMN)?,
            uuid_array,
        ]
        .into_iter()
        .map(|values| SortColumn {
            values,
            options: None,
        })
        .collect();
        let order = lexsort_to_indices(&sort_key, None)?;
        drop(sort_key);
        // Where each row of the joined key columns lives: (batch, row in it).
        let row_places: Vec<(usize, usize)> = batches
            .iter()
            .enumerate()
            .flat_map(|(index, batch)| (0..batch.num_rows()).map(move |row| (index, row)))
            .collect();
        let kept_in_order: Vec<(usize, usize)> = order
            .values()
            .iter()
            .map(|row| *row as usize)
            .filter(|row| keep[*row])
            .map(|row| row_places[row])
            .collect();
        written.duplicates += (row_places.len() - kept_in_order.len()) as u64;
        drop(row_places);
        // Events with a session id from the SDK and events without one go
        // to separate files (each sorted): the sessions view reads them in
        // two halves, and Parquet statistics then let each half skip the
        // other's files instead of decoding and filtering them away.
        let (with_session_id, without_session_id): (Vec<_>, Vec<_>) =
            kept_in_order.into_iter().partition(|(batch, row)| {
                let session_ids = batches[*batch].column(SESSION_ID_COLUMN).as_string::<i32>();
                session_ids.is_valid(*row) && blank_to_null(session_ids.value(*row)).is_some()
            });
        let batch_refs: Vec<&RecordBatch> = batches.iter().collect();
        for rows in [with_session_id, without_session_id] {
            if rows.is_empty() {
                continue;
            }
            let sorted = interleave_record_batch(&batch_refs, &rows)?;
            drop(rows);
            self.write_files(&sorted, &directory, &mut written)?;
        }
        Ok(written)
    }

    /// Writes sorted events of one date as files of at most `rows_per_file`.
    fn write_files(
        &self,
        sorted: &RecordBatch,
        directory: &Path,
        written: &mut WrittenDates,
    ) -> Result<()> {
        std::fs::create_dir_all(directory).map_err(|source| SessionqlError::Write {
            path: directory.to_path_buf(),
            source,
        })?;
        let mut offset = 0;
        while offset < sorted.num_rows() {
            let length = self.rows_per_file.min(sorted.num_rows() - offset);
            let name = format!("part-{}-{:04}.parquet", self.run_id, written.files.len());
            write_parquet_atomically(&sorted.slice(offset, length), directory, &name)?;
            written.events += length as u64;
            written.files.push(directory.join(name));
            offset += length;
        }
        Ok(())
    }
}

fn flush_spill(spill: &mut DateSpill, path: PathBuf) -> Result<()> {
    if spill.pending.is_empty() {
        return Ok(());
    }
    let pending = std::mem::take(&mut spill.pending);
    spill.pending_rows = 0;
    if spill.writer.is_none() {
        let file = File::create(&path).map_err(|source| SessionqlError::Write {
            path: path.clone(),
            source,
        })?;
        spill.writer = Some(StreamWriter::try_new(
            BufWriter::new(file),
            &stored_events_schema(),
        )?);
        spill.path = path;
    }
    if let Some(writer) = &mut spill.writer {
        // Batch by batch: joining them first would copy every row once more.
        for batch in &pending {
            writer.write(batch)?;
        }
    }
    Ok(())
}

/// A date's batches in input order: those read back from its spill file,
/// then those still in memory.
fn read_spill(spill: &mut DateSpill) -> Result<Vec<RecordBatch>> {
    let pending = std::mem::take(&mut spill.pending);
    let Some(mut writer) = spill.writer.take() else {
        return Ok(pending);
    };
    writer.finish()?;
    drop(writer);
    let file = File::open(&spill.path).map_err(|source| SessionqlError::EventsPath {
        path: spill.path.clone(),
        source,
    })?;
    let reader = StreamReader::try_new(BufReader::new(file), None)?;
    let mut batches = reader.collect::<std::result::Result<Vec<_>, _>>()?;
    batches.extend(pending);
    Ok(batches)
}

/// Hashes of the uuids already stored in a date's directory. The set is
/// DataFusion's (foldhash): its keys are hashes already, and the standard
/// library's SipHash of them was 1% of ingest's instructions.
fn stored_uuid_hashes(directory: &Path) -> Result<HashSet<(u64, u64)>> {
    let mut hashes = HashSet::new();
    let Ok(entries) = std::fs::read_dir(directory) else {
        return Ok(hashes);
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let visible_parquet = path
            .extension()
            .is_some_and(|extension| extension == "parquet")
            && !entry.file_name().to_string_lossy().starts_with('.');
        if !visible_parquet {
            continue;
        }
        let open_error = |message: String| SessionqlError::EventFile {
            file: path.clone(),
            message,
        };
        let file = File::open(&path).map_err(|error| open_error(error.to_string()))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(|error| open_error(format!("not a readable Parquet file: {error}")))?;
        let mask = ProjectionMask::columns(builder.parquet_schema(), ["uuid"]);
        let reader = builder
            .with_projection(mask)
            .build()
            .map_err(|error| open_error(error.to_string()))?;
        for batch in reader {
            let batch = batch?;
            let uuids = batch.column(0).as_string::<i32>();
            hashes.extend(uuids.iter().flatten().map(uuid_hash));
        }
    }
    Ok(hashes)
}

/// 128 bits of a uuid: equal uuids collide, distinct ones practically never.
fn uuid_hash(uuid: &str) -> (u64, u64) {
    (
        stable_hash64(11, uuid.as_bytes()),
        stable_hash64(12, uuid.as_bytes()),
    )
}

/// Writes `batch` to `directory/.name.tmp`, then renames it to `name`.
fn write_parquet_atomically(batch: &RecordBatch, directory: &Path, name: &str) -> Result<()> {
    let temporary = temporary_path(directory, name);
    let target = directory.join(name);
    let write_error = |message: String| SessionqlError::EventFile {
        file: temporary.clone(),
        message,
    };
    let file = File::create(&temporary).map_err(|source| SessionqlError::Write {
        path: temporary.clone(),
        source,
    })?;
    let properties = WriterProperties::builder()
        // zstd level 1: on the generator's events the files are as small as
        // at level 3 (45 MB for 1M events), and compression was a sixth of
        // ingest's time at level 3.
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(1).unwrap_or_default()))
        .set_max_row_group_row_count(Some(ROWS_PER_ROW_GROUP))
        .set_sorting_columns(Some(declared_sorting_columns()))
        .build();
    let mut writer = ArrowWriter::try_new(file, stored_events_schema(), Some(properties))
        .map_err(|error| write_error(error.to_string()))?;
    writer
        .write(batch)
        .map_err(|error| write_error(error.to_string()))?;
    let file = writer
        .into_inner()
        .map_err(|error| write_error(error.to_string()))?;
    file.sync_all().map_err(|source| SessionqlError::Write {
        path: temporary.clone(),
        source,
    })?;
    publish(&temporary, &target)
}
