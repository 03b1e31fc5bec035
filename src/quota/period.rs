//! Quota period arithmetic (SPEC 3).
//!
//! An event counts toward every quota period that contains its time: the day, the ISO
//! week, the calendar month, the billing period and the lifetime. Periods are computed in
//! the contract's IANA time zone, so a "day" is a local calendar day (23 or 25 hours long
//! on DST changes) and a "month" runs from a local 1st to the next. Billing periods are
//! months that follow the contract's anchor: an anchor on the 31st gives periods starting
//! on the last day of shorter months and on the 31st again in longer ones.
//!
//! Every calendar period is derived from a sequence of local boundary date-times (one per
//! day, week, month or billing month) that are each resolved to an instant in the zone:
//! a local time that falls in a DST gap moves forward to the first valid instant after
//! it, and a local time that occurs twice takes the earlier occurrence. That resolution is
//! "the first instant whose local time is at or after the boundary", which never goes
//! backwards, so consecutive periods tile time with no gaps or overlaps in every zone.
//!
//! Times are `i64` epoch milliseconds (UTC); period ends are exclusive.

use chrono::{
    DateTime, Datelike, MappedLocalTime, NaiveDate, NaiveDateTime, NaiveTime, Offset, TimeDelta,
    TimeZone,
};
use chrono_tz::Tz;

/// Earliest instant that calendar periods are computed for (about 253,000 years before
/// 1970). Instants before it all fall in one period `[i64::MIN, MIN_SUPPORTED_MS)`, which
/// keeps the arithmetic inside the range the calendar library can represent.
pub const MIN_SUPPORTED_MS: i64 = -8_000_000_000_000_000;

/// End of the range that calendar periods are computed for (about 253,000 years after
/// 1970). Instants at or after it all fall in one period `[MAX_SUPPORTED_MS, i64::MAX)`.
pub const MAX_SUPPORTED_MS: i64 = 8_000_000_000_000_000;

/// Step used to look for the end of a DST gap, and how many steps are tried (two days,
/// which covers even a whole skipped calendar day such as Pacific/Apia on 2011-12-30).
const GAP_PROBE_MINUTES: i64 = 15;
const GAP_PROBES: u32 = 2 * 24 * 4;

/// Bound on the corrections applied to an initial guess of the period index; one or two
/// suffice in practice (a DST fall-back that crosses a boundary).
const LOCATE_STEPS: u32 = 16;

/// The kind of period a quota is counted over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PeriodKind {
    /// A local calendar day, from midnight to the next midnight in the contract's zone.
    Day,
    /// An ISO week, from Monday 00:00 to the next Monday 00:00 in the contract's zone.
    Week,
    /// A calendar month, from the 1st 00:00 to the next 1st 00:00 in the contract's zone.
    Month,
    /// A month that starts at the contract's anchor date-time (day of month clamped to
    /// shorter months) instead of on the 1st.
    BillingPeriod,
    /// All of time: the quota never resets.
    Lifetime,
}

impl PeriodKind {
    /// All kinds, shortest first; the order of [`all_periods`].
    pub const ALL: [PeriodKind; 5] = [
        PeriodKind::Day,
        PeriodKind::Week,
        PeriodKind::Month,
        PeriodKind::BillingPeriod,
        PeriodKind::Lifetime,
    ];

    /// Parses the API name (`day`, `week`, `month`, `billing_period`, `lifetime`), as
    /// written in a contract's or plan's quota; returns `None` for anything else.
    pub fn parse(s: &str) -> Option<PeriodKind> {
        PeriodKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Returns the API name; the inverse of [`PeriodKind::parse`].
    pub fn as_str(self) -> &'static str {
        match self {
            PeriodKind::Day => "day",
            PeriodKind::Week => "week",
            PeriodKind::Month => "month",
            PeriodKind::BillingPeriod => "billing_period",
            PeriodKind::Lifetime => "lifetime",
        }
    }

    /// Returns the byte that identifies the kind in storage keys. The values are part of
    /// the on-disk format and never change.
    pub fn code(self) -> u8 {
        match self {
            PeriodKind::Day => b'd',
            PeriodKind::Week => b'w',
            PeriodKind::Month => b'm',
            PeriodKind::BillingPeriod => b'b',
            PeriodKind::Lifetime => b'l',
        }
    }

