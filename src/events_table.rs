//! Finding, checking and registering event files as the `events` table.
//!
//! Parquet is read lazily by DataFusion's listing table (the scalable path);
//! NDJSON and CSV are read line by line into memory, so that a malformed line is
//! reported with its file and line and the rest still load.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::TableProvider;
use datafusion::common::ScalarValue;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::datasource::{MemTable, ViewTable, provider_as_source};
use datafusion::logical_expr::{Expr, LogicalPlanBuilder, cast, col, lit};
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::parquet::file::metadata::ParquetMetaData;
use serde_json::Value;

use crate::error::{Result, SessionqlError};
use crate::event_rows::{EventBatchBuilder, event_from_csv, event_from_json};
use crate::events_schema::{REQUIRED_COLUMNS, events_schema, to_events_schema};

/// Rows per in-memory batch of NDJSON/CSV events.
const ROWS_PER_BATCH: usize = 8192;

/// The file formats the events table reads, chosen by file extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum EventFormat {
    /// `.parquet`
    Parquet,
    /// `.ndjson`, `.jsonl`, `.json`: one JSON event object per line
    NdJson,
    /// `.csv` with a header line
    Csv,
}

impl EventFormat {
    /// The format of a file, from its extension.
    pub fn of_path(path: &Path) -> Option<EventFormat> {
        let extension = path.extension()?.to_str()?.to_ascii_lowercase();
        match extension.as_str() {
            "parquet" => Some(EventFormat::Parquet),
            "ndjson" | "jsonl" | "json" => Some(EventFormat::NdJson),
            "csv" => Some(EventFormat::Csv),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            EventFormat::Parquet => "parquet",
            EventFormat::NdJson => "ndjson",
            EventFormat::Csv => "csv",
        }
    }
}

/// A line that could not be loaded, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedLine {
    /// The file.
    pub file: PathBuf,
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub reason: String,
}

impl std::fmt::Display for SkippedLine {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            formatter,
            "{}:{}: {}; line skipped",
            self.file.display(),
            self.line,
            self.reason
        )
    }
}

/// What registering the events found: files read, events loaded (for
/// row-wise formats; Parquet is read at query time) and lines skipped.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// The files that make up the `events` table.
    pub files: Vec<PathBuf>,
    /// Their format.
    pub format: Option<EventFormat>,
    /// Events loaded into memory (NDJSON and CSV only).
    pub loaded_events: usize,
    /// Lines that were reported and left out.
    pub skipped_lines: Vec<SkippedLine>,
}

/// Every event file at `path` (a file, or a directory searched recursively;
/// names starting with `.` or `_` are skipped, as Spark and DataFusion do).
pub fn find_event_files(path: &Path) -> Result<(EventFormat, Vec<PathBuf>)> {
    let metadata = std::fs::metadata(path).map_err(|source| SessionqlError::EventsPath {
        path: path.to_path_buf(),
        source,
    })?;
    let mut files = Vec::new();
    if metadata.is_dir() {
        collect_files(path, &mut files)?;
    } else {
        files.push(path.to_path_buf());
    }
    let mut typed: Vec<(EventFormat, PathBuf)> = files
        .into_iter()
        .filter_map(|file| EventFormat::of_path(&file).map(|format| (format, file)))
        .collect();
    typed.sort();
    let Some((format, _)) = typed.first() else {
        return Err(SessionqlError::NoEventFiles(path.to_path_buf()));
    };
    let format = *format;
    let mut formats: Vec<&str> = typed.iter().map(|(format, _)| format.name()).collect();
    formats.dedup();
    if formats.len() > 1 {
        return Err(SessionqlError::MixedFormats {
            path: path.to_path_buf(),
            formats: formats.join(", "),
        });
    }
    Ok((format, typed.into_iter().map(|(_, file)| file).collect()))
}

fn collect_files(directory: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
    let entries = std::fs::read_dir(directory).map_err(|source| SessionqlError::EventsPath {
        path: directory.to_path_buf(),
        source,
    })?;
    for entry in entries {
        let entry = entry.map_err(|source| SessionqlError::EventsPath {
            path: directory.to_path_buf(),
            source,
        })?;
        let path = entry.path();
        let hidden = entry
            .file_name()
            .to_str()
            .is_some_and(|name| name.starts_with('.') || name.starts_with('_'));
        if hidden {
            continue;
        }
        if path.is_dir() {
            collect_files(&path, files)?;
        } else {
            files.push(path);
        }
    }
    Ok(())
}

/// Builds the `events` table provider for the files at `path`.
pub fn events_table(
    path: &Path,
    target_partitions: usize,
) -> Result<(Arc<dyn TableProvider>, LoadReport)> {
    let (format, files) = find_event_files(path)?;
    let mut report = LoadReport {
        files: files.clone(),
        format: Some(format),
        ..LoadReport::default()
    };
    let table: Arc<dyn TableProvider> = match format {
        EventFormat::Parquet => {
            let mut all_sorted = true;
            for file in &files {
                all_sorted &= check_parquet_schema(file)?;
            }
            parquet_table(&files, all_sorted)?
        }
        EventFormat::NdJson | EventFormat::Csv => {
            let batches = load_rows(format, &files, &mut report)?;
            let partitions = split_into_partitions(batches, target_partitions.max(1));
            Arc::new(MemTable::try_new(events_schema(), partitions)?)
        }
    };
    Ok((table, report))
}

