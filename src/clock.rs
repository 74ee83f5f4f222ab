//! Wall-clock time behind a trait, so expiry and early renewal are tested with controlled time,
//! and HubiC's timestamp format (Europe/Paris local time with its UTC offset).
//!
//! Expiry instants come from the provider as wall-clock timestamps (`expires`), so the gateway
//! reasons in [`SystemTime`]; tests swap in a [`ManualClock`] shared by emulator and gateway.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use time::{Date, Month, OffsetDateTime, UtcOffset, Weekday};

/// A source of the current wall-clock time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Now.
    fn now(&self) -> SystemTime;
}

/// The operating system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that moves only when told to; for tests.
#[derive(Debug)]
pub struct ManualClock {
    millis: AtomicU64,
}

impl ManualClock {
    /// A clock that reads `start`.
    pub fn new(start: SystemTime) -> Self {
        let millis = start.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        ManualClock { millis: AtomicU64::new(millis) }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        self.millis.fetch_add(by.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.millis.load(Ordering::SeqCst))
    }
}

/// Whole seconds since the Unix epoch (0 before it).
pub fn unix_secs(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

/// Milliseconds since the Unix epoch (0 before it).
pub fn unix_millis(at: SystemTime) -> u64 {
    at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The instant `ms` milliseconds after the Unix epoch.
pub fn from_unix_millis(ms: u64) -> SystemTime {
    std::time::UNIX_EPOCH + Duration::from_millis(ms)
}

/// `at` rounded down to a whole second, as timestamps without a fraction carry it.
pub fn whole_seconds(at: SystemTime) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(unix_secs(at))
}

/// Seconds from `now` until `at`, or 0 when `at` has passed.
pub fn secs_until(now: SystemTime, at: SystemTime) -> u64 {
    at.duration_since(now).map_or(0, |d| d.as_secs())
}

fn last_sunday(year: i32, month: Month) -> Option<Date> {
    let days = month.length(year);
    let last = Date::from_calendar_date(year, month, days).ok()?;
    let back = last.weekday().number_days_from_sunday();
    last.checked_sub(time::Duration::days(i64::from(back))).filter(|d| d.weekday() == Weekday::Sunday)
}

/// The Europe/Paris offset in force at `utc`: +02:00 from the last Sunday of March 01:00 UTC to
/// the last Sunday of October 01:00 UTC (the EU rule since 1996), +01:00 otherwise.
pub fn paris_offset(utc: OffsetDateTime) -> UtcOffset {
    let year = utc.year();
    let switch = |month| last_sunday(year, month).map(|d| d.with_hms(1, 0, 0).map(|dt| dt.assume_utc()));
    let summer = match (switch(Month::March), switch(Month::October)) {
        (Some(Ok(start)), Some(Ok(end))) => utc >= start && utc < end,
        _ => false,
    };
    let hours = if summer { 2 } else { 1 };
    UtcOffset::from_hms(hours, 0, 0).unwrap_or(UtcOffset::UTC)
}

/// Formats `at` as HubiC did: `YYYY-MM-DDTHH:MM:SS+01:00` in Paris local time, no fraction.
pub fn format_paris(at: SystemTime) -> String {
    let secs = unix_secs(at) as i64;
    let utc = OffsetDateTime::from_unix_timestamp(secs).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let local = utc.to_offset(paris_offset(utc));
    let (oh, om, _) = local.offset().as_hms();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}{}{:02}:{:02}",
        local.year(),
        u8::from(local.month()),
        local.day(),
        local.hour(),
        local.minute(),
        local.second(),
        if oh < 0 { '-' } else { '+' },
        oh.unsigned_abs(),
        om.unsigned_abs()
    )
}

/// Parses an RFC 3339 timestamp with an offset (HubiC's `expires`) into a wall-clock instant.
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let dt = OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    let secs = dt.unix_timestamp();
    u64::try_from(secs).ok().map(|s| UNIX_EPOCH + Duration::from_secs(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn paris_format_follows_dst() {
        // (unix seconds, expected) including both sides of the 2017 and 2026 switches.
        let cases = [
            (1497258623, "2017-06-12T11:10:23+02:00"), // rclone #1470's sample instant
            (1426810551, "2015-03-20T01:15:51+01:00"),
            (1774746000 - 1, "2026-03-29T01:59:59+01:00"), // 00:59:59 UTC, just before the switch
            (1774746000, "2026-03-29T03:00:00+02:00"),
            (1792889999, "2026-10-25T02:59:59+02:00"),
            (1792890000, "2026-10-25T02:00:00+01:00"),
        ];
        for (secs, want) in cases {
            assert_eq!(format_paris(at(secs)), want, "at {secs}");
            assert_eq!(parse_rfc3339(want), Some(at(secs)), "parse {want}");
        }
    }

    #[test]
    fn rejects_malformed_timestamps() {
        for bad in ["", "2017-06-12", "2017-06-12T11:10:23", "tomorrow", "2017-13-12T11:10:23+02:00"] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::new(at(1000));
        assert_eq!(clock.now(), at(1000));
        clock.advance(Duration::from_secs(5));
        assert_eq!(clock.now(), at(1005));
        assert_eq!(secs_until(clock.now(), at(1010)), 5);
        assert_eq!(secs_until(clock.now(), at(1000)), 0);
    }
}