    /// Decodes a storage-key byte; the inverse of [`PeriodKind::code`]. Returns `None`
    /// for an unknown byte.
    pub fn from_code(c: u8) -> Option<PeriodKind> {
        PeriodKind::ALL.into_iter().find(|k| k.code() == c)
    }
}

/// A half-open interval of time `[start_ms, end_ms)` in epoch milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Period {
    /// First instant of the period (inclusive).
    pub start_ms: i64,
    /// First instant after the period (exclusive).
    pub end_ms: i64,
}

impl Period {
    /// The lifetime period, `[i64::MIN, i64::MAX)`: every representable instant but the
    /// very last.
    pub const LIFETIME: Period = Period {
        start_ms: i64::MIN,
        end_ms: i64::MAX,
    };

    /// Tells whether `t_ms` lies in the period (`start_ms <= t_ms < end_ms`).
    pub fn contains(&self, t_ms: i64) -> bool {
        self.start_ms <= t_ms && t_ms < self.end_ms
    }
}

/// Returns the period of `kind` that contains `t_ms`, computed in the zone `tz`.
///
/// - `Day`: the local calendar day containing `t_ms`, from local midnight to the next
///   local midnight (23 or 25 hours on DST changes). Where midnight does not exist on a
///   DST day (clocks jump from 00:00 to 01:00, e.g. America/Santiago or America/Havana),
///   the day starts at the first valid instant after midnight.
/// - `Week`: the ISO week, Monday 00:00 local to the next Monday 00:00 local.
/// - `Month`: the 1st 00:00 local to the next 1st 00:00 local.
/// - `BillingPeriod`: starts at the anchor's local date-time plus a whole number of months
///   (negative for instants before the anchor) and ends one month later. Each start is
///   computed from the anchor itself, never from the previous period, with the day of
///   month clamped to the month length, so an anchor on Jan 31 gives Feb 28 (or 29), then
///   Mar 31 and Apr 30, all at the anchor's local time of day.
/// - `Lifetime`: [`Period::LIFETIME`]; `anchor_ms` and `tz` are ignored.
///
/// Local boundaries that fall in a DST gap move forward to the first valid instant;
/// boundaries that occur twice (DST fall-back) take the earlier occurrence. The periods
/// of one kind therefore tile time: the period containing `end_ms` starts at `end_ms`.
/// Outside `[MIN_SUPPORTED_MS, MAX_SUPPORTED_MS)` a single period covers each side, and a
/// calendar period crossing one of those limits is cut at it.
pub fn period_containing(kind: PeriodKind, t_ms: i64, tz: Tz, anchor_ms: i64) -> Period {
    if kind == PeriodKind::Lifetime {
        return Period::LIFETIME;
    }
    if t_ms < MIN_SUPPORTED_MS {
        return Period {
            start_ms: i64::MIN,
            end_ms: MIN_SUPPORTED_MS,
        };
    }
    if t_ms >= MAX_SUPPORTED_MS {
        return Period {
            start_ms: MAX_SUPPORTED_MS,
            end_ms: i64::MAX,
        };
    }
    // Inside the supported range every step below succeeds; the fallback only keeps a
    // corrupt time-zone table from panicking the daemon.
    calendar_period(kind, t_ms, tz, anchor_ms).unwrap_or(Period::LIFETIME)
}

/// Returns the period of every kind that contains `t_ms`, in [`PeriodKind::ALL`] order:
/// the set of quota periods an event at `t_ms` counts toward. See [`period_containing`].
pub fn all_periods(t_ms: i64, tz: Tz, anchor_ms: i64) -> [(PeriodKind, Period); 5] {
    PeriodKind::ALL.map(|kind| (kind, period_containing(kind, t_ms, tz, anchor_ms)))
}

