//! `session_uuid(distinct_id, session_start)`: the id of a derived session
//! (spec §1): a UUIDv7 whose 48-bit millisecond time is the session's first
//! event time and whose other bits hash `distinct_id` and that time, so ids are
//! stable across runs and machines and sort by session start.

use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{Array, StringBuilder};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::cast::as_timestamp_microsecond_array;
use datafusion::common::{Result, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
};

use crate::args::{
    SESSIONQL_DOC_SECTION, arrays, coerce_to_timestamp_us, coerce_to_utf8, documented_signature,
    string_arg,
};
use crate::stable_hash::stable_hash64;
use crate::timestamp_us_utc;

const NAME: &str = "session_uuid";
const UUID_VERSION_7: u128 = 0x7;
const UUID_VARIANT_RFC4122: u128 = 0b10;

/// The `session_uuid` scalar function.
pub fn session_uuid_udf() -> Arc<ScalarUDF> {
    Arc::new(ScalarUDF::from(SessionUuid::new()))
}

/// Implementation of `session_uuid`; see the module documentation.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct SessionUuid {
    signature: Signature,
}

impl SessionUuid {
    fn new() -> Self {
        Self {
            signature: documented_signature(vec![vec![DataType::Utf8, timestamp_us_utc()]]),
        }
    }
}

static DOCUMENTATION: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        SESSIONQL_DOC_SECTION,
        "Deterministic UUIDv7 id of a derived session: the UUID's time is the session's \
         start (milliseconds), its random bits a stable hash of distinct_id and the start.",
        "session_uuid(distinct_id, session_start)",
    )
    .with_sql_example(
        "```sql\n> SELECT session_uuid('user-1', TIMESTAMP '2024-01-01T00:00:00Z');\n```",
    )
    .with_argument("distinct_id", "The user the session belongs to.")
    .with_argument(
        "session_start",
        "Time of the session's first event, as returned by session_start.",
    )
    .with_related_udf("session_start")
    .build()
});

/// Formats the UUIDv7 of one derived session.
pub fn derived_session_uuid(distinct_id: &str, session_start_us: i64) -> String {
    let mut key = Vec::with_capacity(distinct_id.len() + 8);
    key.extend_from_slice(&session_start_us.to_le_bytes());
    key.extend_from_slice(distinct_id.as_bytes());
    uuid_v7_from_key(session_start_us, &key)
}

/// A UUIDv7 for time `unix_us` whose 74 "random" bits are a stable hash of
/// `key`: the same key and time always give the same id, so anything that
/// must name itself deterministically (a derived session, an ingested event
/// that came without a uuid) gets an id that sorts by time like the SDK's.
pub fn uuid_v7_from_key(unix_us: i64, key: &[u8]) -> String {
    let unix_ms = unix_us.div_euclid(1000) as u128 & 0xffff_ffff_ffff;
    let rand_a = u128::from(stable_hash64(1, key)) & 0xfff;
    let rand_b = u128::from(stable_hash64(2, key)) & 0x3fff_ffff_ffff_ffff;
    let bits = (unix_ms << 80)
        | (UUID_VERSION_7 << 76)
        | (rand_a << 64)
        | (UUID_VARIANT_RFC4122 << 62)
        | rand_b;
    uuid_text(bits)
}

/// The canonical text of a UUID: 32 lower-case hex digits in groups of
/// 8-4-4-4-12. Public so that other writers of UUIDs (the data generator,
/// tests) spell them as session ids are spelled.
pub fn uuid_text(bits: u128) -> String {
    // Only ASCII hex digits and hyphens are written.
    String::from_utf8_lossy(&uuid_ascii(bits)).into_owned()
}

