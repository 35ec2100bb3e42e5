//! The JSON line of an access-log event, written straight into the line.
//!
//! `tracing-subscriber`'s JSON format goes through serde: a map serializer
//! over an `io::Write` adaptor that checks every fragment is UTF-8, a
//! `String` for the timestamp, a serde call per field. On a `/_status` load
//! that was most of the user-space cost of the access log. Access-log events
//! (target [`ACCESS_LOG_TARGET`]) are written here instead, byte for byte as
//! the standard format writes them (its escaping, its number formats, its
//! key order: `timestamp`, `level`, the fields as recorded, `target`); every
//! other event goes to the standard format. A test compares the two.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{Format, Json, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use wharf_http::middleware::access_log::ACCESS_LOG_TARGET;

/// The event format of JSON logs: see the [module docs](self).
#[derive(Debug)]
pub(crate) struct JsonLines {
    standard: Format<Json, SystemTime>,
}

impl JsonLines {
    /// Lines as `standard` writes them (flattened, no span fields).
    pub(crate) fn new(standard: Format<Json, SystemTime>) -> Self {
        Self { standard }
    }
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        if meta.target() != ACCESS_LOG_TARGET {
            return self.standard.format_event(ctx, writer, event);
        }
        writer.write_str("{\"timestamp\":\"")?;
        timestamp(&mut writer, std::time::SystemTime::now())?;
        writer.write_str("\",\"level\":\"")?;
        writer.write_str(meta.level().as_str())?;
        writer.write_char('"')?;
        let mut fields = Fields {
            out: &mut writer,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        writer.write_str(",\"target\":")?;
        string(&mut writer, meta.target())?;
        writer.write_str("}\n")
    }
}

/// The UTC second last written, and its `YYYY-MM-DDTHH:MM:SS` text.
struct Second {
    unix: u64,
    text: [u8; 19],
}

thread_local! {
    static SECOND: std::cell::Cell<Option<Second>> = const { std::cell::Cell::new(None) };
}

/// Writes `now` as `tracing-subscriber`'s `SystemTime` does
/// (`2026-12-07T23:31:04.123456Z`), formatting the date and time of day
/// once per second per thread (nginx caches its time strings the same
/// way): on a `/_status` load the standard timer was 2 % of the CPU.
/// Outside years 1970-9999 it defers to the standard timer.
fn timestamp(out: &mut Writer<'_>, now: std::time::SystemTime) -> fmt::Result {
    let Ok(since) = now.duration_since(std::time::UNIX_EPOCH) else {
        return SystemTime.format_time(out);
    };
    let unix = since.as_secs();
    let text = match SECOND.take() {
        Some(second) if second.unix == unix => second.text,
        _ => match civil(unix) {
            Some(text) => text,
            None => return SystemTime.format_time(out),
        },
    };
    SECOND.set(Some(Second { unix, text }));
    let mut tail = *b".000000Z";
    let mut micros = since.subsec_micros();
    for digit in tail[1..7].iter_mut().rev() {
        // `micros % 10` is below 10: the cast cannot truncate.
        #[allow(clippy::cast_possible_truncation)]
        let d = (micros % 10) as u8;
        *digit = b'0' + d;
        micros /= 10;
    }
    // Both are ASCII digits and punctuation.
    out.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?)?;
    out.write_str(std::str::from_utf8(&tail).map_err(|_| fmt::Error)?)
}

/// `YYYY-MM-DDTHH:MM:SS` of a Unix second (UTC), for years up to 9999;
/// the calendar is the `time` crate's (once a second, so its speed does
/// not matter).
fn civil(unix: u64) -> Option<[u8; 19]> {
    let date = time::OffsetDateTime::from_unix_timestamp(i64::try_from(unix).ok()?).ok()?;
    let year = u64::try_from(date.year()).ok().filter(|y| *y <= 9999)?;
    let mut text = *b"0000-00-00T00:00:00";
    let mut put = |at: usize, width: usize, mut value: u64| {
        for i in (at..at + width).rev() {
            // `value % 10` is below 10: the cast cannot truncate.
            #[allow(clippy::cast_possible_truncation)]
            let d = (value % 10) as u8;
            text[i] = b'0' + d;
            value /= 10;
        }
    };
    put(0, 4, year);
    put(5, 2, u64::from(u8::from(date.month())));
    put(8, 2, u64::from(date.day()));
    put(11, 2, u64::from(date.hour()));
    put(14, 2, u64::from(date.minute()));
    put(17, 2, u64::from(date.second()));
    Some(text)
}

