//! The per-group state behind `entry_value` / `exit_value`: one candidate row
//! per group, kept in flat storage.
//!
//! A session table has one row per session and fourteen picks per row, so this
//! state is most of the memory a `GROUP BY session_id` holds. Each group with
//! a pick gets a fixed 24-byte slot (ordering key and where its text is),
//! found through a 4-byte index while few groups have one, and the text of
//! the kept value and tiebreak lives in one chunked byte arena per accumulator: no
//! allocation per group or per replacement, and about half the bytes of an
//! owned `String` pair per group. A replaced pick reuses its arena bytes when
//! the new text fits; it is compacted when more than half of it is dead.

use std::cmp::Ordering;
use std::mem::size_of;

use datafusion::arrow::array::BooleanBufferBuilder;
use datafusion::arrow::array::StringArray;
use datafusion::arrow::buffer::{Buffer, NullBuffer, OffsetBuffer, ScalarBuffer};
use datafusion::common::{Result, exec_err};
use datafusion::logical_expr::EmitTo;

/// Arena size below which dead bytes are never compacted away.
const COMPACT_FROM_BYTES: usize = 64 * 1024 * 1024;

/// `value_len` of a slot that holds no pick yet.
const EMPTY: u32 = u32::MAX;

/// Bit of [`Slot::tiebreak`]: the kept row was a priority row.
const PRIORITY_BIT: u32 = 1 << 31;

/// Bits of [`Slot::tiebreak`] that hold the tiebreak's length in the arena.
const LENGTH_BITS: u32 = PRIORITY_BIT - 1;

/// Length bits of a slot without a tiebreak (a null `tiebreak` argument).
const NO_TIEBREAK: u32 = LENGTH_BITS;

/// Bytes per arena chunk. Chunks after the first never move, so the arena
/// grows without copying what it holds or touching twice the memory a
/// doubling `Vec` would (page faults were a fifth of the full sessions
/// table's time).
const CHUNK_BYTES: usize = 1 << 20;

/// Append-only text storage in chunks; a place is `chunk << 32 | offset`.
#[derive(Debug, Default)]
struct ChunkedArena {
    chunks: Vec<Vec<u8>>,
    /// Bytes written, over all chunks.
    written: usize,
}

impl ChunkedArena {
    /// Appends `first` then `second` contiguously; returns their place.
    fn push(&mut self, first: &[u8], second: &[u8]) -> u64 {
        let needed = first.len() + second.len();
        let fits = self
            .chunks
            .last()
            .is_some_and(|chunk| chunk.capacity() - chunk.len() >= needed);
        if !fits {
            // The first chunk grows as a `Vec` does up to a chunk's size (a
            // query over few sessions holds little; places are indexes, so
            // it may move); later chunks are allocated whole.
            match self.chunks.as_mut_slice() {
                [only] if only.len() + needed <= CHUNK_BYTES => only.reserve(needed),
                [] => self.chunks.push(Vec::with_capacity(needed)),
                _ => self
                    .chunks
                    .push(Vec::with_capacity(needed.max(CHUNK_BYTES))),
            }
        }
        let index = self.chunks.len() - 1;
        let chunk = &mut self.chunks[index];
        let offset = chunk.len();
        chunk.extend_from_slice(first);
        chunk.extend_from_slice(second);
        self.written += needed;
        // A chunk holds less than 4 GiB: texts are at most `u32::MAX` bytes.
        ((index as u64) << 32) | offset as u64
    }

    fn bytes(&self, place: u64, len: usize) -> Option<&[u8]> {
        let (index, offset) = chunk_and_offset(place);
        self.chunks.get(index)?.get(offset..offset + len)
    }

    fn bytes_mut(&mut self, place: u64, len: usize) -> Option<&mut [u8]> {
        let (index, offset) = chunk_and_offset(place);
        self.chunks.get_mut(index)?.get_mut(offset..offset + len)
    }

    fn capacity(&self) -> usize {
        self.chunks.iter().map(Vec::capacity).sum()
    }
}

/// The chunk index and the offset in it of an arena place.
fn chunk_and_offset(place: u64) -> (usize, usize) {
    ((place >> 32) as usize, (place & 0xffff_ffff) as usize)
}

/// Slots per chunk of [`ChunkedSlots`] (768 KiB of 24-byte slots).
const SLOTS_PER_CHUNK: usize = 1 << 15;

