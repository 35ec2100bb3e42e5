//! How the pages word things: file types, file sizes, expiry dates and the
//! service's contact details.
//!
//! The calendar arithmetic ([`Date`]) stays hand-written on purpose (issue
//! #23 asked why): it is Howard Hinnant's published `days_from_civil` and
//! `civil_from_days`, a dozen lines each, exact for every `i32` year. `Date`
//! is part of this crate's API, with an `i32` year and total `add_days` and
//! `days_since_epoch`; `time::Date` and `jiff::civil::Date` stop at ±9999,
//! so with either those would become fallible or keep this code as a
//! fallback, and the conversions to and from them would be as long as the
//! arithmetic. Neither crate is otherwise in wharf-download's build. What
//! recipients see is pinned instead: `known_dates_are_pinned` (known dates
//! and expiry texts, checked against Python's `datetime`) and
//! `dates_agree_with_the_time_crate` (against the `time` crate: every day
//! of two 400-year cycles and a sample of its whole range, both directions,
//! weekday and month names).

use std::fmt;
use std::sync::Arc;

use crate::email::email_shape;

/// The readable name of a file extension, as the existing service shows it;
/// `None` for an extension it does not know (the page then says "file").
pub(crate) fn file_type_name(extension: &str) -> Option<&'static str> {
    Some(match extension.to_ascii_lowercase().as_str() {
        "csv" => "CSV file",
        "doc" | "docx" => "Microsoft Word document",
        "odt" | "rtf" | "txt" => "text file",
        "pdf" => "PDF",
        "png" => "PNG file",
        "jpeg" | "jpg" => "JPEG file",
        "json" => "JSON file",
        "xlsx" => "Microsoft Excel spreadsheet",
        _ => return None,
    })
}

/// A service's name and contact details, as the Notify API (or the local
/// one) gives them and the pages show them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServiceInfo {
    pub(crate) name: String,
    pub(crate) contact_link: Option<String>,
}

/// A size as the existing service shows it: at most one decimal place, KB below
/// 0.05 MB, never less than 0.1KB. (`10.0` shows as `10MB`; the old service's
/// `rstrip(".0")` showed it as `1MB`, see docs/compatibility.md.)
pub(crate) fn pretty_file_size(bytes: u64) -> String {
    // Sizes are far below 2^52, so the conversion is exact.
    #[allow(clippy::cast_precision_loss)]
    let size = bytes as f64;
    if size < 1024.0 / 20.0 {
        return "0.1KB".to_owned();
    }
    let (value, unit) = if size < (1024.0 * 1024.0) / 20.0 {
        (size / 1024.0, "KB")
    } else {
        (size / (1024.0 * 1024.0), "MB")
    };
    // Rust rounds the exact binary value half-to-even, as Python's round() does.
    let text = format!("{value:.1}");
    let text = text.strip_suffix(".0").unwrap_or(&text);
    format!("{text}{unit}")
}

/// A calendar date (proleptic Gregorian).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Date {
    /// The year, e.g. 2022.
    pub year: i32,
    /// 1–12.
    pub month: u8,
    /// 1–31.
    pub day: u8,
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

impl Date {
    /// A date, if it exists.
    pub fn new(year: i32, month: u8, day: u8) -> Option<Self> {
        let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
        let days_in_month = match month {
            1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
            4 | 6 | 9 | 11 => 30,
            2 if leap => 29,
            2 => 28,
            _ => return None,
        };
        (1..=days_in_month)
            .contains(&day)
            .then_some(Self { year, month, day })
    }

    /// Days since 1970-01-01 (negative before).
    pub fn days_since_epoch(self) -> i64 {
        // Howard Hinnant's days_from_civil.
        let y = i64::from(self.year) - i64::from(self.month <= 2);
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let m = i64::from(self.month);
        let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(self.day) - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }

    /// The date `days` after 1970-01-01.
    pub fn from_days_since_epoch(days: i64) -> Self {
        // Howard Hinnant's civil_from_days.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        Self {
            year: i32::try_from(year).unwrap_or(i32::MAX),
            month: u8::try_from(month).unwrap_or(1),
            day: u8::try_from(day).unwrap_or(1),
        }
    }

    /// This date plus `days` (negative allowed).
    #[must_use]
    pub fn add_days(self, days: i64) -> Self {
        Self::from_days_since_epoch(self.days_since_epoch() + days)
    }

    /// Today in UTC, from the system clock.
    pub fn today_utc() -> Self {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Self::from_days_since_epoch(i64::try_from(secs / 86_400).unwrap_or(0))
    }

    /// Parses the date at the start of an ISO 8601 date or date-time
    /// (`2022-11-11`, `2022-11-11T00:00:00+00:00`).
    pub fn parse_iso_prefix(text: &str) -> Option<Self> {
        let text = text.trim();
        let date = text.get(..10)?;
        let rest = &text[10..];
        if !(rest.is_empty() || rest.starts_with(['T', 't', ' '])) {
            return None;
        }
        let b = date.as_bytes();
        if b[4] != b'-' || b[7] != b'-' {
            return None;
        }
        let digits = |s: &str| -> Option<u32> {
            s.bytes()
                .all(|c| c.is_ascii_digit())
                .then(|| s.parse().ok())
                .flatten()
        };
        Self::new(
            i32::try_from(digits(&date[..4])?).ok()?,
            u8::try_from(digits(&date[5..7])?).ok()?,
            u8::try_from(digits(&date[8..10])?).ok()?,
        )
    }

    /// The weekday name.
    pub fn weekday(self) -> &'static str {
        // 1970-01-01 was a Thursday (index 3 from Monday).
        let index = (self.days_since_epoch() + 3).rem_euclid(7);
        WEEKDAYS[usize::try_from(index).unwrap_or(0)]
    }

    fn month_name(self) -> &'static str {
        MONTHS[usize::from(self.month.clamp(1, 12) - 1)]
    }
}

impl fmt::Display for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

/// Where "today" comes from: the system clock in production, a fixed date in tests.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> Date + Send + Sync>);

impl Clock {
    /// The system clock (UTC).
    pub fn system() -> Self {
        Self(Arc::new(Date::today_utc))
    }

    /// Always `date`.
    pub fn fixed(date: Date) -> Self {
        Self(Arc::new(move || date))
    }

    /// Today.
    pub fn today(&self) -> Date {
        (self.0)()
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::system()
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Clock(today = {})", self.today())
    }
}

/// The expiry date as the download page shows it: with the weekday when it is
/// at most 30 days away (`Friday 11 November 2022`), else `12 November 2022`.
/// Days have no leading zero (GOV.UK style; the old service's `%d` padded them).
pub(crate) fn format_expiry_date(expiry: Date, today: Date) -> String {
    let base = format!("{} {} {}", expiry.day, expiry.month_name(), expiry.year);
    if expiry.days_since_epoch() - today.days_since_epoch() <= 30 {
        format!("{} {base}", expiry.weekday())
    } else {
        base
    }
}

/// Whether a document whose `available_until` is `expiry` has expired.
pub(crate) fn has_expired(expiry: Date, today: Date) -> bool {
    expiry < today
}

/// How the service asked to be contacted, rendered accordingly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Contact {
    /// A web page.
    Link(String),
    /// An email address (`mailto:` link).
    Email(String),
    /// Anything else, shown as text: usually a phone number.
    Other(String),
    /// No contact details.
    None,
}