/// Computes a day, week, month or billing period for an instant in the supported range.
fn calendar_period(kind: PeriodKind, t_ms: i64, tz: Tz, anchor_ms: i64) -> Option<Period> {
    let local = local_naive(tz, t_ms)?;
    let day_index = |k: i64| NaiveDate::from_num_days_from_ce_opt(i32::try_from(k).ok()?);
    match kind {
        PeriodKind::Day => {
            let guess = i64::from(local.date().num_days_from_ce());
            locate(t_ms, guess, |k| {
                resolve(tz, day_index(k)?.and_time(NaiveTime::MIN))
            })
        }
        PeriodKind::Week => {
            // 0001-01-01 (day 1 of the common era) is a Monday, so week k starts on day
            // 7k + 1.
            let guess = (i64::from(local.date().num_days_from_ce()) - 1).div_euclid(7);
            locate(t_ms, guess, |k| {
                resolve(tz, day_index(k * 7 + 1)?.and_time(NaiveTime::MIN))
            })
        }
        PeriodKind::Month => locate(t_ms, month_index(local.date()), |k| {
            let first = first_of_month(k)?;
            resolve(tz, first.and_time(NaiveTime::MIN))
        }),
        PeriodKind::BillingPeriod => {
            let anchor = local_naive(tz, anchor_ms.clamp(MIN_SUPPORTED_MS, MAX_SUPPORTED_MS))?;
            let guess = month_index(local.date()) - month_index(anchor.date());
            locate(t_ms, guess, |k| resolve(tz, add_months_clamped(anchor, k)?))
        }
        PeriodKind::Lifetime => Some(Period::LIFETIME),
    }
}

/// Finds the index `k` with `boundary(k) <= t_ms < boundary(k + 1)`, starting from
/// `guess` (the index of the local calendar period of `t_ms`). The guess can be one off
/// when a DST fall-back repeats local times across a boundary; `boundary` is
/// non-decreasing, so stepping towards `t_ms` terminates. Boundaries are clamped to the
/// supported range so that periods crossing its limits are cut there.
fn locate(t_ms: i64, guess: i64, boundary: impl Fn(i64) -> Option<i64>) -> Option<Period> {
    let clamped = |k: i64| boundary(k).map(|b| b.clamp(MIN_SUPPORTED_MS, MAX_SUPPORTED_MS));
    let mut k = guess;
    for _ in 0..LOCATE_STEPS {
        let start_ms = clamped(k)?;
        let end_ms = clamped(k + 1)?;
        if t_ms < start_ms {
            k -= 1;
        } else if t_ms >= end_ms {
            k += 1;
        } else {
            return Some(Period { start_ms, end_ms });
        }
    }
    None
}

/// Returns the first instant whose local time in `tz` is at or after `local`: the unique
/// instant for an ordinary local time, the earlier one for a local time that occurs twice,
/// and the DST transition itself for a local time inside a gap.
fn resolve(tz: Tz, local: NaiveDateTime) -> Option<i64> {
    match tz.from_local_datetime(&local) {
        MappedLocalTime::Single(t) => Some(t.timestamp_millis()),
        MappedLocalTime::Ambiguous(a, b) => Some(a.timestamp_millis().min(b.timestamp_millis())),
        MappedLocalTime::None => first_instant_after_gap(tz, local),
    }
}

