//! `sessionql ingest`: PostHog-shaped events (exports, capture request bodies)
//! into the `events` layout: Parquet partitioned by UTC date, each file sorted
//! by (`distinct_id`, `timestamp`) and declaring it, with clock skew undone,
//! duplicates dropped and every rejected line kept in a quarantine file.
//!
//! Input is read by one thread, parsed by a thread per core, and applied in
//! input order by the calling thread, so the result does not depend on timing.

pub mod date_partitions;
pub mod event_time;
pub mod input;
pub mod json_spans;
pub mod posthog_event;
pub mod quarantine;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender, SyncSender, channel, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

use crate::error::{Result, SessionqlError};
use datafusion::arrow::record_batch::RecordBatch;

use crate::event_rows::EventBatchBuilder;
use date_partitions::DatePartitions;
use input::{UnreadableInput, input_files, open_input, stored_size};
use posthog_event::line_events;
use quarantine::Quarantine;

/// Bytes of whole lines handed to a parsing thread at a time.
const BYTES_PER_CHUNK: usize = 1 << 20;
/// Inputs larger than this (in all) show a progress bar on a terminal.
const PROGRESS_MIN_BYTES: u64 = 8 * 1024 * 1024;
/// Parsed events held in memory before spilling, by default. Small on
/// purpose: on 1M generated events a 512 MiB budget cost more in page faults
/// (2 s of system time) than spilling at 64 MiB costs in writes (3.3 s
/// against 4.4–4.8 s with one parsing thread, and 220 MiB peak against 700).
pub const DEFAULT_MEMORY_BUDGET_MIB: usize = 64;
/// The lock file that keeps two ingests from writing one directory at once.
const LOCK_FILE: &str = "_ingest.lock";

/// What to ingest and where.
#[derive(Debug, Clone)]
pub struct IngestOptions {
    /// Files, directories, or `-` for standard input.
    pub inputs: Vec<PathBuf>,
    /// The events directory written (and read for duplicates).
    pub out: PathBuf,
    /// Receive time for events whose payload carries none (`now`,
    /// `_received_at`), in microseconds since the epoch.
    pub received_at_us: Option<i64>,
    /// Where rejected lines go; default `OUT/_quarantine/<run>.ndjson`.
    pub quarantine: Option<PathBuf>,
    /// Most events per output file.
    pub rows_per_file: usize,
    /// Parsing threads; 0 means one per core.
    pub threads: usize,
    /// Bytes of parsed events kept in memory before they are spilled to disk:
    /// small ingests never write twice, large ones stay within this much.
    pub memory_budget_bytes: usize,
}

impl IngestOptions {
    /// Options with the defaults for everything but inputs and output.
    pub fn new(inputs: Vec<PathBuf>, out: PathBuf) -> Self {
        Self {
            inputs,
            out,
            received_at_us: None,
            quarantine: None,
            rows_per_file: 1_000_000,
            threads: 0,
            memory_budget_bytes: DEFAULT_MEMORY_BUDGET_MIB * 1024 * 1024,
        }
    }
}

/// What an ingest did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IngestSummary {
    /// Input files read.
    pub inputs_read: usize,
    /// Inputs that could not be read (missing, unreadable, corrupt).
    pub unreadable: Vec<UnreadableInput>,
    /// Non-blank lines read.
    pub lines: u64,
    /// Events written.
    pub ingested: u64,
    /// Events left out because their uuid was already stored.
    pub duplicates: u64,
    /// Lines or batch items rejected into the quarantine file.
    pub quarantined: u64,
    /// The Parquet files written.
    pub files: Vec<PathBuf>,
    /// The quarantine file, if anything was rejected.
    pub quarantine_file: Option<PathBuf>,
}

/// Whole lines of one input, in one buffer, on their way to a parsing thread.
struct LineChunk {
    sequence: u64,
    file: usize,
    first_line: u64,
    bytes: Vec<u8>,
}

/// An input line (or batch item) that is not an event.
struct Rejected {
    line: u64,
    item: Option<usize>,
    reason: String,
    raw: String,
}

/// A chunk after parsing: its events as one batch, and what was rejected.
struct ParsedChunk {
    sequence: u64,
    file: usize,
    lines: u64,
    events: Option<RecordBatch>,
    rejected: Vec<Rejected>,
}

