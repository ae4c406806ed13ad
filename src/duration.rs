//! Durations as the config file writes them ("100us", "250ms", "10s", "5m", "1h"):
//! parsing, printing, and serde's view for `/config_dump`. A leaf module, so
//! that everything holding a duration from the config can use it without
//! depending on `config`.

use std::time::Duration;

use serde::Serializer;

/// The inverse of [`parse_duration`] (whole microseconds).
pub fn format_duration(d: Duration) -> String {
    if d.as_micros() % 1_000 != 0 {
        return format!("{}us", d.as_micros());
    }
    let ms = d.as_millis();
    if ms % 3_600_000 == 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms % 60_000 == 0 {
        format!("{}m", ms / 60_000)
    } else if ms % 1_000 == 0 {
        format!("{}s", ms / 1_000)
    } else {
        format!("{ms}ms")
    }
}

/// Parses "100us", "250ms", "10s", "5m", "1h" (one number, one unit).
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let ms = match unit {
        "us" => return Some(Duration::from_micros(n)),
        "ms" => n,
        "s" => n.checked_mul(1_000)?,
        "m" => n.checked_mul(60_000)?,
        "h" => n.checked_mul(3_600_000)?,
        _ => return None,
    };
    Some(Duration::from_millis(ms))
}

/// Serializes a duration the way the file writes it.
pub(crate) fn ser_duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_duration(*d))
}