/// Writes each field as `,"name":value`, as `tracing-serde`'s map visitor
/// does (the same methods overridden, so the same fall-backs to `Debug`).
struct Fields<'a, 'w> {
    out: &'a mut Writer<'w>,
    result: fmt::Result,
}

impl Fields<'_, '_> {
    fn entry(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'_>) -> fmt::Result) {
        if self.result.is_ok() {
            self.result = self
                .out
                .write_char(',')
                .and_then(|()| string(self.out, field.name()))
                .and_then(|()| self.out.write_char(':'))
                .and_then(|()| value(self.out));
        }
    }
}

impl Visit for Fields<'_, '_> {
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.entry(field, |out| {
            out.write_str(if value { "true" } else { "false" })
        });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.entry(field, |out| {
            out.write_char('"')?;
            write!(Escaped(out), "{value:?}")?;
            out.write_char('"')
        });
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.entry(field, |out| write!(out, "{value}"));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.entry(field, |out| write!(out, "{value}"));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.entry(field, |out| float(out, value));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.entry(field, |out| string(out, value));
    }
}

/// A JSON number as `serde_json` writes an `f64` (`null` when not finite).
fn float(out: &mut Writer<'_>, value: f64) -> fmt::Result {
    let mut buf = [0_u8; 32];
    let mut rest: &mut [u8] = &mut buf;
    serde_json::to_writer(&mut rest, &value).map_err(|_| fmt::Error)?;
    let written = 32 - rest.len();
    out.write_str(std::str::from_utf8(&buf[..written]).map_err(|_| fmt::Error)?)
}

/// A JSON string: `"`, the text escaped, `"`.
fn string(out: &mut Writer<'_>, text: &str) -> fmt::Result {
    out.write_char('"')?;
    escape(out, text)?;
    out.write_char('"')
}

/// Escapes what `serde_json` escapes (`"`, `\` and the C0 controls, with the
/// short forms `\b \t \n \f \r`), nothing else.
fn escape(out: &mut impl fmt::Write, text: &str) -> fmt::Result {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = text.as_bytes();
    let mut start = 0;
    for (i, &byte) in bytes.iter().enumerate() {
        let short = match byte {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            0x08 => "\\b",
            b'\t' => "\\t",
            b'\n' => "\\n",
            0x0c => "\\f",
            b'\r' => "\\r",
            0x00..=0x1f => "",
            _ => continue,
        };
        // `i` is at an ASCII byte: a character boundary.
        out.write_str(&text[start..i])?;
        start = i + 1;
        if short.is_empty() {
            out.write_str("\\u00")?;
            out.write_char(char::from(HEX[usize::from(byte >> 4)]))?;
            out.write_char(char::from(HEX[usize::from(byte & 0xf)]))?;
        } else {
            out.write_str(short)?;
        }
    }
    out.write_str(&text[start..])
}

/// Escapes everything written through it.
struct Escaped<'a, 'w>(&'a mut Writer<'w>);

