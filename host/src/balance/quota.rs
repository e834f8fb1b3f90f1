//! Rate-limit headers of model providers, read into one quota report.
//!
//! | provider | remaining | reset | back off |
//! |---|---|---|---|
//! | OpenAI, Azure OpenAI, Groq, Together | `x-ratelimit-remaining-{requests,tokens}` | `x-ratelimit-reset-{requests,tokens}` (`6m0s`, `20ms`) | `retry-after` (seconds), `retry-after-ms` |
//! | Anthropic | `anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-remaining` | `anthropic-ratelimit-*-reset` (RFC 3339 time) | `retry-after` (seconds) |
//! | any HTTP server | | | `retry-after` as an HTTP date |
//!
//! Where several token limits are reported, the most restrictive counts.

use std::time::{SystemTime, UNIX_EPOCH};

/// Rate-limit facts from one upstream response.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct QuotaReport {
    pub remaining_requests: Option<u64>,
    pub remaining_tokens: Option<u64>,
    /// Milliseconds until the quota resets (the later of the reported resets).
    pub reset_ms: Option<u64>,
    /// `retry-after` (or `retry-after-ms`), in milliseconds.
    pub retry_after_ms: Option<u64>,
}

impl QuotaReport {
    /// Reads every dialect in the table above in one pass over the headers.
    pub fn from_headers(headers: &http::HeaderMap) -> Option<QuotaReport> {
        let mut report = QuotaReport::default();
        let mut found = false;
        let mut now_ms = None;
        for (name, value) in headers {
            let name = name.as_str();
            // Most answers carry none of these: skip by name before
            // validating the value.
            if !(name.starts_with("x-ratelimit-")
                || name.starts_with("retry-after")
                || name.starts_with("anthropic-ratelimit-"))
            {
                continue;
            }
            let Ok(value) = value.to_str() else { continue };
            let value = value.trim();
            let mut now = || *now_ms.get_or_insert_with(unix_ms);
            match name {
                "x-ratelimit-remaining-requests" | "anthropic-ratelimit-requests-remaining" => {
                    report.remaining_requests = value.parse().ok();
                }
                "x-ratelimit-remaining-tokens"
                | "anthropic-ratelimit-tokens-remaining"
                | "anthropic-ratelimit-input-tokens-remaining"
                | "anthropic-ratelimit-output-tokens-remaining" => {
                    if let Ok(n) = value.parse::<u64>() {
                        report.remaining_tokens =
                            Some(report.remaining_tokens.map_or(n, |t| t.min(n)));
                    }
                }
                "x-ratelimit-reset-requests" | "x-ratelimit-reset-tokens" => {
                    let ms = crate::config::parse_duration(value)
                        .ok()
                        .map(|d| d.as_millis().min(u128::from(u64::MAX)) as u64);
                    report.reset_after(ms);
                }
                "anthropic-ratelimit-requests-reset"
                | "anthropic-ratelimit-tokens-reset"
                | "anthropic-ratelimit-input-tokens-reset"
                | "anthropic-ratelimit-output-tokens-reset" => {
                    let ms = rfc3339_unix_ms(value).map(|at| at.saturating_sub(now()));
                    report.reset_after(ms);
                }
                "retry-after" => {
                    let ms = match value.parse::<u64>() {
                        Ok(seconds) => Some(seconds.saturating_mul(1000)),
                        Err(_) => http_date_unix_ms(value).map(|at| at.saturating_sub(now())),
                    };
                    // `retry-after-ms` is the finer of the two.
                    report.retry_after_ms = report.retry_after_ms.or(ms);
                    report.reset_after(ms);
                }
                "retry-after-ms" => {
                    let ms = value
                        .parse::<f64>()
                        .ok()
                        .filter(|m| *m >= 0.0)
                        .map(|m| m.ceil() as u64);
                    if ms.is_some() {
                        report.retry_after_ms = ms;
                    }
                    report.reset_after(ms);
                }
                _ => continue,
            }
            found = true;
        }
        found.then_some(report)
    }

