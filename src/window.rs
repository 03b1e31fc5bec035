//! Time windows of aggregated usage (SPEC 1: windows are by event time).
//!
//! Counters are kept at three stored granularities, all aligned in UTC: minute, hour and
//! day. Coarser or zone-shifted windows are assembled from them at query time.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};

/// Milliseconds per minute.
pub const MINUTE_MS: i64 = 60_000;
/// Milliseconds per hour.
pub const HOUR_MS: i64 = 3_600_000;
/// Milliseconds per day.
pub const DAY_MS: i64 = 86_400_000;

/// A stored window size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Granularity {
    /// One minute.
    Minute,
    /// One hour.
    Hour,
    /// One UTC day.
    Day,
}

impl Granularity {
    /// All stored granularities, finest first.
    pub const ALL: [Granularity; 3] = [Granularity::Minute, Granularity::Hour, Granularity::Day];

    /// Window length in milliseconds.
    pub fn len_ms(self) -> i64 {
        match self {
            Granularity::Minute => MINUTE_MS,
            Granularity::Hour => HOUR_MS,
            Granularity::Day => DAY_MS,
        }
    }

    /// Start of the window containing `t_ms`.
    pub fn floor(self, t_ms: i64) -> i64 {
        t_ms.div_euclid(self.len_ms()) * self.len_ms()
    }

    /// Smallest window start at or after `t_ms`.
    pub fn ceil(self, t_ms: i64) -> i64 {
        let f = self.floor(t_ms);
        if f == t_ms {
            f
        } else {
            f + self.len_ms()
        }
    }

    /// Byte used in keys.
    pub fn code(self) -> u8 {
        match self {
            Granularity::Minute => b'm',
            Granularity::Hour => b'h',
            Granularity::Day => b'd',
        }
    }

    /// Inverse of [`Granularity::code`].
    pub fn from_code(c: u8) -> Option<Granularity> {
        match c {
            b'm' => Some(Granularity::Minute),
            b'h' => Some(Granularity::Hour),
            b'd' => Some(Granularity::Day),
            _ => None,
        }
    }

    /// Name used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Granularity::Minute => "minute",
            Granularity::Hour => "hour",
            Granularity::Day => "day",
        }
    }
}

/// Current time in epoch milliseconds.
pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// Formats epoch milliseconds as RFC 3339 UTC (`2026-11-23T10:15:00Z`, with
/// milliseconds only when non-zero).
pub fn rfc3339(ms: i64) -> String {
    match DateTime::<Utc>::from_timestamp_millis(ms) {
        Some(t) => t.to_rfc3339_opts(SecondsFormat::AutoSi, true),
        None => "invalid".into(),
    }
}

/// Parses an RFC 3339 time into epoch milliseconds (sub-millisecond digits are
/// truncated). Years outside 0001..=9999 are refused.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    if text.len() > 64 {
        return None;
    }
    let t = DateTime::parse_from_rfc3339(text).ok()?;
    let ms = t.with_timezone(&Utc).timestamp_millis();
    if !(-62_135_596_800_000..=253_402_300_799_999).contains(&ms) {
        return None;
    }
    Some(ms)
}

/// Splits `[from, to)` (minute-aligned) into the fewest stored windows: whole UTC days,
/// then whole hours, then minutes at the edges. Returns `(granularity, first_start,
/// end)` ranges whose windows have `first_start <= start < end`.
pub fn cover(from: i64, to: i64) -> Vec<(Granularity, i64, i64)> {
    let mut out = Vec::new();
    if from >= to {
        return out;
    }
    let d0 = Granularity::Day.ceil(from);
    let d1 = Granularity::Day.floor(to);
    if d0 < d1 {
        cover_hours(from, d0, &mut out);
        out.push((Granularity::Day, d0, d1));
        cover_hours(d1, to, &mut out);
    } else {
        cover_hours(from, to, &mut out);
    }
    out
}

fn cover_hours(from: i64, to: i64, out: &mut Vec<(Granularity, i64, i64)>) {
    if from >= to {
        return;
    }
    let h0 = Granularity::Hour.ceil(from);
    let h1 = Granularity::Hour.floor(to);
    if h0 < h1 {
        if from < h0 {
            out.push((Granularity::Minute, from, h0));
        }
        out.push((Granularity::Hour, h0, h1));
        if h1 < to {
            out.push((Granularity::Minute, h1, to));
        }
    } else {
        out.push((Granularity::Minute, from, to));
    }
}

/// How long window rows are kept, per granularity (`None`: forever).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WindowRetention {
    /// Minute rows.
    pub minute: Option<Duration>,
    /// Hour rows.
    pub hour: Option<Duration>,
    /// Day rows.
    pub day: Option<Duration>,
    /// Quota period rows (usage, grant-covered usage, notified thresholds) are removed
    /// once their period ended longer ago than this: no event that old is accepted, so
    /// they can no longer change and are not loaded at start.
    pub quota_periods: Option<Duration>,
}

impl WindowRetention {
    /// True when some granularity expires.
    pub fn any(&self) -> bool {
        self.minute.is_some() || self.hour.is_some() || self.day.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn floors_and_formats() {
        let t = parse_rfc3339("2026-11-23T10:15:30.123Z").unwrap();
        assert_eq!(
            rfc3339(Granularity::Minute.floor(t)),
            "2026-11-23T10:15:00Z"
        );
        assert_eq!(rfc3339(Granularity::Hour.floor(t)), "2026-11-23T10:00:00Z");
        assert_eq!(rfc3339(Granularity::Day.floor(t)), "2026-11-23T00:00:00Z");
        assert_eq!(rfc3339(t), "2026-11-23T10:15:30.123Z");
        assert_eq!(
            parse_rfc3339("2026-11-23T11:15:30+01:00"),
            parse_rfc3339("2026-11-23T10:15:30Z")
        );
        assert!(parse_rfc3339("2026-11-23").is_none());
        assert!(parse_rfc3339("yesterday").is_none());
    }

    proptest! {
        #[test]
        fn cover_is_exact_partition(a in 0i64..100_000, len in 0i64..20_000) {
            let from = a * MINUTE_MS;
            let to = from + len * MINUTE_MS;
            let pieces = cover(from, to);
            // Pieces are contiguous, aligned, and add up to [from, to).
            let mut at = from;
            for (g, s, e) in &pieces {
                prop_assert_eq!(*s, at);
                prop_assert_eq!(g.floor(*s), *s);
                prop_assert_eq!(g.floor(*e), *e);
                prop_assert!(s < e);
                at = *e;
            }
            prop_assert_eq!(at, if len == 0 { from } else { to });
        }
    }
}