/// Runs an ingest. Fails only when no input could be read at all (or the
/// output cannot be written); bad lines are quarantined and counted.
pub fn ingest(options: &IngestOptions) -> Result<IngestSummary> {
    let out = &options.out;
    std::fs::create_dir_all(out).map_err(|source| SessionqlError::Write {
        path: out.clone(),
        source,
    })?;
    let _lock = lock_output(out)?;
    remove_leftovers(out);
    let run_id = format!(
        "{}-p{}",
        chrono::Utc::now().format("%Y%m%dT%H%M%S%3f"),
        std::process::id()
    );
    let (files, unreadable) = input_files(&options.inputs);
    let mut summary = IngestSummary {
        unreadable,
        ..IngestSummary::default()
    };
    let quarantine_path = options
        .quarantine
        .clone()
        .unwrap_or_else(|| out.join("_quarantine").join(format!("{run_id}.ndjson")));
    let mut quarantine = Quarantine::new(quarantine_path);
    let mut partitions = DatePartitions::new(
        out,
        &run_id,
        options.rows_per_file,
        options.memory_budget_bytes,
    )?;
    let progress = progress_bar(files.iter().map(|file| stored_size(file)).sum());
    let threads = match options.threads {
        0 => std::thread::available_parallelism().map_or(1, |count| count.get()),
        threads => threads,
    };
    let started = Instant::now();

    let (read_result, apply_result) = std::thread::scope(|scope| {
        let (chunk_sender, chunk_receiver) = sync_channel::<LineChunk>(threads * 2);
        let (parsed_sender, parsed_receiver) = sync_channel::<ParsedChunk>(threads * 2);
        // Parsed chunks' buffers go back to the reader: fresh megabytes for
        // every chunk would cost more in page faults than the parsing.
        let (spare_sender, spare_receiver) = channel::<Vec<u8>>();
        let chunk_receiver = Arc::new(Mutex::new(chunk_receiver));
        let reader = {
            let progress = progress.clone();
            let files = &files;
            scope.spawn(move || read_inputs(files, &chunk_sender, &spare_receiver, &progress))
        };
        for _ in 0..threads {
            let chunk_receiver = Arc::clone(&chunk_receiver);
            let parsed_sender = parsed_sender.clone();
            let spare_sender = spare_sender.clone();
            let received_at_us = options.received_at_us;
            scope.spawn(move || {
                parse_chunks(
                    &chunk_receiver,
                    &parsed_sender,
                    &spare_sender,
                    received_at_us,
                )
            });
        }
        drop(spare_sender);
        drop(parsed_sender);
        let apply_result = apply_in_order(
            &parsed_receiver,
            &files,
            &mut partitions,
            &mut quarantine,
            &mut summary,
            &progress,
            started,
        );
        // On an apply error, stop the pipeline: dropping the receiver ends the workers.
        drop(parsed_receiver);
        let read_result = reader.join();
        (read_result, apply_result)
    });
    apply_result?;
    let (inputs_read, read_failures) = read_result
        .map_err(|_| SessionqlError::Invalid("the input reader stopped unexpectedly".into()))?;
    summary.inputs_read = inputs_read;
    summary.unreadable.extend(read_failures);
    progress.finish_and_clear();

    let written = partitions.finish(threads)?;
    summary.ingested = written.events;
    summary.duplicates = written.duplicates;
    summary.files = written.files;
    let (quarantined, quarantine_file) = quarantine.finish()?;
    summary.quarantined = quarantined;
    summary.quarantine_file = quarantine_file;
    if summary.inputs_read == 0 {
        let reasons: Vec<String> = summary
            .unreadable
            .iter()
            .map(|input| format!("{}: {}", input.path.display(), input.reason))
            .collect();
        return Err(SessionqlError::Invalid(format!(
            "nothing could be read{}{}",
            if reasons.is_empty() { "" } else { ": " },
            reasons.join("; ")
        )));
    }
    Ok(summary)
}

