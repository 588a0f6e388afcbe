//! Output formatting shared by the commands: sizes, timestamps, tables.

/// `1.50 KB`, `2.30 MB` (powers of 1024, two decimals), as the usage guide prints them.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KB", "MB", "GB", "TB", "PB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.2} {}", UNITS[u])
}

/// Like [`human`] with one decimal (the status view's "45.2 KB").
pub fn human1(bytes: u64) -> String {
    let s = human(bytes);
    match s.split_once(' ') {
        Some((n, unit)) if n.contains('.') => {
            format!("{:.1} {unit}", n.parse::<f64>().unwrap_or(0.0))
        }
        _ => s,
    }
}

/// RFC 3339 UTC with second precision: `2024-01-15T10:30:00Z`.
pub fn rfc3339(unix_ns: i64) -> String {
    let secs = unix_ns.div_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Shortens an ETag for the long listing: `abc123...`.
pub fn short_etag(etag: &str) -> String {
    let e = etag.trim_matches('"');
    if e.len() > 6 {
        format!("{}...", &e[..6])
    } else {
        e.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_the_guide() {
        assert_eq!(human(1536), "1.50 KB");
        assert_eq!(human(2_411_724), "2.30 MB");
        assert_eq!(human(1024), "1.00 KB");
        assert_eq!(human(17), "17 B");
        assert_eq!(human1(46_285), "45.2 KB");
    }

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(
            rfc3339(1_705_314_600 * 1_000_000_000),
            "2024-01-15T10:30:00Z"
        );
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400 * 1_000_000_000), "2000-02-29T00:00:00Z");
    }
}
