//! Per-group values kept in one flat log and deduplicated when taken: the
//! storage behind the distinct aggregates (`count_distinct_where`,
//! `distinct_strings_where`, `session_event_counts`).
//!
//! Each kept value is appended to one log with its group index, so adding a
//! value is two pushes onto contiguous vectors: no list per group, no heap
//! allocation per string (each distinct string is stored once, values are
//! its number). When groups are taken, a counting sort by group puts each
//! group's values together, each group's few values are sorted and their
//! repeats dropped. A value that repeats the one just added to the same
//! group (a page reloaded, an event sent twice in a row) is not added at
//! all.

use std::cmp::Ordering;
use std::fmt::Debug;
use std::hash::BuildHasher;

use datafusion::arrow::buffer::{OffsetBuffer, ScalarBuffer};
use datafusion::common::{Result, exec_err};
use datafusion::logical_expr::EmitTo;
use hashbrown::{DefaultHashBuilder, HashTable, hash_table};

/// How a log stores its values: 64-bit hashes inline, strings by number.
pub trait LogValues: Default + Debug + Send + Sync + Sized {
    /// One value as it is added and compared.
    type Item<'a>: Ord + Copy;
    /// The value at `index` (an index of a value pushed earlier).
    fn item(&self, index: usize) -> Self::Item<'_>;
    /// Whether the value at `index` equals `item`.
    fn holds_at(&self, index: usize, item: Self::Item<'_>) -> bool;
    /// Appends a value.
    fn push(&mut self, item: Self::Item<'_>);
    /// Heap bytes held, for memory accounting.
    fn heap_bytes(&self) -> usize;
    /// The values sorted by group (`groups[i]` is value i's group, each below
    /// `num_groups`), each group ascending without repeats. Any log can sort
    /// the positions of its values; a log of numbers sorts the numbers.
    fn into_taken(self, groups: &[u32], num_groups: usize) -> Result<Taken<Self>> {
        take_by_position(self, groups, num_groups)
    }
}

/// 64-bit hashes, kept inline.
impl LogValues for Vec<u64> {
    type Item<'a> = u64;

    fn item(&self, index: usize) -> u64 {
        self[index]
    }

    fn holds_at(&self, index: usize, item: u64) -> bool {
        self[index] == item
    }

    fn push(&mut self, item: u64) {
        Vec::push(self, item)
    }

    fn heap_bytes(&self) -> usize {
        self.capacity() * size_of::<u64>()
    }

    /// Sorts the hashes themselves: no indirection in the comparisons.
    fn into_taken(self, groups: &[u32], num_groups: usize) -> Result<Taken<Self>> {
        let (mut starts, mut sorted) = place_by_group(groups, num_groups, |index| self[index])?;
        sort_and_dedup_groups(&mut sorted, &mut starts, u64::cmp);
        Ok(Taken {
            values: sorted,
            order: None,
            starts,
        })
    }
}

/// Strings, each distinct one stored once: a value is logged as the number
/// of its string. A site has few pages next to its pageviews, so the
/// sessions table's `urls` kept nearly every pageview's URL over again (at
/// 10M events a sixth of the table's memory and page faults); numbers are
/// also sorted and compared without touching the strings.
#[derive(Debug, Default)]
pub struct InternedStrings {
    /// The number of each logged value's string in `distinct`.
    numbers: Vec<u32>,
    distinct: DistinctStrings,
}

/// Each distinct string once, numbered in the order first seen.
#[derive(Default)]
struct DistinctStrings {
    bytes: Vec<u8>,
    /// End offset in `bytes` of each string; string `i` starts where `i - 1` ends.
    ends: Vec<usize>,
    /// Numbers of the strings, found by the strings' hashes.
    by_hash: HashTable<u32>,
    hasher: DefaultHashBuilder,
}

impl Debug for DistinctStrings {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("DistinctStrings")
            .field("strings", &self.ends.len())
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

/// String `number` of `bytes` / `ends` (see [`DistinctStrings`]).
fn string_at<'a>(bytes: &'a [u8], ends: &[usize], number: u32) -> &'a [u8] {
    let number = number as usize;
    let start = number.checked_sub(1).map_or(0, |before| ends[before]);
    &bytes[start..ends[number]]
}

impl DistinctStrings {
    fn get(&self, number: u32) -> &[u8] {
        string_at(&self.bytes, &self.ends, number)
    }

    fn len(&self) -> usize {
        self.ends.len()
    }