/// [`uuid_text`] as its 36 ASCII bytes, for writers that append them to
/// a column themselves (a distinct filter writes millions of ids back out
/// of their numbers): each byte of the UUID is looked up as its two digits.
pub fn uuid_ascii(bits: u128) -> [u8; 36] {
    /// Where the two digits of each byte of the UUID go.
    const PLACES: [usize; 16] = [0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34];
    let mut text = [b'-'; 36];
    for (byte, at) in bits.to_be_bytes().into_iter().zip(PLACES) {
        let [high, low] = HEX_PAIRS[usize::from(byte)];
        text[at] = high;
        text[at + 1] = low;
    }
    text
}

/// The two lower-case hex digits of each byte value.
static HEX_PAIRS: [[u8; 2]; 256] = hex_pairs();

const fn hex_pairs() -> [[u8; 2]; 256] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut pairs = [[0_u8; 2]; 256];
    let mut byte = 0;
    while byte < 256 {
        pairs[byte] = [DIGITS[byte >> 4], DIGITS[byte & 0xf]];
        byte += 1;
    }
    pairs
}

impl ScalarUDFImpl for SessionUuid {
    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        match arg_types {
            [distinct_id, start] => Ok(vec![
                coerce_to_utf8(NAME, 0, distinct_id)?,
                coerce_to_timestamp_us(NAME, 1, start)?,
            ]),
            _ => plan_err!(
                "{NAME} takes 2 arguments (distinct_id, session_start), got {}",
                arg_types.len()
            ),
        }
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays = arrays(&args.args, args.number_rows)?;
        let distinct_ids = string_arg(&arrays, 0, NAME)?;
        let starts = as_timestamp_microsecond_array(&arrays[1])?;
        let mut ids = StringBuilder::with_capacity(args.number_rows, args.number_rows * 36);
        // Rows come from the window in (distinct_id, timestamp) order, so a
        // session's rows are neighbours: its id is computed once and repeated.
        let mut previous: Option<(usize, String)> = None;
        for row in 0..args.number_rows {
            if distinct_ids.is_null(row) || starts.is_null(row) {
                ids.append_null();
                continue;
            }
            let (distinct_id, start) = (distinct_ids.value(row), starts.value(row));
            let repeated = previous.as_ref().filter(|(previous_row, _)| {
                starts.value(*previous_row) == start
                    && distinct_ids.value(*previous_row) == distinct_id
            });
            match repeated {
                Some((_, id)) => ids.append_value(id),
                None => {
                    let id = derived_session_uuid(distinct_id, start);
                    ids.append_value(&id);
                    previous = Some((row, id));
                }
            }
        }
        Ok(ColumnarValue::Array(Arc::new(ids.finish())))
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOCUMENTATION)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_v7_layout_carries_start_millis() {
        // 2024-01-01T00:00:00Z = 1704067200000 ms = 0x018cc251f400
        let id = derived_session_uuid("user-1", 1_704_067_200_000_000);
        assert_eq!(id.len(), 36);
        assert!(id.starts_with("018cc251-f400-7"), "{id}");
        let variant = id.as_bytes()[19];
        assert!(matches!(variant, b'8' | b'9' | b'a' | b'b'), "{id}");
        assert_eq!(id, derived_session_uuid("user-1", 1_704_067_200_000_000));
        assert_ne!(id, derived_session_uuid("user-2", 1_704_067_200_000_000));
    }

    #[test]
    fn uuid_text_is_the_hyphenated_hex_of_the_bits() {
        let mut bits = 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210_u128;
        for _ in 0..1000 {
            let hex = format!("{bits:032x}");
            let expected = format!(
                "{}-{}-{}-{}-{}",
                &hex[0..8],
                &hex[8..12],
                &hex[12..16],
                &hex[16..20],
                &hex[20..32]
            );
            assert_eq!(uuid_text(bits), expected);
            bits = bits.rotate_left(7).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
        assert_eq!(uuid_text(0), "00000000-0000-0000-0000-000000000000");
        assert_eq!(uuid_text(u128::MAX), "ffffffff-ffff-ffff-ffff-ffffffffffff");
    }
}