/// The Parquet listing table; `sorted` declares that every file is sorted by
/// (`distinct_id`, `timestamp`), as `sessionql ingest` writes them, so
/// DataFusion can skip sorting where the file groups allow it.
fn parquet_table(files: &[PathBuf], sorted: bool) -> Result<Arc<dyn TableProvider>> {
    let urls = files
        .iter()
        .map(|file| {
            let absolute =
                std::path::absolute(file).map_err(|source| SessionqlError::EventsPath {
                    path: file.clone(),
                    source,
                })?;
            Ok(ListingTableUrl::parse(absolute.to_string_lossy())?)
        })
        .collect::<Result<Vec<_>>>()?;
    parquet_listing(urls, sorted)
}

/// A listing table of the events schema over the Parquet files at `urls`
/// (files, or directories listed when a query is planned).
fn parquet_listing(urls: Vec<ListingTableUrl>, sorted: bool) -> Result<Arc<dyn TableProvider>> {
    let mut options =
        ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
    if sorted {
        options = options.with_file_sort_order(vec![vec![
            col("distinct_id").sort(true, false),
            col("timestamp").sort(true, false),
        ]]);
    }
    let config = ListingTableConfig::new_with_multi_paths(urls)
        .with_listing_options(options)
        .with_schema(events_schema());
    Ok(Arc::new(ListingTable::try_new(config)?))
}

/// The events table over every `.parquet` file under an object store URL
/// (`s3://bucket/events/`). Files are listed when a query is planned, by
/// whichever node plans it (the scheduler, on a cluster), not here.
#[cfg(feature = "distributed")]
pub fn parquet_table_at_url(url: &str) -> Result<Arc<dyn TableProvider>> {
    let directory = if url.ends_with('/') {
        url.to_string()
    } else {
        format!("{url}/")
    };
    parquet_listing(vec![ListingTableUrl::parse(&directory)?], false)
}

/// Rejects a Parquet file that lacks a required column or has a column of a
/// type the events schema cannot read, naming the file and the column.
/// Returns whether the file declares itself sorted by (`distinct_id`,
/// `timestamp`) in every row group.
fn check_parquet_schema(file: &Path) -> Result<bool> {
    let open_error = |message: String| SessionqlError::EventFile {
        file: file.to_path_buf(),
        message,
    };
    let handle = File::open(file).map_err(|error| open_error(error.to_string()))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(handle)
        .map_err(|error| open_error(format!("not a readable Parquet file: {error}")))?;
    let file_schema: &Schema = builder.schema();
    for column in REQUIRED_COLUMNS {
        if file_schema.field_with_name(column).is_err() {
            return Err(SessionqlError::MissingColumn {
                file: file.to_path_buf(),
                column: column.to_string(),
            });
        }
    }
    for expected in events_schema().fields() {
        let Ok(found) = file_schema.field_with_name(expected.name()) else {
            continue;
        };
        let readable = match expected.data_type() {
            DataType::Timestamp(_, _) => matches!(found.data_type(), DataType::Timestamp(_, _)),
            _ => matches!(
                found.data_type(),
                DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8
            ),
        };
        if !readable {
            return Err(SessionqlError::ColumnType {
                file: file.to_path_buf(),
                column: expected.name().clone(),
                found: found.data_type().to_string(),
                expected: expected.data_type().to_string(),
            });
        }
    }
    Ok(declares_session_order(builder.metadata()))
}

/// True when every row group says it is sorted by `distinct_id`, then
/// `timestamp`, ascending (further sort columns do not matter).
fn declares_session_order(metadata: &ParquetMetaData) -> bool {
    let columns = metadata.file_metadata().schema_descr();
    let row_groups = metadata.row_groups();
    !row_groups.is_empty()
        && row_groups.iter().all(|row_group| {
            let Some(sorting) = row_group.sorting_columns() else {
                return false;
            };
            let names: Vec<String> = sorting
                .iter()
                .take(2)
                .filter(|column| !column.descending)
                .filter_map(|column| usize::try_from(column.column_idx).ok())
                .filter(|index| *index < columns.num_columns())
                .map(|index| columns.column(index).name().to_string())
                .collect();
            names == ["distinct_id", "timestamp"]
        })
}