    /// The number of `string`, which is added if new.
    fn number_of(&mut self, string: &[u8]) -> u32 {
        let Self {
            bytes,
            ends,
            by_hash,
            hasher,
        } = self;
        let entry = by_hash.entry(
            hasher.hash_one(string),
            |&number| string_at(bytes, ends, number) == string,
            |&number| hasher.hash_one(string_at(bytes, ends, number)),
        );
        match entry {
            hash_table::Entry::Occupied(found) => *found.get(),
            hash_table::Entry::Vacant(vacant) => {
                // A log never holds more distinct strings than values, and
                // `take` refuses more than `u32::MAX` values, so a number
                // that wrapped is never read.
                let number = ends.len() as u32;
                bytes.extend_from_slice(string);
                ends.push(bytes.len());
                vacant.insert(number);
                number
            }
        }
    }

    fn heap_bytes(&self) -> usize {
        self.bytes.capacity()
            + self.ends.capacity() * size_of::<usize>()
            + self.by_hash.capacity() * (size_of::<u32>() + 1)
    }
}

impl LogValues for InternedStrings {
    type Item<'a> = &'a [u8];

    fn item(&self, index: usize) -> &[u8] {
        self.distinct.get(self.numbers[index])
    }

    fn holds_at(&self, index: usize, item: &[u8]) -> bool {
        self.item(index) == item
    }

    fn push(&mut self, item: &[u8]) {
        let number = self.distinct.number_of(item);
        self.numbers.push(number);
    }

    fn heap_bytes(&self) -> usize {
        self.numbers.capacity() * size_of::<u32>() + self.distinct.heap_bytes()
    }

    /// Ranks the distinct strings once, then sorts each group's ranks: the
    /// strings are compared once per distinct string, not per value.
    fn into_taken(self, groups: &[u32], num_groups: usize) -> Result<Taken<Self>> {
        let Self { numbers, distinct } = self;
        // Number of the string at each rank, and rank of each number.
        let mut by_rank: Vec<u32> = (0..distinct.len() as u32).collect();
        by_rank.sort_unstable_by(|&a, &b| distinct.get(a).cmp(distinct.get(b)));
        let mut rank_of = vec![0u32; by_rank.len()];
        for (rank, &number) in by_rank.iter().enumerate() {
            rank_of[number as usize] = rank as u32;
        }
        let (mut starts, mut placed) =
            place_by_group(groups, num_groups, |index| rank_of[numbers[index] as usize])?;
        sort_and_dedup_groups(&mut placed, &mut starts, u32::cmp);
        for value in &mut placed {
            *value = by_rank[*value as usize];
        }
        Ok(Taken {
            values: Self {
                numbers: placed,
                distinct,
            },
            order: None,
            starts,
        })
    }
}

/// Values per group, with repeats, in arrival order.
#[derive(Debug, Default)]
pub struct DedupGroups<L: LogValues> {
    /// Group of each value of `values`.
    groups: Vec<u32>,
    values: L,
    num_groups: usize,
}

impl<L: LogValues> DedupGroups<L> {
    /// Makes room for group indexes below `total_num_groups`.
    pub fn grow(&mut self, total_num_groups: usize) -> Result<()> {
        if u32::try_from(total_num_groups).is_err() {
            return exec_err!(
                "{total_num_groups} groups: at most {} are supported",
                u32::MAX
            );
        }
        self.num_groups = self.num_groups.max(total_num_groups);
        Ok(())
    }

    /// Adds a value to a group below the size given to [`Self::grow`].
    pub fn add(&mut self, group: usize, value: L::Item<'_>) {
        // `grow` checked that every group index fits.
        let group = group as u32;
        let last = self.groups.len().wrapping_sub(1);
        if self.groups.last() == Some(&group) && self.values.holds_at(last, value) {
            return;
        }
        self.groups.push(group);
        self.values.push(value);
    }

    /// Removes the groups `emit_to` names and returns them, each sorted and
    /// distinct; the groups left are renumbered from 0.
    pub fn take(&mut self, emit_to: EmitTo) -> Result<Taken<L>> {
        let taken_groups = match emit_to {
            EmitTo::All => self.num_groups,
            EmitTo::First(count) => count.min(self.num_groups),
        };
        let (groups, values) = if taken_groups == self.num_groups {
            (
                std::mem::take(&mut self.groups),
                std::mem::take(&mut self.values),
            )
        } else {
            self.split_off_first(taken_groups)
        };
        self.num_groups -= taken_groups;
        values.into_taken(&groups, taken_groups)
    }