/// One slot per group in fixed-size chunks. A `Vec` of slots doubles by
/// reallocating: with fourteen picks per session, copying the old slots into
/// new memory was a fifth of the full sessions table's page faults. Chunks
/// never move; growing only adds chunks.
#[derive(Debug, Default)]
struct ChunkedSlots {
    chunks: Vec<Vec<Slot>>,
    len: usize,
}

impl ChunkedSlots {
    fn len(&self) -> usize {
        self.len
    }

    /// Grows to `len` slots, new ones empty (never shrinks).
    fn grow_to(&mut self, len: usize) {
        while self.len < len {
            if self
                .chunks
                .last()
                .is_none_or(|chunk| chunk.len() == SLOTS_PER_CHUNK)
            {
                // The first chunk grows as a `Vec` does (a query over few
                // sessions holds little); later ones are allocated whole.
                let capacity = if self.chunks.is_empty() {
                    0
                } else {
                    SLOTS_PER_CHUNK
                };
                self.chunks.push(Vec::with_capacity(capacity));
            }
            let Some(chunk) = self.chunks.last_mut() else {
                return;
            };
            let added = (SLOTS_PER_CHUNK - chunk.len()).min(len - self.len);
            chunk.resize(chunk.len() + added, Slot::default());
            self.len += added;
        }
    }

    fn get(&self, index: usize) -> Option<&Slot> {
        self.chunks
            .get(index / SLOTS_PER_CHUNK)?
            .get(index % SLOTS_PER_CHUNK)
    }

    fn get_mut(&mut self, index: usize) -> Option<&mut Slot> {
        self.chunks
            .get_mut(index / SLOTS_PER_CHUNK)?
            .get_mut(index % SLOTS_PER_CHUNK)
    }

    /// The first `count` slots, in order.
    fn iter_first(&self, count: usize) -> impl Iterator<Item = &Slot> {
        self.chunks.iter().flatten().take(count)
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = &mut Slot> {
        self.chunks.iter_mut().flatten()
    }

    /// Removes the first `count` slots; later slots move down.
    fn remove_first(&mut self, count: usize) {
        let kept: Vec<Slot> = self.chunks.iter().flatten().skip(count).copied().collect();
        *self = Self::default();
        self.grow_to(kept.len());
        for (slot, kept) in self.iter_mut().zip(kept) {
            *slot = kept;
        }
    }

    fn capacity_bytes(&self) -> usize {
        self.chunks.iter().map(Vec::capacity).sum::<usize>() * size_of::<Slot>()
    }
}

/// The slots of a pick's groups. Most of the sessions table's picks are
/// sparse (a session's first `utm_term`, `gclid`, external click…: at 10M
/// events six of fourteen picks had a value in under a tenth of sessions),
/// so slots start behind an index of 4 bytes a group and only groups with
/// a pick get one; once more than half the groups have one, every group
/// gets its slot directly (no index to read first).
#[derive(Debug)]
struct GroupSlots {
    /// Indexed: the filled groups' slots, in the order they were filled;
    /// direct: one slot per group.
    slots: ChunkedSlots,
    /// Per group, 0 when it has no slot yet, else 1 + its slot's position
    /// in `slots`; `None` once direct.
    index: Option<Vec<u32>>,
}

impl Default for GroupSlots {
    fn default() -> Self {
        Self {
            slots: ChunkedSlots::default(),
            index: Some(Vec::new()),
        }
    }
}

impl GroupSlots {
    /// Number of groups.
    fn len(&self) -> usize {
        match &self.index {
            Some(index) => index.len(),
            None => self.slots.len(),
        }
    }

    /// Grows to `len` groups, new ones empty (never shrinks).
    fn grow_to(&mut self, len: usize) {
        match &mut self.index {
            Some(index) if index.len() < len => index.resize(len, 0),
            Some(_) => {}
            None => self.slots.grow_to(len),
        }
    }

    /// The slot of `group` (empty when it has none); `None` past the end.
    fn get(&self, group: usize) -> Option<&Slot> {
        match &self.index {
            None => self.slots.get(group),
            Some(index) => match *index.get(group)? {
                0 => Some(&EMPTY_SLOT),
                position => self.slots.get(position as usize - 1),
            },
        }
    }