fn load_rows(
    format: EventFormat,
    files: &[PathBuf],
    report: &mut LoadReport,
) -> Result<Vec<RecordBatch>> {
    let mut builder = EventBatchBuilder::default();
    let mut batches = Vec::new();
    for file in files {
        let reader =
            BufReader::new(
                File::open(file).map_err(|source| SessionqlError::EventsPath {
                    path: file.clone(),
                    source,
                })?,
            );
        let mut on_row = |line: usize,
                          row: std::result::Result<crate::event_rows::EventRow, String>|
         -> Result<()> {
            match row {
                Ok(row) => {
                    builder.push(row);
                    report.loaded_events += 1;
                    if builder.len() >= ROWS_PER_BATCH {
                        batches.push(to_events_schema(&builder.finish()?)?);
                    }
                }
                Err(reason) => report.skipped_lines.push(SkippedLine {
                    file: file.clone(),
                    line,
                    reason,
                }),
            }
            Ok(())
        };
        match format {
            EventFormat::NdJson => read_ndjson(file, reader, &mut on_row)?,
            EventFormat::Csv => read_csv(file, reader, &mut on_row)?,
            EventFormat::Parquet => {}
        }
    }
    if !builder.is_empty() {
        batches.push(to_events_schema(&builder.finish()?)?);
    }
    Ok(batches)
}

type RowSink<'a> =
    dyn FnMut(usize, std::result::Result<crate::event_rows::EventRow, String>) -> Result<()> + 'a;

fn read_ndjson(file: &Path, reader: BufReader<File>, on_row: &mut RowSink<'_>) -> Result<()> {
    for (index, line) in reader.lines().enumerate() {
        let line = line.map_err(|error| SessionqlError::EventFile {
            file: file.to_path_buf(),
            message: format!("line {}: {error}", index + 1),
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let row = match serde_json::from_str::<Value>(&line) {
            Ok(Value::Object(object)) => event_from_json(object),
            Ok(_) => Err("not a JSON object".to_string()),
            Err(error) => Err(format!("not valid JSON ({error})")),
        };
        on_row(index + 1, row)?;
    }
    Ok(())
}

fn read_csv(file: &Path, reader: BufReader<File>, on_row: &mut RowSink<'_>) -> Result<()> {
    let mut csv_reader = csv::ReaderBuilder::new().flexible(true).from_reader(reader);
    let header: Vec<String> = csv_reader
        .headers()
        .map_err(|error| SessionqlError::EventFile {
            file: file.to_path_buf(),
            message: format!("cannot read the CSV header: {error}"),
        })?
        .iter()
        .map(|name| name.trim().to_string())
        .collect();
    for column in REQUIRED_COLUMNS {
        if !header.iter().any(|name| name == column) {
            return Err(SessionqlError::MissingColumn {
                file: file.to_path_buf(),
                column: column.to_string(),
            });
        }
    }
    let mut record = csv::StringRecord::new();
    loop {
        let line = csv_reader.position().line() as usize;
        match csv_reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) if record.len() != header.len() => on_row(
                line,
                Err(format!(
                    "has {} fields, the header has {}",
                    record.len(),
                    header.len()
                )),
            )?,
            Ok(true) => on_row(line, event_from_csv(&header, &record))?,
            Err(error) => on_row(line, Err(format!("not valid CSV ({error})")))?,
        }
    }
    Ok(())
}

/// Spreads batches over `partitions` in-memory partitions so queries use every core.
fn split_into_partitions(batches: Vec<RecordBatch>, partitions: usize) -> Vec<Vec<RecordBatch>> {
    let mut split: Vec<Vec<RecordBatch>> = vec![Vec::new(); partitions];
    for (index, batch) in batches.into_iter().enumerate() {
        split[index % partitions].push(batch);
    }
    split.retain(|partition| !partition.is_empty());
    if split.is_empty() {
        split.push(Vec::new());
    }
    split
}

/// Presents any table as the `events` table: columns matched by name, missing
/// optional columns read as NULL, types cast to the events schema's. A missing
/// required column is an error naming it. Lets a program (or a test) build
/// sessions over a table it made itself, just as files missing optional
/// columns still load.
pub fn adapt_to_events_schema(
    name: &str,
    provider: Arc<dyn TableProvider>,
) -> Result<Arc<dyn TableProvider>> {
    let source_schema = provider.schema();
    let mut columns: Vec<Expr> = Vec::new();
    for field in events_schema().fields() {
        let column = match source_schema.field_with_name(field.name()) {
            Ok(found) if found.data_type() == field.data_type() => {
                col(format!("\"{}\"", field.name()))
            }
            Ok(_) => cast(
                col(format!("\"{}\"", field.name())),
                field.data_type().clone(),
            ),
            Err(_) if REQUIRED_COLUMNS.contains(&field.name().as_str()) => {
                return Err(SessionqlError::MissingColumn {
                    file: PathBuf::from(name),
                    column: field.name().clone(),
                });
            }
            Err(_) => lit(ScalarValue::try_from(field.data_type())?),
        };
        columns.push(column.alias(field.name()));
    }
    let plan = LogicalPlanBuilder::scan(name, provider_as_source(provider), None)?
        .project(columns)?
        .build()?;
    Ok(Arc::new(ViewTable::new(plan, None)))
}