/// Takes the output directory's lock; released when the returned file closes,
/// also when the process is killed.
fn lock_output(out: &Path) -> Result<File> {
    let path = out.join(LOCK_FILE);
    let file = File::create(&path).map_err(|source| SessionqlError::Write {
        path: path.clone(),
        source,
    })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(SessionqlError::Invalid(format!(
            "another ingest is writing {}; wait for it to finish",
            out.display()
        ))),
        Err(std::fs::TryLockError::Error(source)) => Err(SessionqlError::Write { path, source }),
    }
}

/// Removes what an interrupted run left: its spill directory and temporary
/// files (safe under the lock: no other ingest is writing).
fn remove_leftovers(out: &Path) {
    let Ok(entries) = std::fs::read_dir(out) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if name.starts_with(".ingest-") {
            let _ = std::fs::remove_dir_all(&path);
        } else if name.starts_with("date=") && path.is_dir() {
            for file in std::fs::read_dir(&path).into_iter().flatten().flatten() {
                let file_name = file.file_name().to_string_lossy().into_owned();
                if crate::complete_files::is_temporary_name(&file_name) {
                    let _ = std::fs::remove_file(file.path());
                }
            }
        }
    }
}

fn progress_bar(total_bytes: u64) -> ProgressBar {
    if total_bytes < PROGRESS_MIN_BYTES {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total_bytes);
    if let Ok(style) =
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {msg} eta {eta}")
    {
        bar.set_style(style);
    }
    bar
}

/// Reads every input into numbered line chunks. Returns how many inputs were
/// read, and those that failed (a file can fail part-way: its earlier lines
/// are kept).
fn read_inputs(
    files: &[PathBuf],
    chunks: &SyncSender<LineChunk>,
    spare: &Receiver<Vec<u8>>,
    progress: &ProgressBar,
) -> (usize, Vec<UnreadableInput>) {
    let mut sequence = 0;
    let mut read = 0;
    let mut failures = Vec::new();
    for (file_index, path) in files.iter().enumerate() {
        let progress = progress.clone();
        let reader = match open_input(path, |raw| Box::new(progress.wrap_read(raw))) {
            Ok(reader) => reader,
            Err(error) => {
                failures.push(UnreadableInput {
                    path: path.clone(),
                    reason: error.to_string(),
                });
                continue;
            }
        };
        read += 1;
        match read_lines(reader, file_index, &mut sequence, chunks, spare) {
            Ok(true) => {}
            Ok(false) => return (read, failures),
            Err(error) => failures.push(UnreadableInput {
                path: path.clone(),
                reason: format!("stopped reading: {error}"),
            }),
        }
    }
    (read, failures)
}

/// Sends one input's lines, about a megabyte at a time; `Ok(false)` when the
/// receiving side has gone.
fn read_lines(
    mut reader: Box<dyn BufRead + Send>,
    file: usize,
    sequence: &mut u64,
    chunks: &SyncSender<LineChunk>,
    spare: &Receiver<Vec<u8>>,
) -> std::io::Result<bool> {
    let mut next_line = 1;
    loop {
        let mut bytes = spare
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(BYTES_PER_CHUNK + 4096));
        let first_line = next_line;
        let mut at_end = false;
        // A megabyte as the reader has it, then the rest of its last line
        // (reading line by line scanned and copied every line once more).
        while bytes.len() < BYTES_PER_CHUNK {
            let available = reader.fill_buf()?;
            if available.is_empty() {
                at_end = true;
                break;
            }
            let taken = available.len().min(BYTES_PER_CHUNK - bytes.len());
            bytes.extend_from_slice(&available[..taken]);
            reader.consume(taken);
        }
        if !at_end && bytes.last() != Some(&b'\n') && reader.read_until(b'\n', &mut bytes)? == 0 {
            at_end = true;
        }
        let line_ends = memchr::memchr_iter(b'\n', &bytes).count();
        let unterminated_last_line = bytes.last().is_some_and(|byte| *byte != b'\n');
        next_line += (line_ends + usize::from(unterminated_last_line)) as u64;
        if !bytes.is_empty() {
            let chunk = LineChunk {
                sequence: *sequence,
                file,
                first_line,
                bytes,
            };
            *sequence += 1;
            if chunks.send(chunk).is_err() {
                return Ok(false);
            }
        }
        if at_end {
            return Ok(true);
        }
    }
}

