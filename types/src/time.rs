//! Times as the contract writes them.

/// RFC 3339 UTC with microseconds, as the contract writes times.
///
/// Written out by hand: every document answer formats two times, and `chrono`'s
/// `format` re-parses its pattern on each call.
pub fn format_time(micros: i64) -> String {
    let seconds = micros.div_euclid(1_000_000);
    let fraction = micros.rem_euclid(1_000_000);
    let (year, month, day) = civil_from_days(seconds.div_euclid(86_400));
    let of_day = seconds.rem_euclid(86_400);
    let mut out = String::with_capacity(27);
    for (separator, value, width) in [
        (None, year, 4),
        (Some('-'), month, 2),
        (Some('-'), day, 2),
        (Some('T'), of_day / 3600, 2),
        (Some(':'), of_day / 60 % 60, 2),
        (Some(':'), of_day % 60, 2),
        (Some('.'), fraction, 6),
    ] {
        if let Some(separator) = separator {
            out.push(separator);
        }
        pad(&mut out, value, width);
    }
    out.push('Z');
    out
}

fn pad(out: &mut String, value: i64, width: u32) {
    let mut divisor = 10i64.pow(width - 1);
    while divisor > 0 {
        out.push(char::from(b'0' + (value / divisor % 10) as u8));
        divisor /= 10;
    }
}

/// Year, month, day of a day count since 1970-01-01 (proleptic Gregorian).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 { shifted_month + 3 } else { shifted_month - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Microseconds since the epoch, now (0 if the clock is before 1970).
pub fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| i64::try_from(elapsed.as_micros()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_are_rfc3339_utc_with_microseconds() {
        assert_eq!(super::format_time(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(super::format_time(1_795_773_600_123_456), "2026-11-27T10:00:00.123456Z");
    }
}
