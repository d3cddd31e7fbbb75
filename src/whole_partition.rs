//! What sessionql's operators that hold a whole partition in memory share:
//! they do so only when the session has no memory limit (otherwise they run
//! the DataFusion operators they replaced, which spill), and they count what
//! they hold in the memory pool.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::memory_pool::{
    MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation,
};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::metrics::BaselineMetrics;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::{StreamExt, TryStreamExt, stream};

/// A reservation named `operator[partition]` in the task's memory pool, or
/// `None` when the pool has a limit and the operator must not hold a whole
/// partition.
pub fn unlimited_reservation(
    context: &TaskContext,
    operator: &str,
    partition: usize,
) -> Option<MemoryReservation> {
    let memory_pool: &Arc<dyn MemoryPool> = &context.runtime_env().memory_pool;
    (!has_memory_limit(context))
        .then(|| MemoryConsumer::new(format!("{operator}[{partition}]")).register(memory_pool))
}

/// Whether the task's memory pool has a limit, under which an operator
/// must not hold a whole partition.
pub fn has_memory_limit(context: &TaskContext) -> bool {
    !matches!(
        context.runtime_env().memory_pool.memory_limit(),
        MemoryLimit::Infinite
    )
}

/// Every batch of `input` that has rows, each counted in `reservation`.
pub async fn read_whole_partition(
    mut input: SendableRecordBatchStream,
    reservation: &MemoryReservation,
) -> Result<Vec<RecordBatch>> {
    let mut batches = Vec::new();
    while let Some(batch) = input.next().await {
        let batch = batch?;
        if batch.num_rows() > 0 {
            reservation.try_grow(batch.get_array_memory_size())?;
            batches.push(batch);
        }
    }
    Ok(batches)
}

/// The batches `transform` makes of all of `input`'s (read into
/// `reservation`), handed on one by one: its time is the operator's compute
/// time and its rows the output rows, and the reservation is kept until the
/// last batch is passed on.
pub fn transform_whole_partition<F>(
    input: SendableRecordBatchStream,
    schema: SchemaRef,
    reservation: MemoryReservation,
    baseline: BaselineMetrics,
    transform: F,
) -> SendableRecordBatchStream
where
    F: FnOnce(Vec<RecordBatch>, &MemoryReservation) -> Result<Vec<RecordBatch>> + Send + 'static,
{
    let output = stream::once(async move {
        let batches = read_whole_partition(input, &reservation).await?;
        let timer = baseline.elapsed_compute().timer();
        let batches = transform(batches, &reservation)?;
        baseline
            .output_rows()
            .add(batches.iter().map(RecordBatch::num_rows).sum());
        timer.done();
        let held = stream::iter(batches.into_iter().map(Ok)).map(move |batch| {
            // The reservation lives as long as the batches it counts.
            let _held = &reservation;
            batch
        });
        Ok::<_, DataFusionError>(held)
    })
    .try_flatten();
    Box::pin(RecordBatchStreamAdapter::new(schema, output))
}