    /// The slot of `group` to write, made first if the group has none.
    fn get_mut(&mut self, group: usize) -> Option<&mut Slot> {
        let Some(index) = &mut self.index else {
            return self.slots.get_mut(group);
        };
        let position = *index.get(group)?;
        if position != 0 {
            return self.slots.get_mut(position as usize - 1);
        }
        let filled = self.slots.len() + 1;
        match u32::try_from(filled) {
            Ok(position) if filled * 2 <= index.len() => {
                index[group] = position;
                self.slots.grow_to(filled);
                self.slots.get_mut(filled - 1)
            }
            _ => {
                self.make_direct();
                self.slots.get_mut(group)
            }
        }
    }

    /// Gives every group its slot directly.
    fn make_direct(&mut self) {
        let Some(index) = self.index.take() else {
            return;
        };
        let mut direct = ChunkedSlots::default();
        direct.grow_to(index.len());
        for (slot, &position) in direct.iter_mut().zip(&index) {
            if position != 0
                && let Some(filled) = self.slots.get(position as usize - 1)
            {
                *slot = *filled;
            }
        }
        self.slots = direct;
    }

    /// Calls `visit` with the slots of the first `count` groups, in order.
    fn for_each_first(&self, count: usize, mut visit: impl FnMut(&Slot)) {
        match &self.index {
            None => self.slots.iter_first(count).for_each(visit),
            Some(index) => {
                for &position in index.iter().take(count) {
                    visit(self.get_at(position));
                }
            }
        }
    }

    /// The slot an index entry points to.
    fn get_at(&self, position: u32) -> &Slot {
        match position {
            0 => &EMPTY_SLOT,
            position => self.slots.get(position as usize - 1).unwrap_or(&EMPTY_SLOT),
        }
    }

    /// Every filled slot (and, when direct, the empty ones), in no order.
    fn all_mut(&mut self) -> impl Iterator<Item = &mut Slot> {
        self.slots.iter_mut()
    }

    /// Removes the first `count` groups; later groups move down.
    fn remove_first(&mut self, count: usize) {
        let count = count.min(self.len());
        match &self.index {
            None => self.slots.remove_first(count),
            Some(index) => {
                let mut slots = ChunkedSlots::default();
                let mut kept = Vec::with_capacity(index.len() - count);
                for &position in &index[count..] {
                    if position == 0 {
                        kept.push(0);
                        continue;
                    }
                    let filled = slots.len() + 1;
                    slots.grow_to(filled);
                    if let Some(slot) = slots.get_mut(filled - 1) {
                        *slot = *self.get_at(position);
                    }
                    // Fewer slots than before, whose positions fitted.
                    kept.push(filled as u32);
                }
                self.slots = slots;
                self.index = Some(kept);
            }
        }
    }

    fn capacity_bytes(&self) -> usize {
        self.slots.capacity_bytes()
            + self
                .index
                .as_ref()
                .map_or(0, |index| index.capacity() * size_of::<u32>())
    }
}

/// The ordering key of one row: what decides between two candidates.
#[derive(Debug, Clone, Copy)]
pub struct PickKey<'a> {
    /// `$pageview` / `$screen` rows beat all others.
    pub is_priority: bool,
    /// Event time in microseconds.
    pub timestamp: i64,
    /// Decides between rows of equal time (the event uuid).
    pub tiebreak: Option<&'a str>,
}

impl PickKey<'_> {
    /// True when this row should be kept over `other`: a priority row beats
    /// a non-priority one; between rows of equal priority, the one whose
    /// (time, tiebreak) compares to the other's as `wins`. The same rule as
    /// [`PickSlots::beats`], between two rows not yet stored.
    pub fn beats(&self, other: &PickKey<'_>, wins: Ordering) -> bool {
        if self.is_priority != other.is_priority {
            return self.is_priority;
        }
        self.timestamp
            .cmp(&other.timestamp)
            .then_with(|| self.tiebreak.cmp(&other.tiebreak))
            == wins
    }
}

/// One group's kept candidate, in 24 bytes: at 32, the slots of fourteen
/// picks per session were a quarter of the full sessions table's memory.
#[derive(Debug, Clone, Copy)]
struct Slot {
    timestamp: i64,
    /// Place of the value's bytes in the arena; the tiebreak follows them.
    start: u64,
    /// Value length, or [`EMPTY`] until a row arrives.
    value_len: u32,
    /// In the [`LENGTH_BITS`], the tiebreak's length in the arena (or
    /// [`NO_TIEBREAK`]); the top bit is [`PRIORITY_BIT`].
    tiebreak: u32,
}