    /// The values of groups below `count`, leaving the others renumbered.
    fn split_off_first(&mut self, count: usize) -> (Vec<u32>, L) {
        let mut taken = (Vec::new(), L::default());
        let mut kept = (Vec::new(), L::default());
        for (index, &group) in self.groups.iter().enumerate() {
            let value = self.values.item(index);
            // `count` is below `num_groups`, which `grow` kept within u32.
            match group.checked_sub(count as u32) {
                None => {
                    taken.0.push(group);
                    taken.1.push(value);
                }
                Some(renumbered) => {
                    kept.0.push(renumbered);
                    kept.1.push(value);
                }
            }
        }
        (self.groups, self.values) = kept;
        taken
    }

    /// Approximate memory held, for DataFusion's memory accounting.
    pub fn size(&self) -> usize {
        self.groups.capacity() * size_of::<u32>() + self.values.heap_bytes()
    }
}

/// Taken groups: each group's distinct values in ascending order.
#[derive(Debug)]
pub struct Taken<L: LogValues> {
    values: L,
    /// Indexes into `values` in answer order (group 0's distinct values,
    /// then group 1's, …); `None` when `values` itself is in that order.
    order: Option<Vec<u32>>,
    /// Where each group starts in answer order, and a last end.
    starts: Vec<u32>,
}

/// Counting sort by group: returns `(starts, placed)` where group g's values
/// are `placed[starts[g]..starts[g + 1]]`, in arrival order, each value `i`
/// placed as `place(i)`.
fn place_by_group<T: Copy + Default>(
    groups: &[u32],
    num_groups: usize,
    place: impl Fn(usize) -> T,
) -> Result<(Vec<u32>, Vec<T>)> {
    if u32::try_from(groups.len()).is_err() {
        return exec_err!(
            "{} values in one aggregate: at most {} are supported",
            groups.len(),
            u32::MAX
        );
    }
    // `starts[g + 1]` counts group g, then becomes its end.
    let mut starts = vec![0u32; num_groups + 1];
    for &group in groups {
        starts[group as usize + 1] += 1;
    }
    for group in 0..num_groups {
        starts[group + 1] += starts[group];
    }
    let mut next = starts.clone();
    let mut placed = vec![T::default(); groups.len()];
    for (index, &group) in groups.iter().enumerate() {
        let slot = &mut next[group as usize];
        placed[*slot as usize] = place(index);
        *slot += 1;
    }
    Ok((starts, placed))
}

/// Sorts each group's part of `placed` and keeps its distinct items, moved
/// down to close the gaps (never past where the group started, so in
/// place); `starts` is updated to match.
fn sort_and_dedup_groups<T: Copy>(
    placed: &mut Vec<T>,
    starts: &mut [u32],
    compare: impl Fn(&T, &T) -> Ordering,
) {
    let mut written = 0usize;
    let mut start = 0usize;
    for group_end in starts.iter_mut().skip(1) {
        let end = *group_end as usize;
        let members = &mut placed[start..end];
        if members.len() > 1 {
            members.sort_unstable_by(&compare);
        }
        for position in start..end {
            let item = placed[position];
            if position == start || compare(&placed[written - 1], &item) != Ordering::Equal {
                placed[written] = item;
                written += 1;
            }
        }
        // At most `placed.len()`, which `place_by_group` kept within u32.
        *group_end = written as u32;
        start = end;
    }
    placed.truncate(written);
}

/// Any log: the positions of its values are sorted, the values stay put.
fn take_by_position<L: LogValues>(
    values: L,
    groups: &[u32],
    num_groups: usize,
) -> Result<Taken<L>> {
    let (mut starts, mut order) = place_by_group(groups, num_groups, |index| index as u32)?;
    sort_and_dedup_groups(&mut order, &mut starts, |&a, &b| {
        values.item(a as usize).cmp(&values.item(b as usize))
    });
    Ok(Taken {
        values,
        order: Some(order),
        starts,
    })
}

impl<L: LogValues> Taken<L> {
    /// `num_groups` groups without values (an aggregate's default answer).
    pub fn empty(num_groups: usize) -> Self {
        Self {
            values: L::default(),
            order: None,
            starts: vec![0; num_groups + 1],
        }
    }

    /// Number of groups.
    pub fn num_groups(&self) -> usize {
        self.starts.len() - 1
    }

    /// Number of distinct values of `group`.
    pub fn group_len(&self, group: usize) -> usize {
        (self.starts[group + 1] - self.starts[group]) as usize
    }

    /// The value at `position` in answer order.
    fn at(&self, position: u32) -> L::Item<'_> {
        match &self.order {
            Some(order) => self.values.item(order[position as usize] as usize),
            None => self.values.item(position as usize),
        }
    }

