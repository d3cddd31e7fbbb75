//! Printing query results: an aligned table for people, CSV, a JSON array or
//! NDJSON for programs.

use std::io::Write;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::arrow::util::pretty::pretty_format_batches;

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OutputFormat {
    /// An aligned table with a header.
    #[default]
    Table,
    /// Comma-separated values with a header line.
    Csv,
    /// One JSON array of row objects.
    Json,
    /// One JSON object per line.
    Ndjson,
}

/// Writes `batches` (of `schema`, which is used when there are no rows) to `out`.
pub fn write_results(
    out: &mut dyn Write,
    format: OutputFormat,
    schema: &SchemaRef,
    batches: &[RecordBatch],
) -> Result<(), ArrowError> {
    let empty;
    let batches = if batches.iter().all(|batch| batch.num_rows() == 0) {
        empty = [RecordBatch::new_empty(schema.clone())];
        &empty[..]
    } else {
        batches
    };
    match format {
        OutputFormat::Table => writeln!(out, "{}", pretty_format_batches(batches)?)?,
        OutputFormat::Csv => write_csv(out, schema, batches)?,
        OutputFormat::Json => {
            let mut writer = datafusion::arrow::json::ArrayWriter::new(&mut *out);
            for batch in batches {
                writer.write(batch)?;
            }
            writer.finish()?;
            writeln!(out)?;
        }
        OutputFormat::Ndjson => {
            let mut writer = datafusion::arrow::json::LineDelimitedWriter::new(&mut *out);
            for batch in batches {
                writer.write(batch)?;
            }
            writer.finish()?;
        }
    }
    out.flush()?;
    Ok(())
}

/// CSV through Arrow's display formatter, so every type (lists included, which
/// Arrow's CSV writer rejects) prints as it does in the table.
fn write_csv(
    out: &mut dyn Write,
    schema: &SchemaRef,
    batches: &[RecordBatch],
) -> Result<(), ArrowError> {
    let mut writer = csv::Writer::from_writer(out);
    let csv_error = |error: csv::Error| ArrowError::CsvError(error.to_string());
    writer
        .write_record(schema.fields().iter().map(|field| field.name()))
        .map_err(csv_error)?;
    let options = FormatOptions::default().with_display_error(true);
    for batch in batches {
        let formatters = batch
            .columns()
            .iter()
            .map(|column| ArrayFormatter::try_new(column.as_ref(), &options))
            .collect::<Result<Vec<_>, _>>()?;
        for row in 0..batch.num_rows() {
            let record: Vec<String> = formatters
                .iter()
                .zip(batch.columns())
                .map(|(formatter, column)| {
                    if column.is_null(row) {
                        String::new()
                    } else {
                        formatter.value(row).to_string()
                    }
                })
                .collect();
            writer.write_record(&record).map_err(csv_error)?;
        }
    }
    writer.flush()?;
    Ok(())
}