/// Finds the transition that skips over the nonexistent local time `local`: it probes
/// forward for a valid local time after the gap, then bisects between an instant whose
/// local time is before `local` and that valid instant.
fn first_instant_after_gap(tz: Tz, local: NaiveDateTime) -> Option<i64> {
    let target = local.and_utc().timestamp_millis();
    let mut probe = local;
    let mut hi = None;
    for _ in 0..GAP_PROBES {
        probe = probe.checked_add_signed(TimeDelta::minutes(GAP_PROBE_MINUTES))?;
        if let Some(t) = tz.from_local_datetime(&probe).earliest() {
            hi = Some(t.timestamp_millis());
            break;
        }
    }
    let mut hi = hi?;
    // With the post-gap offset, `lo` shows a local time of `target - 1 ms`; with the
    // smaller pre-gap offset it shows an even earlier one. Either way it precedes `local`,
    // and local time only moves forward between `lo` and `hi`.
    let mut lo = target - offset_ms(tz, hi)? - 1;
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if mid + offset_ms(tz, mid)? >= target {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Some(hi)
}

/// Returns the UTC offset of `tz` at the instant `t_ms`, in milliseconds.
fn offset_ms(tz: Tz, t_ms: i64) -> Option<i64> {
    let utc = DateTime::from_timestamp_millis(t_ms)?.naive_utc();
    Some(i64::from(tz.offset_from_utc_datetime(&utc).fix().local_minus_utc()) * 1000)
}

/// Returns the local wall-clock date-time of the instant `t_ms` in `tz`.
fn local_naive(tz: Tz, t_ms: i64) -> Option<NaiveDateTime> {
    let local_ms = t_ms.checked_add(offset_ms(tz, t_ms)?)?;
    Some(DateTime::from_timestamp_millis(local_ms)?.naive_utc())
}

/// Counts months from year 0: `year * 12 + month0`.
fn month_index(d: NaiveDate) -> i64 {
    i64::from(d.year()) * 12 + i64::from(d.month0())
}

/// Returns the 1st of the month with index `k` (see [`month_index`]).
fn first_of_month(k: i64) -> Option<NaiveDate> {
    let year = i32::try_from(k.div_euclid(12)).ok()?;
    let month = u32::try_from(k.rem_euclid(12)).ok()? + 1;
    NaiveDate::from_ymd_opt(year, month, 1)
}

/// Adds `k` months (possibly negative) to `anchor`, keeping its time of day and clamping
/// its day of month to the length of the target month.
fn add_months_clamped(anchor: NaiveDateTime, k: i64) -> Option<NaiveDateTime> {
    let first = first_of_month(month_index(anchor.date()).checked_add(k)?)?;
    let day = anchor.day().min(u32::from(first.num_days_in_month()));
    Some(first.with_day(day)?.and_time(anchor.time()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Months, Weekday};
    use proptest::prelude::*;
    use PeriodKind::{BillingPeriod, Day, Month, Week};

    const HOUR: i64 = 3_600_000;
    const DAY: i64 = 24 * HOUR;

    /// Parses RFC 3339, also accepting times without seconds (`2024-03-31T02:30+02:00`).
    fn ms(s: &str) -> i64 {
        let full = match s.as_bytes().get(16) {
            Some(b':') | None => s.to_string(),
            Some(_) => format!("{}:00{}", &s[..16], &s[16..]),
        };
        DateTime::parse_from_rfc3339(&full)
            .unwrap()
            .timestamp_millis()
    }

    /// Checks a table of lines. A line "kind [anchor]" (API kind name, anchor default
    /// 2000-01-01) applies to the lines after it; a line "zone t start end" asserts that
    /// the period containing `t` is `[start, end)`, that the period before it ends at
    /// `start` and that the next one starts at `end`. `#` starts a comment line.
    fn check(table: &str) {
        let (mut kind, mut anchor) = (Day, 0);
        for line in table.lines().map(str::trim) {
            let f: Vec<&str> = line.split_whitespace().collect();
            match f.as_slice() {
                [] => {}
                [c, ..] if c.starts_with('#') => {}
                [k, rest @ ..] if rest.len() < 2 => {
                    kind = PeriodKind::parse(k).unwrap();
                    anchor = ms(rest.first().unwrap_or(&"2000-01-01T00:00Z"));
                }
                [zone, t, start, end] => {
                    let tz: Tz = zone.parse().unwrap();
                    let p = period_containing(kind, ms(t), tz, anchor);
                    assert_eq!((p.start_ms, p.end_ms), (ms(start), ms(end)), "{line}");
                    let prev = period_containing(kind, p.start_ms - 1, tz, anchor);
                    assert_eq!(prev.end_ms, p.start_ms, "{line}");
                    let next = period_containing(kind, p.end_ms, tz, anchor);
                    assert_eq!(next.start_ms, p.end_ms, "{line}");
                }
                _ => panic!("bad table line {line}"),
            }
        }
    }

    #[test]
    fn names_and_codes_round_trip() {
        let mut codes: Vec<u8> = PeriodKind::ALL.iter().map(|k| k.code()).collect();
        for kind in PeriodKind::ALL {
            assert_eq!(PeriodKind::parse(kind.as_str()), Some(kind));
            assert_eq!(PeriodKind::from_code(kind.code()), Some(kind));
        }
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), 5);
        assert_eq!(PeriodKind::parse("Day"), None);
        assert_eq!(PeriodKind::parse("year"), None);
        assert_eq!(PeriodKind::from_code(0), None);
    }

    #[test]
    fn dst_days_are_23_and_25_hours() {
        let table = "
            day
            Europe/Berlin 2024-03-31T12:00+02:00 2024-03-30T23:00Z 2024-03-31T22:00Z
            Europe/Berlin 2024-10-27T12:00+01:00 2024-10-26T22:00Z 2024-10-27T23:00Z
            # Both occurrences of the repeated hour belong to the fall-back day.
            Europe/Berlin 2024-10-27T02:30+02:00 2024-10-26T22:00Z 2024-10-27T23:00Z
            Europe/Berlin 2024-10-27T02:30+01:00 2024-10-26T22:00Z 2024-10-27T23:00Z
            America/New_York 2024-03-10T12:00-04:00 2024-03-10T05:00Z 2024-03-11T04:00Z
            America/New_York 2024-11-03T01:30-05:00 2024-11-03T04:00Z 2024-11-04T05:00Z
            America/New_York 2024-12-31T23:59:59.999-05:00 2024-12-31T05:00Z 2025-01-01T05:00Z
        ";
        check(table);
    }

    #[test]
    fn weeks_and_months() {
        let table = "
            week
            America/New_York 2024-11-03T23:00-05:00 2024-10-28T04:00Z 2024-11-04T05:00Z
            UTC 2020-12-31T12:00Z 2020-12-28T00:00Z 2021-01-04T00:00Z
            UTC 2024-01-07T23:59:59.999Z 2024-01-01T00:00Z 2024-01-08T00:00Z
            month
            America/New_York 2024-11-15T00:00Z 2024-11-01T04:00Z 2024-12-01T05:00Z
            # Already January in UTC, still December in New York.
            America/New_York 2024-12-31T23:59:59.999-05:00 2024-12-01T05:00Z 2025-01-01T05:00Z
            UTC 2024-01-31T23:59:59.999Z 2024-01-01T00:00Z 2024-02-01T00:00Z
            UTC 2024-01-01T00:00Z 2024-01-01T00:00Z 2024-02-01T00:00Z
            # February has 29 days in 2024, 28 in 2023 and in 2100.
            UTC 2024-02-15T00:00Z 2024-02-01T00:00Z 2024-03-01T00:00Z
            UTC 2023-02-15T00:00Z 2023-02-01T00:00Z 2023-03-01T00:00Z
            UTC 2100-02-15T00:00Z 2100-02-01T00:00Z 2100-03-01T00:00Z
        ";
        check(table);
    }

    #[test]
    fn billing_anchor_on_the_31st_comes_back() {
        let table = "
            billing_period 2024-01-31T10:00Z
            UTC 2024-02-15T00:00Z 2024-01-31T10:00Z 2024-02-29T10:00Z
            UTC 2024-03-01T00:00Z 2024-02-29T10:00Z 2024-03-31T10:00Z
            UTC 2024-04-30T09:59:59.999Z 2024-03-31T10:00Z 2024-04-30T10:00Z
            UTC 2024-04-30T10:00Z 2024-04-30T10:00Z 2024-05-31T10:00Z
            UTC 2025-03-01T00:00Z 2025-02-28T10:00Z 2025-03-31T10:00Z
            # Before the anchor, periods run backwards from it by the same rule.
            UTC 2024-01-31T09:59:59.999Z 2023-12-31T10:00Z 2024-01-31T10:00Z
            UTC 2023-12-15T00:00Z 2023-11-30T10:00Z 2023-12-31T10:00Z
            UTC 2023-03-01T00:00Z 2023-02-28T10:00Z 2023-03-31T10:00Z
        ";
        check(table);
    }

    #[test]
    fn billing_anchor_on_the_29th_and_30th() {
        let table = "
            billing_period 2023-01-30T00:00Z
            UTC 2023-02-10T00:00Z 2023-01-30T00:00Z 2023-02-28T00:00Z
            UTC 2023-03-01T00:00Z 2023-02-28T00:00Z 2023-03-30T00:00Z
            UTC 2024-02-28T12:00Z 2024-01-30T00:00Z 2024-02-29T00:00Z
            UTC 2024-02-29T12:00Z 2024-02-29T00:00Z 2024-03-30T00:00Z
            billing_period 2024-01-29T00:00Z
            UTC 2024-02-29T12:00Z 2024-02-29T00:00Z 2024-03-29T00:00Z
            UTC 2025-02-27T12:00Z 2025-01-29T00:00Z 2025-02-28T00:00Z
            UTC 2025-02-28T12:00Z 2025-02-28T00:00Z 2025-03-29T00:00Z
        ";
        check(table);
    }

    #[test]
    fn billing_keeps_the_anchor_local_time_across_dst() {
        let table = "
            billing_period 2024-01-15T14:30+01:00
            Europe/Berlin 2024-03-20T00:00Z 2024-03-15T14:30+01:00 2024-04-15T14:30+02:00
            Europe/Berlin 2024-04-20T00:00Z 2024-04-15T14:30+02:00 2024-05-15T14:30+02:00
            Europe/Berlin 2024-11-01T00:00Z 2024-10-15T14:30+02:00 2024-11-15T14:30+01:00
            # 2024-03-31 02:30 does not exist in Berlin: that period starts at 03:00 CEST.
            billing_period 2024-01-31T02:30+01:00
            Europe/Berlin 2024-03-15T00:00Z 2024-02-29T02:30+01:00 2024-03-31T03:00+02:00
            Europe/Berlin 2024-04-10T00:00Z 2024-03-31T03:00+02:00 2024-04-30T02:30+02:00
            # 2024-10-27 02:30 occurs twice in Berlin: that period starts at the first.
            billing_period 2024-01-27T02:30+01:00
            Europe/Berlin 2024-10-27T02:45+01:00 2024-10-27T02:30+02:00 2024-11-27T02:30+01:00
            Europe/Berlin 2024-10-27T02:45+02:00 2024-10-27T02:30+02:00 2024-11-27T02:30+01:00
            # Local 02:15 before the boundary, but its second occurrence is after it.
            Europe/Berlin 2024-10-27T02:15+01:00 2024-10-27T02:30+02:00 2024-11-27T02:30+01:00
            Europe/Berlin 2024-10-27T02:15+02:00 2024-09-27T02:30+02:00 2024-10-27T02:30+02:00
        ";
        check(table);
    }

    #[test]
    fn half_and_quarter_hour_zones() {
        let table = "
            day
            Asia/Kolkata 2024-05-01T00:00Z 2024-04-30T18:30Z 2024-05-01T18:30Z
            Asia/Kolkata 2024-05-01T18:30Z 2024-05-01T18:30Z 2024-05-02T18:30Z
            Asia/Kathmandu 2024-05-01T00:00Z 2024-04-30T18:15Z 2024-05-01T18:15Z
            Asia/Kathmandu 2024-05-01T18:14:59.999Z 2024-04-30T18:15Z 2024-05-01T18:15Z
            Pacific/Chatham 2024-07-01T00:00Z 2024-06-30T11:15Z 2024-07-01T11:15Z
            America/St_Johns 2024-01-15T12:00Z 2024-01-15T03:30Z 2024-01-16T03:30Z
            # Lord Howe falls back by 30 minutes: a 24.5-hour day.
            Australia/Lord_Howe 2024-04-07T12:00+10:30 2024-04-06T13:00Z 2024-04-07T13:30Z
        ";
        check(table);
    }

    #[test]
    fn days_start_at_the_first_instant_when_midnight_does_not_exist() {
        let table = "
            day
            # Clocks jump from 00:00 to 01:00.
            America/Santiago 2024-09-08T12:00-03:00 2024-09-08T04:00Z 2024-09-09T03:00Z
            America/Havana 2024-03-10T12:00-04:00 2024-03-10T05:00Z 2024-03-11T04:00Z
            Asia/Beirut 2022-03-27T12:00+03:00 2022-03-26T22:00Z 2022-03-27T21:00Z
            America/Sao_Paulo 2018-11-04T12:00-02:00 2018-11-04T03:00Z 2018-11-05T02:00Z
            # Midnight occurs twice (01:00 back to 00:00): the day starts at the first.
            America/Havana 2024-11-03T12:00-05:00 2024-11-03T04:00Z 2024-11-04T05:00Z
            # Samoa skipped 2011-12-30 entirely.
            Pacific/Apia 2011-12-29T12:00-10:00 2011-12-29T10:00Z 2011-12-30T10:00Z
            Pacific/Apia 2011-12-31T12:00+14:00 2011-12-30T10:00Z 2011-12-31T10:00Z
            month
            America/Santiago 2024-09-15T00:00Z 2024-09-01T04:00Z 2024-10-01T03:00Z
        ";
        check(table);
    }

    #[test]
    fn extreme_instants_do_not_panic_and_still_tile() {
        let (lo, hi) = (MIN_SUPPORTED_MS, MAX_SUPPORTED_MS);
        let times = [i64::MIN, lo - 1, lo, 0, hi - 1, hi, i64::MAX - 1];
        let zones = [Tz::UTC, Tz::Pacific__Kiritimati, Tz::Etc__GMTPlus12];
        for (tz, kind) in zones
            .into_iter()
            .flat_map(|z| PeriodKind::ALL.map(|k| (z, k)))
        {
            for anchor in [i64::MIN, 0, i64::MAX] {
                let _ = period_containing(kind, i64::MAX, tz, anchor);
                for t in times {
                    let p = period_containing(kind, t, tz, anchor);
                    assert!(p.contains(t), "{kind:?} {t} {p:?}");
                    if p.end_ms < i64::MAX {
                        let next = period_containing(kind, p.end_ms, tz, anchor);
                        assert_eq!(next.start_ms, p.end_ms, "{kind:?} {t}");
                    }
                    if p.start_ms > i64::MIN {
                        let prev = period_containing(kind, p.start_ms - 1, tz, anchor);
                        assert_eq!(prev.end_ms, p.start_ms, "{kind:?} {t}");
                    }
                }
            }
        }
    }

    /// Zones for the walks and property tests: DST and not, half- and quarter-hour
    /// offsets, a 30-minute DST shift (Lord Howe), nonexistent midnights (Santiago,
    /// Havana, Beirut, Sao Paulo) and a skipped day (Apia).
    const ZONES: &str = "UTC Europe/Berlin America/New_York Australia/Lord_Howe \
        America/St_Johns Pacific/Chatham Asia/Kolkata Asia/Kathmandu America/Santiago \
        America/Havana Asia/Beirut America/Sao_Paulo Pacific/Apia Australia/Sydney";

    /// 1990-01-01T00:00:00Z and 2100-01-01T00:00:00Z.
    const FROM_MS: i64 = 631_152_000_000;
    const TO_MS: i64 = 4_102_444_800_000;

    fn local(tz: Tz, t_ms: i64) -> NaiveDateTime {
        tz.timestamp_millis_opt(t_ms).unwrap().naive_local()
    }

    /// Asserts that `start` is where the local boundary `expected` resolves: its earliest
    /// occurrence or, for a boundary inside a DST gap, the first instant after the gap.
    fn assert_resolves(tz: Tz, start: i64, expected: NaiveDateTime) {
        match tz.from_local_datetime(&expected) {
            MappedLocalTime::None => {
                assert!(local(tz, start) > expected, "{start} {expected}");
                assert!(local(tz, start - 1) < expected, "{start} {expected}");
            }
            r => assert_eq!(Some(start), r.earliest().map(|d| d.timestamp_millis())),
        }
    }

    /// Asserts that `p` starts on a boundary of the right shape for its kind and has a
    /// plausible length.
    fn assert_shape(kind: PeriodKind, tz: Tz, p: Period, anchor_ms: i64) {
        let s = local(tz, p.start_ms);
        let expected = match kind {
            Day | Week | Month => s.date().and_time(NaiveTime::MIN),
            // The expected start comes from chrono's own clamping month arithmetic.
            _ => {
                let a = local(tz, anchor_ms);
                let k = month_index(s.date()) - month_index(a.date());
                let months = Months::new(u32::try_from(k.unsigned_abs()).unwrap());
                let date = match k >= 0 {
                    true => a.date().checked_add_months(months),
                    false => a.date().checked_sub_months(months),
                };
                let date = date.unwrap();
                assert_eq!(date.day(), a.day().min(u32::from(date.num_days_in_month())));
                date.and_time(a.time())
            }
        };
        assert_resolves(tz, p.start_ms, expected);
        assert!(kind != Week || s.weekday() == Weekday::Mon, "{p:?}");
        assert!(kind != Month || s.day() == 1, "{p:?}");
        let len = p.end_ms - p.start_ms;
        let ok = match kind {
            Day => (22 * HOUR..=26 * HOUR).contains(&len),
            // Samoa's week of 2011-12-26 lost a whole day.
            Week if tz == Tz::Pacific__Apia && p.contains(ms("2011-12-30T10:00Z")) => {
                len == 6 * DAY
            }
            Week => (7 * DAY - 2 * HOUR..=7 * DAY + 2 * HOUR).contains(&len),
            _ => (27 * DAY..=32 * DAY).contains(&len),
        };
        assert!(ok, "{kind:?} {p:?} is {len} ms long");
    }

    /// Walks every period from 1990 to 2100 in every zone, so every DST transition in
    /// that range is crossed: each period starts where the previous one ended, contains
    /// its first and last millisecond, and has the right shape.
    #[test]
    fn walks_tile_1990_to_2100_in_every_zone() {
        for tz in ZONES.split_whitespace().map(|z| z.parse::<Tz>().unwrap()) {
            // Anchors whose local times fall in DST gaps at 00:00, 02:00 and 02:00-02:30.
            let anchor = |s: &str| resolve(tz, s.parse().unwrap()).unwrap();
            let runs = [
                (Day, 0),
                (Week, 0),
                (Month, 0),
                (BillingPeriod, anchor("2001-01-31T02:30:00")),
                (BillingPeriod, anchor("2001-01-08T00:30:00")),
                (BillingPeriod, anchor("2001-01-29T02:15:00")),
            ];
            for (kind, anchor) in runs {
                let mut p = period_containing(kind, FROM_MS, tz, anchor);
                while p.start_ms < TO_MS {
                    assert_shape(kind, tz, p, anchor);
                    assert_eq!(period_containing(kind, p.start_ms, tz, anchor), p);
                    assert_eq!(period_containing(kind, p.end_ms - 1, tz, anchor), p);
                    let next = period_containing(kind, p.end_ms, tz, anchor);
                    assert_eq!(next.start_ms, p.end_ms, "{tz} {kind:?} {p:?}");
                    p = next;
                }
            }
        }
    }

    fn zone() -> impl Strategy<Value = Tz> {
        let zones = ZONES.split_whitespace().map(|z| z.parse().unwrap());
        prop::sample::select(zones.collect::<Vec<Tz>>())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// For random instants, anchors and zones: every period contains the instant,
        /// its neighbours end and start exactly at its limits, and it has the right shape.
        #[test]
        fn periods_contain_the_instant_and_tile(
            t in FROM_MS..TO_MS,
            anchor in FROM_MS..TO_MS,
            tz in zone(),
        ) {
            let all = all_periods(t, tz, anchor);
            prop_assert_eq!(all.map(|(k, _)| k), PeriodKind::ALL);
            prop_assert_eq!(all[4].1, Period::LIFETIME);
            for (kind, p) in &all[..4] {
                let (kind, p) = (*kind, *p);
                prop_assert_eq!(p, period_containing(kind, t, tz, anchor));
                prop_assert!(p.contains(t), "{:?} {:?} does not contain {}", kind, p, t);
                let next = period_containing(kind, p.end_ms, tz, anchor);
                prop_assert_eq!(next.start_ms, p.end_ms);
                let prev = period_containing(kind, p.start_ms - 1, tz, anchor);
                prop_assert_eq!(prev.end_ms, p.start_ms);
                assert_shape(kind, tz, p, anchor);
                assert_shape(kind, tz, next, anchor);
            }
            // The day lies within its week and within its month.
            let d = all[0].1;
            for outer in [all[1].1, all[2].1] {
                prop_assert!(outer.start_ms <= d.start_ms && d.end_ms <= outer.end_ms);
            }
        }
    }
}