    /// Keeps the later of the resets seen.
    fn reset_after(&mut self, ms: Option<u64>) {
        if let Some(ms) = ms {
            self.reset_ms = Some(self.reset_ms.map_or(ms, |r| r.max(ms)));
        }
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(year: i64, month: u32, day: u32) -> Option<i64> {
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

fn unix_ms_of(days: i64, h: u32, m: u32, s: u32, ms: u32, offset_s: i64) -> Option<u64> {
    if h > 23 || m > 59 || s > 60 {
        return None;
    }
    let secs = days * 86_400 + i64::from(h * 3600 + m * 60 + s) - offset_s;
    u64::try_from(secs)
        .ok()?
        .checked_mul(1000)?
        .checked_add(u64::from(ms))
}

/// `2026-12-02T10:00:00Z`, `2026-12-02T10:00:00.5+01:00`: Unix ms.
fn rfc3339_unix_ms(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    let num = |from: usize, len: usize| -> Option<u32> {
        let s = text.get(from..from + len)?;
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let days = days_from_civil(i64::from(num(0, 4)?), num(5, 2)?, num(8, 2)?)?;
    let (h, m, s) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    let mut rest = &text[19..];
    let mut ms = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        let first3: String = frac[..digits]
            .chars()
            .chain("000".chars())
            .take(3)
            .collect();
        ms = first3.parse().ok()?;
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && matches!(&rest[..1], "+" | "-") && &rest[3..4] == ":" => {
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            let oh: i64 = rest[1..3].parse().ok()?;
            let om: i64 = rest[4..6].parse().ok()?;
            sign * (oh * 3600 + om * 60)
        }
        _ => return None,
    };
    unix_ms_of(days, h, m, s, ms, offset)
}

/// `Wed, 21 Oct 2015 07:28:00 GMT` (the IMF-fixdate HTTP uses): Unix ms.
fn http_date_unix_ms(text: &str) -> Option<u64> {
    let mut parts = text.split_ascii_whitespace();
    let _weekday = parts.next()?;
    let day: u32 = parts.next()?.parse().ok()?;
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month_name = parts.next()?;
    let month = MONTHS
        .iter()
        .position(|m| m.eq_ignore_ascii_case(month_name))? as u32
        + 1;
    let year: i64 = parts.next()?.parse().ok()?;
    let mut hms = parts.next()?.split(':').map(|p| p.parse::<u32>().ok());
    let (h, m, s) = (hms.next()??, hms.next()??, hms.next()??);
    if parts.next() != Some("GMT") || parts.next().is_some() {
        return None;
    }
    unix_ms_of(days_from_civil(year, month, day)?, h, m, s, 0, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::BackendState;

    fn headers(pairs: &[(&str, String)]) -> http::HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn openai_headers_are_parsed() {
        let h = headers(&[
            ("x-ratelimit-remaining-tokens", "1500".into()),
            ("x-ratelimit-remaining-requests", "7".into()),
            ("x-ratelimit-reset-tokens", "6m0s".into()),
            ("x-ratelimit-reset-requests", "20ms".into()),
        ]);
        let q = QuotaReport::from_headers(&h).unwrap();
        assert_eq!(q.remaining_tokens, Some(1500));
        assert_eq!(q.remaining_requests, Some(7));
        assert_eq!(q.reset_ms, Some(360_000));
        let s = BackendState::default();
        s.record_quota(&q);
        let snap = s.snapshot();
        assert_eq!(snap.remaining_tokens, Some(1500));
        assert!(snap.quota_reset_ms > 359_000 && snap.quota_reset_ms <= 360_000);
        assert_eq!(QuotaReport::from_headers(&http::HeaderMap::new()), None);
    }

    #[test]
    fn dates_parse_to_unix_time() {
        assert_eq!(rfc3339_unix_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            rfc3339_unix_ms("2015-10-21T07:28:00Z"),
            Some(1_445_412_480_000)
        );
        assert_eq!(
            rfc3339_unix_ms("2015-10-21T09:28:00.25+02:00"),
            Some(1_445_412_480_250)
        );
        assert_eq!(
            http_date_unix_ms("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(1_445_412_480_000)
        );
        for bad in [
            "2015-13-21T07:28:00Z",
            "2015-10-21 07:28",
            "",
            "2015-10-21T07:28:00+0200",
        ] {
            assert_eq!(rfc3339_unix_ms(bad), None, "{bad}");
        }
        assert_eq!(http_date_unix_ms("Wed, 21 Oct 2015 07:28:00 CET"), None);
    }

    #[test]
    fn anthropic_headers_give_the_tightest_tokens_and_the_latest_reset() {
        let in_ms = |ms: u64| {
            let at = unix_ms() + ms;
            let secs = (at / 1000) as i64;
            let days = secs.div_euclid(86_400);
            let tod = secs.rem_euclid(86_400);
            // Civil date of `days`, inverse of days_from_civil.
            let z = days + 719_468;
            let era = z.div_euclid(146_097);
            let doe = z - era * 146_097;
            let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
            let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
            let mp = (5 * doy + 2) / 153;
            let d = doy - (153 * mp + 2) / 5 + 1;
            let m = if mp < 10 { mp + 3 } else { mp - 9 };
            let y = yoe + era * 400 + i64::from(m <= 2);
            format!(
                "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
                tod / 3600,
                tod / 60 % 60,
                tod % 60
            )
        };
        let h = headers(&[
            ("anthropic-ratelimit-requests-remaining", "49".into()),
            ("anthropic-ratelimit-input-tokens-remaining", "38000".into()),
            ("anthropic-ratelimit-output-tokens-remaining", "7000".into()),
            ("anthropic-ratelimit-tokens-remaining", "45000".into()),
            ("anthropic-ratelimit-requests-reset", in_ms(3_000)),
            ("anthropic-ratelimit-tokens-reset", in_ms(40_000)),
        ]);
        let q = QuotaReport::from_headers(&h).unwrap();
        assert_eq!(q.remaining_requests, Some(49));
        assert_eq!(q.remaining_tokens, Some(7000));
        let reset = q.reset_ms.unwrap();
        assert!((38_000..=40_000).contains(&reset), "{reset}");
        // What a router sees next.
        let s = BackendState::default();
        s.record_quota(&q);
        let seen = s.snapshot();
        assert_eq!(
            (seen.remaining_requests, seen.remaining_tokens),
            (Some(49), Some(7000))
        );
        assert!(
            (37_000..=40_000).contains(&seen.quota_reset_ms),
            "{}",
            seen.quota_reset_ms
        );
    }

    #[test]
    fn azure_headers_are_openai_with_retry_after_ms() {
        let h = headers(&[
            ("x-ratelimit-remaining-requests", "119".into()),
            ("x-ratelimit-remaining-tokens", "119000".into()),
            ("retry-after-ms", "2500".into()),
            ("retry-after", "3".into()),
        ]);
        let q = QuotaReport::from_headers(&h).unwrap();
        assert_eq!(q.remaining_tokens, Some(119_000));
        assert_eq!(q.retry_after_ms, Some(2500));
        assert_eq!(q.reset_ms, Some(3000));
    }

    #[test]
    fn retry_after_in_every_form() {
        let q = QuotaReport::from_headers(&headers(&[
            ("retry-after-ms", "1500".into()),
            ("retry-after", "2".into()),
        ]))
        .unwrap();
        assert_eq!(q.retry_after_ms, Some(1500));
        let q = QuotaReport::from_headers(&headers(&[
            ("retry-after", "2".into()),
            ("retry-after-ms", "1500".into()),
        ]))
        .unwrap();
        assert_eq!(q.retry_after_ms, Some(1500));
        let q = QuotaReport::from_headers(&headers(&[(
            "retry-after",
            "Wed, 21 Oct 2015 07:28:00 GMT".into(),
        )]))
        .unwrap();
        assert_eq!(q.retry_after_ms, Some(0), "a date in the past means now");
        let q = QuotaReport::from_headers(&headers(&[("retry-after", "soon".into())])).unwrap();
        assert_eq!(q.retry_after_ms, None);
    }
}
