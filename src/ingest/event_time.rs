//! When an ingested event happened, worked out as PostHog's ingestion does.
//!
//! Client clocks are often wrong. The SDK stamps each event with the client's
//! `timestamp` and the request with the client's `sent_at`; the server notes
//! when it received the request (`now`). Since `sent_at` and `now` are nearly
//! the same instant, their difference is the client's clock skew, and it is
//! taken off the event's timestamp. Without `timestamp`, an `offset`
//! (milliseconds before sending) counts back from the receive time.

/// A corrected time further than this past the receive time is replaced by the
/// receive time: an instrumentation bug, not a real future event (PostHog: 23 h).
pub const FUTURE_CUTOFF_US: i64 = 23 * 3_600 * 1_000_000;

/// The time fields of one event, parsed, as the payload gave them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventTimeFields {
    /// The client's `timestamp` of the event.
    pub timestamp_us: Option<i64>,
    /// The client's `sent_at` of the request carrying it.
    pub sent_at_us: Option<i64>,
    /// `offset`: milliseconds between the event and the request being sent.
    pub offset_ms: Option<i64>,
    /// When the server received the request (`now`, `_received_at`, or given
    /// on the command line for plain exports).
    pub received_at_us: Option<i64>,
    /// The event's `$ignore_sent_at` property: its timestamp is already right.
    pub ignore_sent_at: bool,
}

/// The event's time in microseconds since the epoch, UTC; an error when the
/// fields say nothing about it.
pub fn event_time_us(fields: EventTimeFields) -> Result<i64, String> {
    let sent_at_us = fields.sent_at_us.filter(|_| !fields.ignore_sent_at);
    let time_us = match (fields.timestamp_us, fields.received_at_us) {
        (Some(timestamp_us), Some(received_us)) => match sent_at_us {
            Some(sent_us) => timestamp_us - (sent_us - received_us),
            None => timestamp_us,
        },
        (Some(timestamp_us), None) => timestamp_us,
        (None, Some(received_us)) => match fields.offset_ms {
            Some(offset_ms) => received_us - offset_ms.saturating_mul(1000),
            None => received_us,
        },
        (None, None) => {
            return Err(
                "no timestamp and no receive time ('now'); give --received-at for plain exports"
                    .into(),
            );
        }
    };
    Ok(match fields.received_at_us {
        Some(received_us) if time_us - received_us > FUTURE_CUTOFF_US => received_us,
        _ => time_us,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: i64 = 1_000_000;

    #[test]
    fn skew_is_taken_off_in_both_directions() {
        let ahead = EventTimeFields {
            timestamp_us: Some(1_000 * SECOND),
            sent_at_us: Some(1_010 * SECOND),
            received_at_us: Some(910 * SECOND),
            ..Default::default()
        };
        assert_eq!(event_time_us(ahead), Ok(900 * SECOND));
        let behind = EventTimeFields {
            received_at_us: Some(1_110 * SECOND),
            ..ahead
        };
        assert_eq!(event_time_us(behind), Ok(1_100 * SECOND));
        let ignored = EventTimeFields {
            ignore_sent_at: true,
            ..ahead
        };
        assert_eq!(event_time_us(ignored), Ok(1_000 * SECOND));
    }

    #[test]
    fn offset_and_receive_time_stand_in_for_a_timestamp() {
        let offset = EventTimeFields {
            offset_ms: Some(1_500),
            received_at_us: Some(100 * SECOND),
            ..Default::default()
        };
        assert_eq!(event_time_us(offset), Ok(100 * SECOND - 1_500_000));
        let bare = EventTimeFields {
            received_at_us: Some(100 * SECOND),
            ..Default::default()
        };
        assert_eq!(event_time_us(bare), Ok(100 * SECOND));
        assert!(event_time_us(EventTimeFields::default()).is_err());
    }

    #[test]
    fn far_future_times_fall_back_to_the_receive_time() {
        let future = EventTimeFields {
            timestamp_us: Some(100 * SECOND + FUTURE_CUTOFF_US + 1),
            received_at_us: Some(100 * SECOND),
            ..Default::default()
        };
        assert_eq!(event_time_us(future), Ok(100 * SECOND));
        let just_inside = EventTimeFields {
            timestamp_us: Some(100 * SECOND + FUTURE_CUTOFF_US),
            ..future
        };
        assert_eq!(
            event_time_us(just_inside),
            Ok(100 * SECOND + FUTURE_CUTOFF_US)
        );
    }
}
