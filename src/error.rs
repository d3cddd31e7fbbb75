//! The errors a sessionql user can meet, with the context that lets them act:
//! which file, which line, which column.

use std::path::PathBuf;

use datafusion::error::DataFusionError;

/// Everything the engine, the loaders and the CLI can fail with.
#[derive(Debug, thiserror::Error)]
pub enum SessionqlError {
    /// The events path does not exist or cannot be read.
    #[error("cannot read events at {path}: {source}")]
    EventsPath {
        /// The path the user gave.
        path: PathBuf,
        /// What the file system said.
        #[source]
        source: std::io::Error,
    },
    /// The events path holds no file sessionql can read.
    #[error("no event files (.parquet, .ndjson, .jsonl, .json, .csv) found at {0}")]
    NoEventFiles(PathBuf),
    /// A directory mixes formats; one table is read with one reader.
    #[error("{path} mixes event file formats ({formats}); keep one format per events directory")]
    MixedFormats {
        /// The directory.
        path: PathBuf,
        /// The formats found.
        formats: String,
    },
    /// An event file lacks a column every event must have.
    #[error("{file}: missing required column '{column}'")]
    MissingColumn {
        /// The file.
        file: PathBuf,
        /// The column.
        column: String,
    },
    /// A column of an event file has a type that cannot be read as the events schema's.
    #[error("{file}: column '{column}' has type {found}, expected {expected}")]
    ColumnType {
        /// The file.
        file: PathBuf,
        /// The column.
        column: String,
        /// Its type in the file.
        found: String,
        /// The events schema's type.
        expected: String,
    },
    /// An event file could not be opened or parsed as a whole.
    #[error("{file}: {message}")]
    EventFile {
        /// The file.
        file: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// Writing generated data or query output failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// Where.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A query failed: bad SQL, unknown column, a failing function.
    #[error("{0}")]
    Query(#[from] DataFusionError),
    /// Arrow failed on data being written or read back (ingest, generate).
    #[error("{0}")]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
    /// A user-supplied value (a setting, an option) is invalid.
    #[error("{0}")]
    Invalid(String),
    /// A query ran past the `--timeout` its user gave; it was cancelled.
    #[error("gave up on the query: still running after {seconds} s (--timeout {seconds})")]
    TimedOut {
        /// The limit given.
        seconds: u64,
    },
}

/// Results of sessionql operations.
pub type Result<T, E = SessionqlError> = std::result::Result<T, E>;