fn parse_chunks(
    chunks: &Mutex<Receiver<LineChunk>>,
    parsed: &SyncSender<ParsedChunk>,
    spare: &Sender<Vec<u8>>,
    received_at_us: Option<i64>,
) {
    loop {
        let chunk = match chunks.lock() {
            Ok(receiver) => receiver.recv(),
            Err(_) => return,
        };
        let Ok(chunk) = chunk else {
            return;
        };
        let parsed_chunk = parse_chunk(&chunk, received_at_us);
        let mut bytes = chunk.bytes;
        bytes.clear();
        let _ = spare.send(bytes);
        if parsed.send(parsed_chunk).is_err() {
            return;
        }
    }
}

fn parse_chunk(chunk: &LineChunk, received_at_us: Option<i64>) -> ParsedChunk {
    // About one event per 500 bytes of generated or exported PostHog JSON.
    let mut events = EventBatchBuilder::with_capacity(chunk.bytes.len() / 400, chunk.bytes.len());
    let mut rejected = Vec::new();
    let mut lines = 0;
    let body = chunk.bytes.strip_suffix(b"\n").unwrap_or(&chunk.bytes);
    // memchr finds line ends a vector at a time; a byte-by-byte split was a
    // measurable share of a parsing thread's time.
    let line_ends = memchr::memchr_iter(b'\n', body).chain(std::iter::once(body.len()));
    let mut line_start = 0;
    for (index, line_end) in line_ends.enumerate() {
        let bytes = &body[line_start..line_end];
        line_start = line_end + 1;
        let line = chunk.first_line + index as u64;
        let trimmed = bytes.trim_ascii();
        if trimmed.is_empty() {
            continue;
        }
        lines += 1;
        let raw_line = || String::from_utf8_lossy(trimmed).into_owned();
        let mut reject = |item: Option<usize>, reason: String, raw: String| {
            rejected.push(Rejected {
                line,
                item,
                reason,
                raw,
            });
        };
        // JSON is UTF-8; `line_events` checks the rest of the grammar.
        let Ok(text) = std::str::from_utf8(trimmed) else {
            reject(None, "not valid JSON (not UTF-8)".into(), raw_line());
            continue;
        };
        let mut item_rejections = Vec::new();
        let outcome = line_events(text, received_at_us, |item, event| match event {
            Ok(row) => events.push(row),
            Err(rejected) => item_rejections.push((item, rejected)),
        });
        if let Err(reason) = outcome {
            reject(None, reason, raw_line());
        }
        for (item, rejected) in item_rejections {
            reject(item, rejected.reason, rejected.raw);
        }
    }
    let events = if events.is_empty() {
        None
    } else {
        // The builder's columns always match the events schema.
        events.finish().ok()
    };
    ParsedChunk {
        sequence: chunk.sequence,
        file: chunk.file,
        lines,
        events,
        rejected,
    }
}

fn apply_in_order(
    parsed: &Receiver<ParsedChunk>,
    files: &[PathBuf],
    partitions: &mut DatePartitions,
    quarantine: &mut Quarantine,
    summary: &mut IngestSummary,
    progress: &ProgressBar,
    started: Instant,
) -> Result<()> {
    let mut waiting: BTreeMap<u64, ParsedChunk> = BTreeMap::new();
    let mut next = 0;
    let mut events = 0u64;
    for chunk in parsed {
        waiting.insert(chunk.sequence, chunk);
        while let Some(chunk) = waiting.remove(&next) {
            next += 1;
            summary.lines += chunk.lines;
            let file = files
                .get(chunk.file)
                .map_or(Path::new(""), PathBuf::as_path);
            for rejected in chunk.rejected {
                quarantine.add(
                    file,
                    rejected.line,
                    rejected.item,
                    &rejected.reason,
                    &rejected.raw,
                )?;
            }
            if let Some(batch) = chunk.events {
                events += batch.num_rows() as u64;
                partitions.push_batch(batch)?;
            }
            let seconds = started.elapsed().as_secs_f64().max(1e-3);
            progress.set_message(format!("{:.0} events/s", events as f64 / seconds));
        }
    }
    Ok(())
}
