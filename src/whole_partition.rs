//! What sessionql's operators that hold a whole partition in memory share:
//! they do so only when the session has no memory limit (otherwise they run
//! the DataFusion operators they replaced, which spill), and they count what
//! they hold in the memory pool.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::error::Result;
use datafusion::execution::memory_pool::{
    MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation,
};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use futures::StreamExt;

/// A reservation named `operator[partition]` in the task's memory pool, or
/// `None` when the pool has a limit and the operator must not hold a whole
/// partition.
pub fn unlimited_reservation(
    context: &TaskContext,
    operator: &str,
    partition: usize,
) -> Option<MemoryReservation> {
    let memory_pool: &Arc<dyn MemoryPool> = &context.runtime_env().memory_pool;
    matches!(memory_pool.memory_limit(), MemoryLimit::Infinite)
        .then(|| MemoryConsumer::new(format!("{operator}[{partition}]")).register(memory_pool))
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
