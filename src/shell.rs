//! `sessionql shell`: an interactive SQL prompt. Statements end with `;` and
//! may span lines; history is kept in `~/.sessionql_history`. An error is
//! printed and the prompt goes on.

use std::path::PathBuf;

use rustyline::DefaultEditor;
use rustyline::error::ReadlineError;

use crate::engine::Engine;
use crate::error::{Result, SessionqlError};
use crate::output::{OutputFormat, write_results};

const PROMPT: &str = "sessionql> ";
const CONTINUATION_PROMPT: &str = "        -> ";
const HELP: &str = "Type SQL ending with ';'. Tables: events, sessions, session_events. \
`SHOW FUNCTIONS;` lists functions, `\\q` quits.";

fn history_path() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".sessionql_history"))
}

/// Reads statements until end of input or `\q`.
pub async fn run_shell(engine: &Engine, format: OutputFormat) -> Result<()> {
    let mut editor = DefaultEditor::new()
        .map_err(|error| SessionqlError::Invalid(format!("cannot start the shell: {error}")))?;
    let history = history_path();
    if let Some(path) = &history {
        let _ = editor.load_history(path);
    }
    let mut pending = String::new();
    loop {
        let prompt = if pending.is_empty() {
            PROMPT
        } else {
            CONTINUATION_PROMPT
        };
        let line = match editor.readline(prompt) {
            Ok(line) => line,
            Err(ReadlineError::Interrupted) => {
                pending.clear();
                continue;
            }
            Err(ReadlineError::Eof) => break,
            Err(error) => {
                return Err(SessionqlError::Invalid(format!(
                    "cannot read input: {error}"
                )));
            }
        };
        let trimmed = line.trim();
        if pending.is_empty() {
            match trimmed {
                "" => continue,
                "\\q" | "quit" | "exit" => break,
                "\\?" | "help" => {
                    println!("{HELP}");
                    continue;
                }
                _ => {}
            }
        }
        pending.push_str(&line);
        pending.push('\n');
        if !trimmed.ends_with(';') {
            continue;
        }
        let statement = std::mem::take(&mut pending);
        let _ = editor.add_history_entry(statement.trim());
        match engine.run_statements(&statement).await {
            Ok((schema, batches)) => {
                let rows: usize = batches.iter().map(|batch| batch.num_rows()).sum();
                let mut out = std::io::stdout().lock();
                if let Err(error) = write_results(&mut out, format, &schema, &batches) {
                    eprintln!("error: {error}");
                } else if format == OutputFormat::Table {
                    println!("{rows} row(s)");
                }
            }
            Err(error) => eprintln!("error: {error}"),
        }
    }
    if let Some(path) = &history {
        let _ = editor.save_history(path);
    }
    Ok(())
}