impl fmt::Write for Escaped<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        escape(self.0, s)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt;

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn standard() -> Format<Json, SystemTime> {
        fmt::format()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
    }

    /// The lines `emit` logs, through the standard format or ours.
    fn lines(ours: bool, emit: fn()) -> Vec<String> {
        let out = Captured::default();
        let writer = out.clone();
        let layer = fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(move || writer.clone());
        let subscriber = tracing_subscriber::layer::SubscriberExt::with(
            tracing_subscriber::registry(),
            if ours {
                tracing_subscriber::Layer::boxed(layer.event_format(JsonLines::new(standard())))
            } else {
                tracing_subscriber::Layer::boxed(layer)
            },
        );
        tracing::subscriber::with_default(subscriber, emit);
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        text.lines().map(str::to_owned).collect()
    }

    /// A line with its timestamp's value blanked (the clock moved).
    fn without_timestamp(line: &str) -> String {
        let mut value: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(value["timestamp"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')));
        value["timestamp"] = serde_json::Value::Null;
        assert!(line.starts_with("{\"timestamp\":\""), "{line}");
        // Blank the value in the text itself: key order is compared too.
        let end = line[14..].find('"').unwrap() + 14;
        format!("{}{}", &line[..14], &line[end..])
    }

    fn events() {
        let path = "/d/a\"b\\c\u{1}\u{8}\u{c}\n\r\t\u{1f}\u{7f}é😀";
        tracing::info!(
            target: ACCESS_LOG_TARGET,
            method = %http::Method::GET,
            path = %path,
            query = Some(tracing::field::display("key=[redacted]&x=\"1\"")),
            protocol = ?http::Version::HTTP_11,
            status = 200_u16,
            bytes = 3_u64,
            duration_ms = 0.123,
            request_id = Some("abc-123"),
            trace_id = None::<&str>,
            peer = Some("127.0.0.1:4242"),
            negative = -5_i64,
            flag = true,
            user_agent = %"agent \u{fffd} \"quoted\"",
            pid = 4242_u32,
            "Served request"
        );
        for duration_ms in [0.0, 1.0, 1e-7, 123_456.789, 1e21, f64::NAN, f64::INFINITY] {
            tracing::info!(target: ACCESS_LOG_TARGET, duration_ms, "Served request");
        }
        tracing::warn!(target: ACCESS_LOG_TARGET, big = u64::MAX, small = i64::MIN, "odd");
        tracing::info!(port = 7001, "Listening");
    }

    fn ours(t: std::time::SystemTime) -> String {
        let mut text = String::new();
        timestamp(&mut Writer::new(&mut text), t).unwrap();
        text
    }

    /// The cached timestamp is the text of the standard timer's format
    /// (`{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z` of the UTC date, as
    /// `tracing-subscriber`'s `DateTime` writes it), written here with
    /// `format!`, across a century, leap days, year ends and the cache.
    #[test]
    fn timestamps_match_the_standard_format() {
        let mut secs: Vec<i64> = (0..4_300).map(|i| i * 997_781).collect();
        // 2000-02-29, its last second, 2100-02-28 (not leap), 2026-12-31 23:59:59.
        secs.extend([951_782_400, 951_868_799, 4_107_542_399, 1_798_761_599]);
        for s in secs {
            let date = time::OffsetDateTime::from_unix_timestamp(s).unwrap();
            for micros in [0_u32, 7, 999_999] {
                let t = std::time::UNIX_EPOCH
                    + std::time::Duration::new(u64::try_from(s).unwrap(), micros * 1_000);
                let expected = format!(
                    "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
                    date.year(),
                    u8::from(date.month()),
                    date.day(),
                    date.hour(),
                    date.minute(),
                    date.second(),
                    micros
                );
                assert_eq!(ours(t), expected);
                // Again, from the cache.
                assert_eq!(ours(t), expected);
            }
        }
    }

    /// ... and the standard timer agrees on `now`, to the second.
    #[test]
    fn timestamps_match_the_standard_timer_now() {
        for _ in 0..10 {
            let mut standard = String::new();
            SystemTime
                .format_time(&mut Writer::new(&mut standard))
                .unwrap();
            let mine = ours(std::time::SystemTime::now());
            if standard[..19] == mine[..19] {
                assert_eq!(standard.len(), mine.len());
                assert!(mine.ends_with('Z') && mine.as_bytes()[19] == b'.');
                return;
            }
        }
        panic!("the seconds never matched");
    }

    #[test]
    fn access_lines_are_byte_for_byte_the_standard_json_format() {
        let standard = lines(false, events);
        let ours = lines(true, events);
        assert_eq!(standard.len(), 10, "{standard:#?}");
        assert_eq!(ours.len(), standard.len());
        for (a, b) in standard.iter().zip(&ours) {
            assert_eq!(without_timestamp(b), without_timestamp(a));
        }
        assert!(
            ours[0].contains(r#""path":"/d/a\"b\\c\u0001\b\f\n\r\t\u001f"#),
            "{}",
            ours[0]
        );
        assert!(ours[1].contains(r#""duration_ms":0.0,"#), "{}", ours[1]);
    }
}
