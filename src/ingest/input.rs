//! Ingest inputs: files, directories of files and standard input, plain or
//! gzip-compressed (recognised by content, not by name), read as lines.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;

/// The name standing for standard input.
pub const STDIN: &str = "-";

/// File names a directory input contributes.
const INPUT_EXTENSIONS: [&str; 3] = [".ndjson", ".jsonl", ".json"];

/// An input path that could not be used, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnreadableInput {
    /// The path.
    pub path: PathBuf,
    /// What went wrong.
    pub reason: String,
}

/// Expands the given inputs into files, in a stable order: a directory gives
/// its event files (recursively, hidden and `_` names skipped), sorted.
pub fn input_files(inputs: &[PathBuf]) -> (Vec<PathBuf>, Vec<UnreadableInput>) {
    let mut files = Vec::new();
    let mut unreadable = Vec::new();
    for input in inputs {
        if input.as_os_str() == STDIN {
            files.push(input.clone());
            continue;
        }
        match std::fs::metadata(input) {
            Ok(metadata) if metadata.is_dir() => {
                let mut found = Vec::new();
                if let Err(error) = collect_directory(input, &mut found) {
                    unreadable.push(UnreadableInput {
                        path: input.clone(),
                        reason: error.to_string(),
                    });
                }
                found.sort();
                if found.is_empty() {
                    unreadable.push(UnreadableInput {
                        path: input.clone(),
                        reason: "no .ndjson, .jsonl or .json files (optionally .gz) in it".into(),
                    });
                }
                files.extend(found);
            }
            Ok(_) => files.push(input.clone()),
            Err(error) => unreadable.push(UnreadableInput {
                path: input.clone(),
                reason: error.to_string(),
            }),
        }
    }
    (files, unreadable)
}

fn collect_directory(directory: &Path, files: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(directory)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || name.starts_with('_') {
            continue;
        }
        let path = entry.path();
        if path.is_dir() {
            collect_directory(&path, files)?;
            continue;
        }
        let name = name.strip_suffix(".gz").unwrap_or(&name);
        if INPUT_EXTENSIONS
            .iter()
            .any(|extension| name.ends_with(extension))
        {
            files.push(path);
        }
    }
    Ok(())
}

/// Size in bytes of an input as stored (0 for standard input).
pub fn stored_size(path: &Path) -> u64 {
    if path.as_os_str() == STDIN {
        return 0;
    }
    std::fs::metadata(path).map_or(0, |metadata| metadata.len())
}

/// Opens an input for reading lines, decompressing gzip when the content
/// starts with gzip's magic bytes. `wrap` sees the raw (compressed) bytes, so
/// progress can count them against the stored size.
pub fn open_input(
    path: &Path,
    wrap: impl FnOnce(Box<dyn Read + Send>) -> Box<dyn Read + Send>,
) -> std::io::Result<Box<dyn BufRead + Send>> {
    let raw: Box<dyn Read + Send> = if path.as_os_str() == STDIN {
        Box::new(std::io::stdin())
    } else {
        Box::new(File::open(path)?)
    };
    let mut buffered = BufReader::with_capacity(1 << 20, wrap(raw));
    let gzip = buffered.fill_buf()?.starts_with(&[0x1f, 0x8b]);
    Ok(if gzip {
        Box::new(BufReader::with_capacity(
            1 << 20,
            MultiGzDecoder::new(buffered),
        ))
    } else {
        Box::new(buffered)
    })
}
