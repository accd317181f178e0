//! Human durations in config files: "90s", "10m", "1h", "500ms", "1h30m".

use std::time::Duration;

/// Parses a duration made of one or more `<integer><unit>` parts, units `ms`, `s`, `m`, `h`,
/// `d`. Returns a message suitable for a config error on failure.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {s:?}: expected e.g. \"90s\", \"10m\", \"1h30m\", \"500ms\"");
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(1),
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            "d" => Duration::from_secs(86400),
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        let part = unit.checked_mul(u32::try_from(n).map_err(|_| bad())?).ok_or_else(bad)?;
        total = total.checked_add(part).ok_or_else(bad)?;
    }
    Ok(total)
}

/// Formats a duration the way [`parse_duration`] reads it.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let s = d.as_secs();
    match s {
        0 => "0s".into(),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_compounds() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172800)));
    }

    #[test]
    fn rejects_garbage() {
        for s in ["", "s", "10", "10x", "-5s", "1.5s", "99999999999h", "m10"] {
            assert!(parse_duration(s).is_err(), "{s:?} accepted");
        }
    }

    #[test]
    fn format_round_trips() {
        for s in ["90s", "10m", "1h", "250ms", "0s"] {
            assert_eq!(format_duration(parse_duration(s).unwrap()), s);
        }
    }
}

/// Parses a size such as "64KiB", "2MiB", "10MB", "1500" (bytes). Returns a config error
/// message on failure.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let bad = || format!("invalid size {s:?}: expected e.g. \"64KiB\", \"2MiB\", \"10MB\", \"1500\"");
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    if digits == 0 {
        return Err(bad());
    }
    let n: u64 = t[..digits].parse().map_err(|_| bad())?;
    let unit: u64 = match t[digits..].trim() {
        "" | "B" => 1,
        "KB" => 1000,
        "KiB" => 1 << 10,
        "MB" => 1000 * 1000,
        "MiB" => 1 << 20,
        "GB" => 1000 * 1000 * 1000,
        "GiB" => 1 << 30,
        _ => return Err(bad()),
    };
    n.checked_mul(unit).ok_or_else(bad)
}

/// Formats a size the way [`parse_size`] reads it.
pub fn format_size(n: u64) -> String {
    for (unit, name) in [(1u64 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")] {
        if n >= unit && n.is_multiple_of(unit) {
            return format!("{}{name}", n / unit);
        }
    }
    n.to_string()
}

#[cfg(test)]
mod size_tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("2MiB"), Ok(2 << 20));
        assert_eq!(parse_size("10MB"), Ok(10_000_000));
        assert_eq!(parse_size("1500"), Ok(1500));
        assert_eq!(parse_size("0"), Ok(0));
        for bad in ["", "MiB", "1.5MiB", "-1", "12 parsecs"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        for s in ["64KiB", "2MiB", "1500", "0"] {
            assert_eq!(format_size(parse_size(s).unwrap()), s);
        }
    }
}