const _: () = assert!(size_of::<Slot>() == 24);

/// The slot of a group without a pick.
const EMPTY_SLOT: Slot = Slot {
    timestamp: 0,
    start: 0,
    value_len: EMPTY,
    tiebreak: NO_TIEBREAK,
};

impl Default for Slot {
    fn default() -> Self {
        EMPTY_SLOT
    }
}

impl Slot {
    fn is_filled(&self) -> bool {
        self.value_len != EMPTY
    }

    fn is_priority(&self) -> bool {
        self.tiebreak & PRIORITY_BIT != 0
    }

    /// Arena bytes of value and tiebreak.
    fn text_len(&self) -> usize {
        self.value_len as usize + self.tiebreak_bytes()
    }

    fn tiebreak_bytes(&self) -> usize {
        match self.tiebreak & LENGTH_BITS {
            NO_TIEBREAK => 0,
            len => len as usize,
        }
    }
}

/// A group's kept pick as read back: borrowed from the arena.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeptPick<'a> {
    /// The picked value.
    pub value: &'a str,
    /// Whether the picked row was a priority row.
    pub is_priority: bool,
    /// The picked row's time in microseconds.
    pub timestamp: i64,
    /// The picked row's tiebreak.
    pub tiebreak: Option<&'a str>,
}

/// One candidate per group: slots indexed by group, text in one arena.
#[derive(Debug, Default)]
pub struct PickSlots {
    slots: GroupSlots,
    arena: ChunkedArena,
    /// Arena bytes no slot reserves any more.
    dead_bytes: usize,
}

impl PickSlots {
    /// Makes room for group indexes below `total_num_groups`.
    pub fn grow(&mut self, total_num_groups: usize) {
        if self.slots.len() < total_num_groups {
            self.slots.grow_to(total_num_groups);
        }
    }

    /// True when `candidate` should replace the group's kept row (or the
    /// group has none): a priority row beats a non-priority one; between
    /// rows of equal priority, the one whose (time, tiebreak) compares to
    /// the kept row's as `wins` (`Less`: the earlier, `Greater`: the later).
    pub fn beats(&self, group: usize, candidate: &PickKey<'_>, wins: Ordering) -> bool {
        let Some(slot) = self.slots.get(group).filter(|slot| slot.is_filled()) else {
            return true;
        };
        if slot.is_priority() != candidate.is_priority {
            return candidate.is_priority;
        }
        let order = candidate.timestamp.cmp(&slot.timestamp).then_with(|| {
            // Byte order is `str` order; comparing bytes skips the UTF-8
            // check reading the kept text back as `str` would do.
            let kept = self
                .tiebreak_range(slot)
                .and_then(|(start, len)| self.arena.bytes(start, len));
            candidate.tiebreak.map(str::as_bytes).cmp(&kept)
        });
        order == wins
    }

    /// Keeps `value` and `key` as the group's row, replacing what it held.
    pub fn store(&mut self, group: usize, value: &str, key: &PickKey<'_>) -> Result<()> {
        let (tiebreak, mut tiebreak_bits): (&[u8], u32) = match key.tiebreak {
            Some(text) => match u32::try_from(text.len()) {
                Ok(len) if len < NO_TIEBREAK => (text.as_bytes(), len),
                _ => return exec_err!("entry_value/exit_value: the tiebreak is too long"),
            },
            None => (&[], NO_TIEBREAK),
        };
        if key.is_priority {
            tiebreak_bits |= PRIORITY_BIT;
        }
        let needed = value.len() + tiebreak.len();
        let value_len = match u32::try_from(value.len()) {
            Ok(len) if len != EMPTY && u32::try_from(needed).is_ok() => len,
            _ => return exec_err!("entry_value/exit_value: a value of {needed} bytes is too long"),
        };
        let Some(&slot) = self.slots.get(group) else {
            return exec_err!("entry_value/exit_value: group {group} has no slot");
        };
        let kept_len = slot.text_len();
        let in_place = if slot.is_filled() && needed <= kept_len {
            self.arena.bytes_mut(slot.start, needed)
        } else {
            None
        };
        let start = match in_place {
            Some(bytes) => {
                bytes[..value.len()].copy_from_slice(value.as_bytes());
                bytes[value.len()..].copy_from_slice(tiebreak);
                self.dead_bytes += kept_len - needed;
                slot.start
            }
            None => {
                if slot.is_filled() {
                    self.dead_bytes += kept_len;
                }
                self.arena.push(value.as_bytes(), tiebreak)
            }
        };
        let Some(kept) = self.slots.get_mut(group) else {
            return exec_err!("entry_value/exit_value: group {group} has no slot");
        };
        *kept = Slot {
            timestamp: key.timestamp,
            start,
            value_len,
            tiebreak: tiebreak_bits,
        };
        if self.dead_bytes > COMPACT_FROM_BYTES && self.dead_bytes > self.arena.written / 2 {
            self.compact(0);
        }
        Ok(())
    }