impl Contact {
    /// DDF's `assess_contact_type` (app/utils.py): an email address when
    /// Notify's `EMAIL_REGEX_PATTERN` matches, a link when it starts with
    /// `http`, otherwise text; each test on the value as the Notify API sent
    /// it, untrimmed, and the value is kept as it came. No value, or one of
    /// whitespace only, is no contact details (DDF fails on `None` and shows
    /// "call ." for an empty string).
    pub(crate) fn assess(contact: Option<&str>) -> Self {
        match contact {
            None => Self::None,
            Some(c) if c.trim().is_empty() => Self::None,
            Some(c) if email_shape(c).is_some() => Self::Email(c.to_owned()),
            Some(c) if c.starts_with("http") => Self::Link(c.to_owned()),
            Some(c) => Self::Other(c.to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_sizes_match_the_existing_service() {
        assert_eq!(pretty_file_size(712_099), "0.7MB");
        assert_eq!(pretty_file_size(0), "0.1KB");
        assert_eq!(pretty_file_size(51), "0.1KB");
        assert_eq!(pretty_file_size(52), "0.1KB");
        assert_eq!(pretty_file_size(1024), "1KB");
        assert_eq!(pretty_file_size(1536), "1.5KB");
        assert_eq!(pretty_file_size(52_428), "51.2KB");
        assert_eq!(pretty_file_size(52_429), "0.1MB");
        assert_eq!(pretty_file_size(1024 * 1024), "1MB");
        assert_eq!(pretty_file_size(10 * 1024 * 1024), "10MB");
        assert_eq!(pretty_file_size(2_202_010), "2.1MB");
    }

    #[test]
    fn file_type_names() {
        assert_eq!(file_type_name("pdf"), Some("PDF"));
        assert_eq!(file_type_name("txt"), Some("text file"));
        assert_eq!(file_type_name("docx"), Some("Microsoft Word document"));
        assert_eq!(file_type_name("xlsx"), Some("Microsoft Excel spreadsheet"));
        assert_eq!(file_type_name("exe"), None);
    }

    #[test]
    fn civil_dates() {
        let d = Date::new(2022, 10, 12).unwrap();
        assert_eq!(d.weekday(), "Wednesday");
        assert_eq!(d.add_days(30), Date::new(2022, 11, 11).unwrap());
        assert_eq!(
            Date::from_days_since_epoch(0),
            Date::new(1970, 1, 1).unwrap()
        );
        assert_eq!(
            Date::new(2000, 2, 29).unwrap().add_days(365),
            Date::new(2001, 2, 28).unwrap()
        );
        assert!(Date::new(2023, 2, 29).is_none());
        for days in [-800_000, -1, 0, 1, 59, 60, 11_016, 20_000, 2_932_896] {
            assert_eq!(Date::from_days_since_epoch(days).days_since_epoch(), days);
        }
        assert_eq!(
            Date::parse_iso_prefix("2022-11-11"),
            Date::new(2022, 11, 11)
        );
        assert_eq!(
            Date::parse_iso_prefix("2022-11-11T23:00:00+00:00"),
            Date::new(2022, 11, 11)
        );
        assert_eq!(Date::parse_iso_prefix("2022-13-11"), None);
        assert_eq!(Date::parse_iso_prefix("11/11/2022"), None);
        assert_eq!(Date::parse_iso_prefix("2022-11-111"), None);
    }

    /// Known dates (proleptic Gregorian, as Python's `datetime` counts them):
    /// days since 1970-01-01 both ways, weekday, and the text recipients see.
    #[test]
    fn known_dates_are_pinned() {
        for ((year, month, day), days, weekday) in [
            ((1, 1, 1), -719_162, "Monday"),
            ((1582, 10, 15), -141_427, "Friday"),
            ((1600, 1, 1), -135_140, "Saturday"),
            ((1899, 12, 31), -25_568, "Sunday"),
            ((1900, 1, 1), -25_567, "Monday"),
            ((1900, 2, 28), -25_509, "Wednesday"),
            ((1900, 3, 1), -25_508, "Thursday"),
            ((1969, 12, 31), -1, "Wednesday"),
            ((1970, 1, 1), 0, "Thursday"),
            ((1999, 12, 31), 10_956, "Friday"),
            ((2000, 1, 1), 10_957, "Saturday"),
            ((2000, 2, 29), 11_016, "Tuesday"),
            ((2000, 3, 1), 11_017, "Wednesday"),
            ((2022, 10, 12), 19_277, "Wednesday"),
            ((2022, 11, 11), 19_307, "Friday"),
            ((2024, 2, 29), 19_782, "Thursday"),
            ((2038, 1, 19), 24_855, "Tuesday"),
            ((2100, 2, 28), 47_540, "Sunday"),
            ((2100, 3, 1), 47_541, "Monday"),
            ((2400, 2, 29), 157_113, "Tuesday"),
            ((9999, 12, 31), 2_932_896, "Friday"),
        ] {
            let date = Date::new(year, month, day).unwrap();
            assert_eq!(date.days_since_epoch(), days, "{date}");
            assert_eq!(Date::from_days_since_epoch(days), date, "{days}");
            assert_eq!(date.weekday(), weekday, "{date}");
        }
        for (date, today, want) in [
            ((2022, 1, 1), (2021, 1, 1), "1 January 2022"),
            ((2022, 2, 1), (2021, 1, 1), "1 February 2022"),
            ((2022, 3, 1), (2021, 1, 1), "1 March 2022"),
            ((2022, 4, 1), (2021, 1, 1), "1 April 2022"),
            ((2022, 5, 1), (2021, 1, 1), "1 May 2022"),
            ((2022, 6, 1), (2021, 1, 1), "1 June 2022"),
            ((2022, 7, 1), (2021, 1, 1), "1 July 2022"),
            ((2022, 8, 1), (2021, 1, 1), "1 August 2022"),
            ((2022, 9, 1), (2021, 1, 1), "1 September 2022"),
            ((2022, 10, 1), (2021, 1, 1), "1 October 2022"),
            ((2022, 11, 1), (2021, 1, 1), "1 November 2022"),
            ((2022, 12, 31), (2021, 1, 1), "31 December 2022"),
            // Within 30 days, across a year end and a leap day.
            ((2024, 1, 1), (2023, 12, 31), "Monday 1 January 2024"),
            ((2024, 2, 29), (2024, 1, 30), "Thursday 29 February 2024"),
            ((2024, 3, 1), (2024, 1, 30), "1 March 2024"),
            ((2023, 3, 1), (2023, 1, 30), "Wednesday 1 March 2023"),
            ((2100, 3, 1), (2100, 2, 28), "Monday 1 March 2100"),
            // Today and the past show the weekday too.
            ((2022, 10, 12), (2022, 10, 12), "Wednesday 12 October 2022"),
            ((2022, 10, 11), (2022, 10, 12), "Tuesday 11 October 2022"),
        ] {
            let expiry = Date::new(date.0, date.1, date.2).unwrap();
            let today = Date::new(today.0, today.1, today.2).unwrap();
            assert_eq!(format_expiry_date(expiry, today), want, "{expiry}");
        }
    }

    /// The arithmetic against the `time` crate (a dev-dependency): every day
    /// of 1600-2399 (two whole 400-year cycles of the Gregorian calendar,
    /// which repeats with that period) and every 97th day from -9999-01-01
    /// to 9999-12-31 (`time`'s range); days since 1970 both ways, the
    /// weekday, and every weekday and month name.
    #[test]
    fn dates_agree_with_the_time_crate() {
        let epoch = time::Date::from_calendar_date(1970, time::Month::January, 1)
            .unwrap()
            .to_julian_day();
        let check = |day: time::Date| {
            let days = i64::from(day.to_julian_day() - epoch);
            let ours = Date::new(day.year(), u8::from(day.month()), day.day()).unwrap();
            assert_eq!(ours.days_since_epoch(), days, "{day}");
            assert_eq!(Date::from_days_since_epoch(days), ours, "{day}");
            assert_eq!(
                ours.weekday(),
                WEEKDAYS[usize::from(day.weekday().number_days_from_monday())],
                "{day}"
            );
        };
        let first = time::Date::from_calendar_date(1600, time::Month::January, 1).unwrap();
        let last = time::Date::from_calendar_date(2399, time::Month::December, 31).unwrap();
        for julian in first.to_julian_day()..=last.to_julian_day() {
            check(time::Date::from_julian_day(julian).unwrap());
        }
        let (min, max) = (
            time::Date::MIN.to_julian_day(),
            time::Date::MAX.to_julian_day(),
        );
        for julian in (min..=max).step_by(97).chain([max]) {
            check(time::Date::from_julian_day(julian).unwrap());
        }
        let monday = time::Date::from_calendar_date(2024, time::Month::January, 1).unwrap();
        for (i, name) in WEEKDAYS.iter().enumerate() {
            let day = monday + time::Duration::days(i64::try_from(i).unwrap());
            assert_eq!(*name, day.weekday().to_string());
        }
        for (i, name) in MONTHS.iter().enumerate() {
            let month = time::Month::try_from(u8::try_from(i + 1).unwrap()).unwrap();
            let date = Date::new(2022, u8::from(month), 1).unwrap();
            assert_eq!(*name, month.to_string());
            assert_eq!(date.month_name(), month.to_string());
        }
    }

    #[test]
    fn expiry_dates_around_the_30_day_boundary() {
        let today = Date::new(2022, 10, 12).unwrap();
        assert_eq!(
            format_expiry_date(today.add_days(30), today),
            "Friday 11 November 2022"
        );
        assert_eq!(
            format_expiry_date(today.add_days(31), today),
            "12 November 2022"
        );
        assert_eq!(
            format_expiry_date(today.add_days(23), today),
            "Friday 4 November 2022"
        );
        assert!(!has_expired(today, today));
        assert!(has_expired(today.add_days(-1), today));
    }

    #[test]
    fn contact_types() {
        assert_eq!(
            Contact::assess(Some("https://sample-service.gov.uk")),
            Contact::Link("https://sample-service.gov.uk".into())
        );
        assert_eq!(
            Contact::assess(Some("info@sample-service.gov.uk")),
            Contact::Email("info@sample-service.gov.uk".into())
        );
        assert_eq!(
            Contact::assess(Some("07123456789")),
            Contact::Other("07123456789".into())
        );
        assert_eq!(Contact::assess(None), Contact::None);
    }

    /// DDF `tests/app/test_utils.py`
    /// `test_assess_contact_type_recognises_email_phone_and_link`, its eight
    /// cases ("other" is [`Contact::Other`]).
    #[test]
    fn assess_contact_type_recognises_email_phone_and_link() {
        for (contact, kind) in [
            ("07123456789", "other"),
            ("pinkdiamond@homeworld.gem", "email"),
            ("pink.diamond@digital.diamond-office.gov.uk", "email"),
            ("https://homeworld.gem/contact-us", "link"),
            ("http://homeworld.gem/contact-us", "link"),
            ("www.homeworld.gem", "other"),
            ("homeworld.gem", "other"),
            ("pinkdiamond", "other"),
        ] {
            let want = match kind {
                "email" => Contact::Email(contact.to_owned()),
                "link" => Contact::Link(contact.to_owned()),
                _ => Contact::Other(contact.to_owned()),
            };
            assert_eq!(Contact::assess(Some(contact)), want, "{contact:?}");
        }
    }

    /// DDF's `assess_contact_type` (app/utils.py) looks at the contact link as
    /// the Notify API sent it: `re.search(EMAIL_REGEX_PATTERN, s)`, then
    /// `s.startswith("http")`, else "other"; the page shows `s` as it is.
    /// Each row's type is what Python 3.11 gives for that function.
    #[test]
    fn contact_types_are_assessed_untrimmed() {
        for (contact, want) in [
            (" info@x.gov.uk", Contact::Other(" info@x.gov.uk".into())),
            ("info@x.gov.uk ", Contact::Other("info@x.gov.uk ".into())),
            ("\ninfo@x.gov.uk", Contact::Other("\ninfo@x.gov.uk".into())),
            // `$` also matches before a final newline.
            ("info@x.gov.uk\n", Contact::Email("info@x.gov.uk\n".into())),
            (
                "info@x.gov.uk\n\n",
                Contact::Other("info@x.gov.uk\n\n".into()),
            ),
            (
                " https://x.gov.uk",
                Contact::Other(" https://x.gov.uk".into()),
            ),
            (
                "\thttps://x.gov.uk",
                Contact::Other("\thttps://x.gov.uk".into()),
            ),
            (
                "https://x.gov.uk ",
                Contact::Link("https://x.gov.uk ".into()),
            ),
            ("httpfoo", Contact::Link("httpfoo".into())),
            (
                "HTTPS://x.gov.uk",
                Contact::Other("HTTPS://x.gov.uk".into()),
            ),
            (" 0207 123 4567 ", Contact::Other(" 0207 123 4567 ".into())),
            // DDF would print "call ." here; wharf omits the paragraph, as
            // for a null contact link (docs/compatibility.md).
            ("", Contact::None),
            (" \t", Contact::None),
        ] {
            assert_eq!(Contact::assess(Some(contact)), want, "{contact:?}");
        }
    }
}