    /// The distinct values of `group`, ascending.
    pub fn group(&self, group: usize) -> impl Iterator<Item = L::Item<'_>> + '_ {
        (self.starts[group]..self.starts[group + 1]).map(|position| self.at(position))
    }

    /// Every group's distinct values, group after group.
    pub fn all_values(&self) -> impl Iterator<Item = L::Item<'_>> + '_ {
        (0..self.num_values() as u32).map(|position| self.at(position))
    }

    /// Where each group starts in [`Self::all_values`], and a last end, as
    /// the offsets of a list array (one list per group).
    pub fn list_offsets(&self) -> Result<OffsetBuffer<i32>> {
        let offsets = self
            .starts
            .iter()
            .map(|&start| i32::try_from(start))
            .collect::<std::result::Result<Vec<i32>, _>>();
        match offsets {
            Ok(offsets) => Ok(OffsetBuffer::new(ScalarBuffer::from(offsets))),
            Err(_) => exec_err!("more than {} values in one list array", i32::MAX),
        }
    }

    /// Number of distinct values over all groups.
    pub fn num_values(&self) -> usize {
        self.starts.last().map_or(0, |&end| end as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn groups_of<L: LogValues>(taken: &Taken<L>) -> Vec<Vec<L::Item<'_>>> {
        (0..taken.num_groups())
            .map(|group| taken.group(group).collect())
            .collect()
    }

    #[test]
    fn repeats_are_removed_and_values_sorted_per_group() -> Result<()> {
        let mut log = DedupGroups::<Vec<u64>>::default();
        log.grow(3)?;
        for value in (0..1000).map(|index| (1000 - index) % 3) {
            log.add(0, value);
        }
        for value in (0..500).rev() {
            log.add(2, value);
            log.add(2, value);
            log.add(0, 7);
        }
        // Group 1 gets nothing.
        let taken = log.take(EmitTo::All)?;
        assert_eq!(
            groups_of(&taken),
            vec![vec![0, 1, 2, 7], vec![], (0..500).collect::<Vec<u64>>()]
        );
        assert_eq!(taken.list_offsets()?.as_ref(), &[0, 4, 4, 504]);
        assert_eq!(log.size(), 0);
        Ok(())
    }

    #[test]
    fn strings_are_compared_by_their_bytes() -> Result<()> {
        let mut log = DedupGroups::<InternedStrings>::default();
        log.grow(2)?;
        for (group, value) in [
            (1, "/b"),
            (0, "/z"),
            (1, "/a"),
            (1, "/b"),
            (0, ""),
            (1, "/b"),
        ] {
            log.add(group, value.as_bytes());
        }
        let taken = log.take(EmitTo::All)?;
        let expected: Vec<Vec<&[u8]>> = vec![vec![b"", b"/z"], vec![b"/a", b"/b"]];
        assert_eq!(groups_of(&taken), expected);
        Ok(())
    }

    #[test]
    fn strings_left_after_taking_the_first_groups_keep_their_text() -> Result<()> {
        let mut log = DedupGroups::<InternedStrings>::default();
        log.grow(3)?;
        for (group, value) in [(2, "/c"), (0, "/a"), (1, "/b"), (2, "/a"), (0, "/a")] {
            log.add(group, value.as_bytes());
        }
        let first = log.take(EmitTo::First(1))?;
        let expected: Vec<Vec<&[u8]>> = vec![vec![b"/a"]];
        assert_eq!(groups_of(&first), expected);
        log.add(0, b"/d");
        let rest = log.take(EmitTo::All)?;
        let expected: Vec<Vec<&[u8]>> = vec![vec![b"/b", b"/d"], vec![b"/a", b"/c"]];
        assert_eq!(groups_of(&rest), expected);
        Ok(())
    }

    #[test]
    fn taking_the_first_groups_renumbers_the_rest() -> Result<()> {
        let mut log = DedupGroups::<Vec<u64>>::default();
        log.grow(4)?;
        for (group, value) in [(3, 30), (0, 1), (2, 20), (1, 10), (0, 1), (3, 31), (0, 2)] {
            log.add(group, value);
        }
        let first = log.take(EmitTo::First(2))?;
        assert_eq!(groups_of(&first), vec![vec![1, 2], vec![10]]);
        // Groups 2 and 3 are now 0 and 1; a new group 2 can be added.
        log.grow(3)?;
        log.add(2, 5);
        log.add(0, 21);
        let rest = log.take(EmitTo::All)?;
        assert_eq!(groups_of(&rest), vec![vec![20, 21], vec![30, 31], vec![5]]);
        Ok(())
    }
}