    /// The kept row of a group, if any.
    pub fn get(&self, group: usize) -> Option<KeptPick<'_>> {
        let slot = self.slots.get(group)?;
        slot.is_filled().then(|| KeptPick {
            value: self.text(slot.start, slot.value_len as usize),
            is_priority: slot.is_priority(),
            timestamp: slot.timestamp,
            tiebreak: self.tiebreak(slot),
        })
    }

    /// Calls `visit` with the kept rows of the groups `emit_to` names, in
    /// group order, then removes those groups (later groups move down).
    pub fn drain(&mut self, emit_to: EmitTo, mut visit: impl FnMut(Option<KeptPick<'_>>)) {
        let taken = self.taken(emit_to);
        for group in 0..taken {
            visit(self.get(group));
        }
        self.remove_first(taken);
    }

    /// The kept values of the groups `emit_to` names, as one string array
    /// (null for a group without a pick), then removes those groups. The
    /// text is checked as UTF-8 once for the whole array, not value by value
    /// as [`PickSlots::get`] does.
    pub fn drain_values(&mut self, emit_to: EmitTo) -> Result<StringArray> {
        let taken = self.taken(emit_to);
        let mut text_bytes = 0;
        self.slots.for_each_first(taken, |slot| {
            if slot.is_filled() {
                text_bytes += slot.value_len as usize;
            }
        });
        // Every offset is at most the total.
        if i32::try_from(text_bytes).is_err() {
            return exec_err!("entry_value/exit_value: more than 2 GiB of values in one batch");
        }
        let mut text = Vec::with_capacity(text_bytes);
        let mut offsets = Vec::with_capacity(taken + 1);
        offsets.push(0i32);
        let mut filled = BooleanBufferBuilder::new(taken);
        self.slots.for_each_first(taken, |slot| {
            filled.append(slot.is_filled());
            if slot.is_filled()
                && let Some(value) = self.arena.bytes(slot.start, slot.value_len as usize)
            {
                text.extend_from_slice(value);
            }
            offsets.push(text.len() as i32);
        });
        let nulls = Some(NullBuffer::new(filled.finish())).filter(|nulls| nulls.null_count() > 0);
        let values = StringArray::try_new(
            OffsetBuffer::new(ScalarBuffer::from(offsets)),
            Buffer::from_vec(text),
            nulls,
        )?;
        self.remove_first(taken);
        Ok(values)
    }

    /// How many groups, from the first, `emit_to` names.
    fn taken(&self, emit_to: EmitTo) -> usize {
        match emit_to {
            EmitTo::All => self.slots.len(),
            EmitTo::First(count) => count.min(self.slots.len()),
        }
    }

    /// Removes the first `taken` groups (later groups move down).
    fn remove_first(&mut self, taken: usize) {
        if taken == self.slots.len() {
            self.slots = GroupSlots::default();
            self.arena = ChunkedArena::default();
            self.dead_bytes = 0;
        } else {
            self.compact(taken);
        }
    }

    /// Approximate bytes held, for DataFusion's memory accounting.
    pub fn size(&self) -> usize {
        self.slots.capacity_bytes() + self.arena.capacity()
    }

    fn tiebreak(&self, slot: &Slot) -> Option<&str> {
        self.tiebreak_range(slot)
            .map(|(start, len)| self.text(start, len))
    }

    /// Where a slot's tiebreak text is in the arena, if it has one.
    fn tiebreak_range(&self, slot: &Slot) -> Option<(u64, usize)> {
        (slot.tiebreak & LENGTH_BITS != NO_TIEBREAK).then(|| {
            (
                slot.start + u64::from(slot.value_len),
                slot.tiebreak_bytes(),
            )
        })
    }

    /// Arena text written by `store` from a `&str`, so always UTF-8; an empty
    /// string stands in if that ever failed to hold.
    fn text(&self, start: u64, len: usize) -> &str {
        self.arena
            .bytes(start, len)
            .and_then(|bytes| std::str::from_utf8(bytes).ok())
            .unwrap_or_default()
    }

    /// Drops the first `removed` slots and rewrites the arena with only the
    /// live text of the others.
    fn compact(&mut self, removed: usize) {
        self.slots.remove_first(removed);
        let mut arena = ChunkedArena::default();
        for slot in self.slots.all_mut().filter(|slot| slot.is_filled()) {
            let text = self
                .arena
                .bytes(slot.start, slot.text_len())
                .unwrap_or_default();
            slot.start = arena.push(text, &[]);
        }
        self.arena = arena;
        self.dead_bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::Array;

    use super::*;

    /// A straightforward model: owned strings per group.
    type ModelPick = (String, bool, i64, Option<String>);

    fn key<'a>(is_priority: bool, timestamp: i64, tiebreak: Option<&'a str>) -> PickKey<'a> {
        PickKey {
            is_priority,
            timestamp,
            tiebreak,
        }
    }

    #[test]
    fn priority_beats_time_and_time_beats_tiebreak() {
        let mut slots = PickSlots::default();
        slots.grow(1);
        let earlier = Ordering::Less;
        let later = Ordering::Greater;
        assert!(slots.beats(0, &key(false, 5, Some("b")), earlier));
        slots
            .store(0, "kept", &key(false, 5, Some("b")))
            .expect("stored");
        assert!(slots.beats(0, &key(true, 9, Some("z")), earlier));
        assert!(slots.beats(0, &key(true, 1, Some("a")), later));
        assert!(slots.beats(0, &key(false, 4, Some("z")), earlier));
        assert!(!slots.beats(0, &key(false, 4, Some("z")), later));
        assert!(slots.beats(0, &key(false, 6, None), later));
        assert!(slots.beats(0, &key(false, 5, Some("a")), earlier));
        assert!(slots.beats(0, &key(false, 5, Some("c")), later));
        assert!(slots.beats(0, &key(false, 5, None), earlier));
        assert!(!slots.beats(0, &key(false, 5, Some("b")), earlier));
        assert!(!slots.beats(0, &key(false, 5, Some("b")), later));
        slots.store(0, "prio", &key(true, 7, None)).expect("stored");
        assert!(!slots.beats(0, &key(false, 1, Some("a")), earlier));
        assert!(!slots.beats(0, &key(false, 9, Some("a")), later));
        assert!(slots.beats(0, &key(true, 7, Some("")), later));
    }

    /// Texts over several arena chunks, one larger than a chunk, read back.
    #[test]
    fn texts_spanning_many_chunks_read_back() {
        let mut slots = PickSlots::default();
        // 3.5 MB of text: the first chunk (grown past 1 MiB by doubling),
        // whole chunks after it, and one of its own for the huge text.
        let groups = 5000;
        slots.grow(groups + 1);
        let text = |group: usize| format!("{group:06}-").repeat(100);
        for group in 0..groups {
            let tiebreak = format!("uuid-{group}");
            slots
                .store(group, &text(group), &key(false, 1, Some(&tiebreak)))
                .expect("stored");
        }
        let huge = "h".repeat(CHUNK_BYTES + 5);
        slots
            .store(groups, &huge, &key(true, 2, None))
            .expect("stored");
        assert!(slots.arena.chunks.len() > 3);
        for group in 0..groups {
            let pick = slots.get(group).expect("kept");
            assert_eq!(pick.value, text(group));
            assert_eq!(pick.tiebreak, Some(format!("uuid-{group}").as_str()));
        }
        assert_eq!(
            slots.get(groups).map(|pick| pick.value.len()),
            Some(huge.len())
        );
        let mut seen = 0;
        slots.drain(EmitTo::First(10), |_| seen += 1);
        assert_eq!(seen, 10);
        assert_eq!(
            slots.get(0).map(|pick| pick.value.to_owned()),
            Some(text(10))
        );
        assert_eq!(
            slots.get(groups - 10).map(|pick| pick.value.len()),
            Some(huge.len())
        );
    }

    /// Groups on both sides of chunk boundaries keep their picks, and a
    /// partial drain across a boundary moves the rest down in order.
    #[test]
    fn slots_across_chunks_read_back_and_drain_in_order() {
        let groups = 2 * SLOTS_PER_CHUNK + 5;
        let mut slots = PickSlots::default();
        slots.grow(SLOTS_PER_CHUNK - 1);
        slots.grow(groups);
        let stored: Vec<usize> = (0..groups)
            .filter(|group| group % 997 == 3 || group % SLOTS_PER_CHUNK < 2)
            .collect();
        for &group in &stored {
            let value = format!("v{group}");
            slots
                .store(group, &value, &key(true, group as i64, Some("t")))
                .expect("stored");
        }
        for group in 0..groups {
            let expected = stored.contains(&group).then(|| format!("v{group}"));
            assert_eq!(slots.get(group).map(|pick| pick.value.to_owned()), expected);
        }
        let first = SLOTS_PER_CHUNK + 3;
        let values = slots.drain_values(EmitTo::First(first)).expect("drained");
        assert_eq!(values.len(), first);
        for group in 0..first {
            let expected = stored.contains(&group).then(|| format!("v{group}"));
            assert_eq!(
                values
                    .is_valid(group)
                    .then(|| values.value(group).to_owned()),
                expected
            );
        }
        for group in first..groups {
            let expected = stored.contains(&group).then(|| format!("v{group}"));
            assert_eq!(
                slots.get(group - first).map(|pick| pick.value.to_owned()),
                expected,
                "group {group}"
            );
        }
        assert!(slots.get(groups - first).is_none());
    }

    /// Random stores of texts of varying length into random groups, with
    /// partial drains (whole picks, or values only), against the model:
    /// every kept row reads back exactly. Once with stores into any group
    /// (slots soon direct), once into every fifth (slots stay indexed).
    #[test]
    fn agrees_with_owned_strings_through_replacements_and_drains() {
        agrees_with_model(1);
        agrees_with_model(5);
    }

    fn agrees_with_model(spread: u64) {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move |bound: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % bound
        };
        let mut slots = PickSlots::default();
        let mut model: Vec<Option<ModelPick>> = Vec::new();
        let mut indexed_partial_drains = 0;
        for round in 0..200 {
            let groups = 1 + next(40) as usize;
            slots.grow(groups);
            if model.len() < groups {
                model.resize(groups, None);
            }
            for _ in 0..100 {
                let group = (next(groups as u64) / spread * spread) as usize;
                let value = "é".repeat(next(12) as usize) + &"v".repeat(next(30) as usize);
                let tiebreak = (next(4) != 0).then(|| "t".repeat(next(40) as usize));
                let row = key(next(2) == 0, next(1000) as i64, tiebreak.as_deref());
                slots.store(group, &value, &row).expect("stored");
                model[group] = Some((value, row.is_priority, row.timestamp, tiebreak));
            }
            let emit_to = if round % 3 == 0 {
                EmitTo::All
            } else {
                EmitTo::First(next(model.len() as u64 + 1) as usize)
            };
            if slots.slots.index.is_some() && matches!(emit_to, EmitTo::First(_)) {
                indexed_partial_drains += 1;
            }
            let expected: Vec<Option<ModelPick>> = match emit_to {
                EmitTo::All => std::mem::take(&mut model),
                EmitTo::First(count) => model.drain(..count).collect(),
            };
            if round % 2 == 0 {
                let mut seen = Vec::new();
                slots.drain(emit_to, |pick| {
                    seen.push(pick.map(|pick| {
                        (
                            pick.value.to_owned(),
                            pick.is_priority,
                            pick.timestamp,
                            pick.tiebreak.map(str::to_owned),
                        )
                    }))
                });
                assert_eq!(seen, expected, "round {round}");
            } else {
                let values = slots.drain_values(emit_to).expect("drained");
                let expected_values: Vec<Option<&str>> = expected
                    .iter()
                    .map(|pick| pick.as_ref().map(|pick| pick.0.as_str()))
                    .collect();
                assert_eq!(
                    values.iter().collect::<Vec<_>>(),
                    expected_values,
                    "round {round}"
                );
            }
            assert_eq!(slots.slots.len(), model.len());
            for (group, kept) in model.iter().enumerate() {
                let read = slots.get(group).map(|pick| {
                    (
                        pick.value.to_owned(),
                        pick.is_priority,
                        pick.timestamp,
                        pick.tiebreak.map(str::to_owned),
                    )
                });
                assert_eq!(&read, kept, "round {round}, group {group}");
            }
        }
        if spread > 1 {
            assert!(indexed_partial_drains > 20, "{indexed_partial_drains}");
        }
    }
}
