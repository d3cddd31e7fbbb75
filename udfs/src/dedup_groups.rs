//! Per-group lists of values that are deduplicated lazily: the storage behind
//! the distinct aggregates (`count_distinct_where`, `distinct_strings_where`).
//! A group's list is sorted and deduplicated whenever it has filled its
//! capacity, so a session that repeats one value many times stays small, and
//! appending is a plain push the rest of the time.

use datafusion::logical_expr::EmitTo;

/// Lists below this length are never compacted (not worth sorting).
const COMPACT_FROM: usize = 64;

/// Values per group, with repeats until compacted or taken.
#[derive(Debug)]
pub struct DedupGroups<T> {
    groups: Vec<Vec<T>>,
    /// Heap bytes held by the values themselves (beyond the list slots).
    value_bytes: usize,
    stored: usize,
    weigh: fn(&T) -> usize,
}

impl<T: Ord> DedupGroups<T> {
    /// Empty groups; `weigh` tells the heap bytes of one value (0 for numbers).
    pub fn new(weigh: fn(&T) -> usize) -> Self {
        Self {
            groups: Vec::new(),
            value_bytes: 0,
            stored: 0,
            weigh,
        }
    }

    /// Makes room for group indexes below `total_num_groups`.
    pub fn grow(&mut self, total_num_groups: usize) {
        if self.groups.len() < total_num_groups {
            self.groups.resize_with(total_num_groups, Vec::new);
        }
    }

    /// Adds a value to a group (which must exist: see [`Self::grow`]).
    pub fn add(&mut self, group: usize, value: T) {
        let weigh = self.weigh;
        let values = &mut self.groups[group];
        if values.len() >= COMPACT_FROM && values.len() == values.capacity() {
            let before = values.len();
            values.sort_unstable();
            let mut removed_bytes = 0;
            values.dedup_by(|repeat, kept| {
                let same = repeat == kept;
                if same {
                    removed_bytes += weigh(repeat);
                }
                same
            });
            self.stored -= before - values.len();
            self.value_bytes -= removed_bytes.min(self.value_bytes);
        }
        self.value_bytes += weigh(&value);
        values.push(value);
        self.stored += 1;
    }

    /// Removes and returns the groups `emit_to` names, each sorted and distinct.
    pub fn take(&mut self, emit_to: EmitTo) -> Vec<Vec<T>> {
        let taken = emit_to.take_needed(&mut self.groups);
        let mut distinct = Vec::with_capacity(taken.len());
        for mut values in taken {
            self.stored -= values.len().min(self.stored);
            let released: usize = values.iter().map(self.weigh).sum();
            self.value_bytes -= released.min(self.value_bytes);
            values.sort_unstable();
            values.dedup();
            distinct.push(values);
        }
        distinct
    }

    /// Approximate memory held, for DataFusion's memory accounting.
    pub fn size(&self) -> usize {
        self.groups.capacity() * std::mem::size_of::<Vec<T>>()
            + self.stored * std::mem::size_of::<T>()
            + self.value_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_are_removed_and_counted_once() {
        let mut groups = DedupGroups::<u64>::new(|_| 0);
        groups.grow(2);
        for value in (0..1000).map(|index| index % 3) {
            groups.add(0, value);
        }
        // Many distinct values force compactions that must keep them all.
        for value in 0..500 {
            groups.add(1, value);
            groups.add(1, value);
        }
        let taken = groups.take(EmitTo::All);
        assert_eq!(taken[0], vec![0, 1, 2]);
        assert_eq!(taken[1], (0..500).collect::<Vec<u64>>());
        assert_eq!(groups.size(), 0);
    }
}
