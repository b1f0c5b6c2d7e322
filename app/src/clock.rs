//! Time on both sides: the current time and RFC 3339 parsing, from chrono on the server and from
//! the browser's `Date` after hydration, and a signal that ticks every second for countdowns.

use leptos::prelude::*;

/// Now, as unix milliseconds.
pub fn now_ms() -> i64 {
    #[cfg(feature = "hydrate")]
    {
        js_sys::Date::now() as i64
    }
    #[cfg(not(feature = "hydrate"))]
    {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or_default()
    }
}

/// An RFC 3339 time as unix milliseconds.
pub fn parse_ms(rfc3339: &str) -> Option<i64> {
    #[cfg(feature = "hydrate")]
    {
        let ms = js_sys::Date::parse(rfc3339);
        (!ms.is_nan()).then_some(ms as i64)
    }
    #[cfg(all(feature = "ssr", not(feature = "hydrate")))]
    {
        chrono::DateTime::parse_from_rfc3339(rfc3339)
            .ok()
            .map(|t| t.timestamp_millis())
    }
    #[cfg(not(any(feature = "ssr", feature = "hydrate")))]
    {
        let _ = rfc3339;
        None
    }
}

/// A unix time in ms as `HH:MM` UTC (the same on the server and in the browser).
pub fn short_time(ms: i64) -> String {
    let minutes = ms.div_euclid(60_000);
    format!(
        "{:02}:{:02} UTC",
        minutes.div_euclid(60).rem_euclid(24),
        minutes.rem_euclid(60)
    )
}

/// "2026-11-21T10:30:00.123Z" → "10:30:00" (the full time belongs in a `datetime` attribute).
pub fn time_of_day(rfc3339: &str) -> String {
    rfc3339.get(11..19).unwrap_or(rfc3339).to_owned()
}

/// Whole seconds from now until `rfc3339` (0 once it has passed).
pub fn seconds_until(rfc3339: &str, now: i64) -> i64 {
    parse_ms(rfc3339).map_or(0, |at| ((at - now).max(0) + 999) / 1000)
}

/// A signal holding the current time, updated every second in the browser.
pub fn ticking_now() -> ReadSignal<i64> {
    let (now, set_now) = signal(now_ms());
    #[cfg(feature = "hydrate")]
    {
        if let Ok(handle) = set_interval_with_handle(
            move || set_now.set(now_ms()),
            std::time::Duration::from_secs(1),
        ) {
            on_cleanup(move || handle.clear());
        }
    }
    #[cfg(not(feature = "hydrate"))]
    let _ = set_now;
    now
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn countdowns_round_up_and_stop_at_zero() {
        let at = parse_ms("2026-11-21T10:00:10.000Z").unwrap_or_default();
        assert_eq!(seconds_until("2026-11-21T10:00:10.000Z", at - 9_500), 10);
        assert_eq!(seconds_until("2026-11-21T10:00:10.000Z", at), 0);
        assert_eq!(seconds_until("2026-11-21T10:00:10.000Z", at + 5_000), 0);
        assert_eq!(seconds_until("not a time", at), 0);
    }

    #[test]
    fn time_of_day_keeps_the_clock() {
        assert_eq!(time_of_day("2026-11-21T10:30:05.123Z"), "10:30:05");
        assert_eq!(time_of_day("bad"), "bad");
    }
}
