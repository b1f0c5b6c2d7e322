//! The CSV analysis itself: a streaming pass over the records that keeps only per-column
//! counters, so memory stays flat however large the file is. Every size that input controls
//! is bounded: a record's length ([`MAX_RECORD_BYTES`], checked as bytes arrive, before the
//! parser buffers them), the number of columns ([`MAX_COLUMNS`]), the length of a column name
//! kept ([`MAX_NAME_BYTES`]) and the distinct values remembered ([`MAX_VALUE_BYTES`] each,
//! [`DISTINCT_BUDGET_BYTES`] in all).

use serde::Serialize;
use std::collections::HashMap;
use std::io::{self, Read};

/// The longest record (a line, or several lines inside quotes) accepted: 1 MiB. A longer one
/// ends the analysis with an error naming its line.
pub const MAX_RECORD_BYTES: usize = 1024 * 1024;
/// The most columns a file may have.
pub const MAX_COLUMNS: usize = 500;
/// Column names are cut to this many bytes in the report.
pub const MAX_NAME_BYTES: usize = 200;
/// Values longer than this are counted but not remembered among the distinct values.
pub const MAX_VALUE_BYTES: usize = 200;
/// The bytes of distinct values remembered across all columns; past it, new values are counted
/// but not remembered (the columns say their distinct count is capped).
pub const DISTINCT_BUDGET_BYTES: usize = 8 * 1024 * 1024;
/// Distinct values counted per column before counting stops growing.
pub const DISTINCT_CAP: usize = 1_000;
/// Invalid rows listed (all are counted).
pub const INVALID_LISTED: usize = 1_000;
/// Most common values reported per column.
const TOP: usize = 5;

/// What the analysis found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Analysis {
    /// Valid data rows (the header is not a row).
    pub rows: u64,
    pub columns: Vec<ColumnReport>,
    pub invalid_count: u64,
    /// The first [`INVALID_LISTED`] invalid rows.
    pub invalid_rows: Vec<InvalidRow>,
}

/// One column's report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ColumnReport {
    pub name: String,
    /// integer, float, boolean, date or text (the narrowest type every value fits).
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Non-empty values.
    pub count: u64,
    pub empty: u64,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub mean: Option<f64>,
    /// Distinct values, counted up to [`DISTINCT_CAP`].
    pub distinct: u64,
    /// True when there were more distinct values than were counted.
    pub distinct_capped: bool,
    /// The most common values with their counts.
    pub top: Vec<(String, u64)>,
}

/// A row that could not be used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InvalidRow {
    /// 1-based line in the file (the header is line 1).
    pub line: u64,
    pub reason: String,
}

#[derive(Debug, Default)]
struct Column {
    name: String,
    count: u64,
    empty: u64,
    integer: bool,
    float: bool,
    boolean: bool,
    date: bool,
    min: f64,
    max: f64,
    sum: f64,
    values: HashMap<String, u64>,
    capped: bool,
}

impl Column {
    fn new(name: String) -> Self {
        Self {
            name,
            integer: true,
            float: true,
            boolean: true,
            date: true,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            ..Self::default()
        }
    }

    fn add(&mut self, raw: &str, budget: &mut usize) {
        let value = raw.trim();
        if value.is_empty() {
            self.empty += 1;
            return;
        }
        self.count += 1;
        self.integer &= value.parse::<i64>().is_ok();
        let number = value.parse::<f64>().ok().filter(|n| n.is_finite());
        self.float &= number.is_some();
        if let Some(n) = number {
            self.min = self.min.min(n);
            self.max = self.max.max(n);
            self.sum += n;
        }
        self.boolean &= matches!(
            value.to_ascii_lowercase().as_str(),
            "true" | "false" | "yes" | "no"
        );
        self.date &= chrono::NaiveDate::parse_from_str(value, "%Y-%m-%d").is_ok();
        if let Some(n) = self.values.get_mut(value) {
            *n += 1;
        } else if self.values.len() < DISTINCT_CAP
            && value.len() <= MAX_VALUE_BYTES
            && *budget >= value.len()
        {
            *budget -= value.len();
            self.values.insert(value.to_owned(), 1);
        } else {
            self.capped = true;
        }
    }

    fn report(self) -> ColumnReport {
        let any = self.count > 0;
        let kind = match () {
            _ if !any => "text",
            _ if self.integer => "integer",
            _ if self.float => "float",
            _ if self.boolean => "boolean",
            _ if self.date => "date",
            _ => "text",
        };
        let numeric = any && self.float;
        let mut top: Vec<(String, u64)> = self.values.into_iter().collect();
        let distinct = top.len() as u64;
        top.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        top.truncate(TOP);
        ColumnReport {
            name: self.name,
            kind,
            count: self.count,
            empty: self.empty,
            min: numeric.then_some(self.min),
            max: numeric.then_some(self.max),
            mean: numeric.then(|| self.sum / self.count as f64),
            distinct,
            distinct_capped: self.capped,
            top,
        }
    }
}

/// Reads CSV from `input`, calling `progress(bytes read so far)` every few thousand records; it
/// stops early (with an error) when `progress` returns false. Malformed rows are reported, not
/// fatal; an unreadable file or a missing header is an error.
pub fn analyze<R: Read>(
    input: R,
    mut progress: impl FnMut(u64) -> bool,
) -> Result<Analysis, String> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .has_headers(false)
        .from_reader(RecordLimit::new(input));
    let mut record = csv::ByteRecord::new();
    let header = match reader.read_byte_record(&mut record) {
        Ok(true) => record.clone(),
        Ok(false) => return Err("the file is empty".into()),
        Err(err) => return Err(format!("could not read the header: {}", io_message(&err))),
    };
    if header.len() > MAX_COLUMNS {
        return Err(format!(
            "the header has {} columns; at most {MAX_COLUMNS} are supported",
            header.len()
        ));
    }
    let mut columns: Vec<Column> = header
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let name = String::from_utf8_lossy(name).trim().to_owned();
            Column::new(if name.is_empty() {
                format!("column {}", i + 1)
            } else {
                crate::limits::truncate(name, MAX_NAME_BYTES)
            })
        })
        .collect();
    let mut rows = 0_u64;
    let mut invalid = Invalid::default();
    let mut budget = DISTINCT_BUDGET_BYTES;

    loop {
        let read = reader.read_byte_record(&mut record);
        let line = record.position().map_or(0, |p| p.line());
        match read {
            Ok(false) => break,
            Ok(true) => {}
            Err(err) => {
                if let csv::ErrorKind::Io(_) = err.kind() {
                    return Err(format!("could not read the file: {}", io_message(&err)));
                }
                invalid.add(line, err.to_string());
                continue;
            }
        }
        if record.len() != columns.len() {
            invalid.add(
                line,
                format!("expected {} fields, found {}", columns.len(), record.len()),
            );
        } else {
            match record
                .iter()
                .map(std::str::from_utf8)
                .collect::<Result<Vec<_>, _>>()
            {
                Ok(values) => {
                    rows += 1;
                    for (column, value) in columns.iter_mut().zip(values) {
                        column.add(value, &mut budget);
                    }
                }
                Err(_) => invalid.add(line, "not valid UTF-8".into()),
            }
        }
        if (rows + invalid.count).is_multiple_of(4096) && !progress(reader.position().byte()) {
            return Err("cancelled".into());
        }
    }
    progress(reader.position().byte());
    Ok(Analysis {
        rows,
        columns: columns.into_iter().map(Column::report).collect(),
        invalid_count: invalid.count,
        invalid_rows: invalid.listed,
    })
}

/// The message of a read error: an I/O error's own text (such as [`RecordLimit`]'s), else
/// the parser's.
fn io_message(err: &csv::Error) -> String {
    match err.kind() {
        csv::ErrorKind::Io(io) => io.to_string(),
        _ => err.to_string(),
    }
}

/// Where [`RecordLimit`] is in the CSV syntax, as the parser reads it: a quote opens a quoted
/// field only at the start of a field (elsewhere it is a plain character), and inside one a
/// doubled quote is an escaped quote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Syntax {
    /// At the start of a field.
    FieldStart,
    /// Inside an unquoted field.
    Unquoted,
    Quoted,
    /// Just after a quote inside a quoted field: the field's end, or the first of two quotes.
    QuoteInQuoted,
}

/// Passes bytes through to the CSV parser and fails the read once a record grows past
/// [`MAX_RECORD_BYTES`], so the parser never buffers more than that. A record ends at a line
/// break (`\n` or `\r`) outside a quoted field.
struct RecordLimit<R> {
    inner: R,
    /// Bytes since the last record break.
    record: usize,
    syntax: Syntax,
    /// 1-based line of the byte being read, and of the current record's first byte.
    line: u64,
    start: u64,
}

impl<R> RecordLimit<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            record: 0,
            syntax: Syntax::FieldStart,
            line: 1,
            start: 1,
        }
    }
}

impl<R: Read> Read for RecordLimit<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        for &byte in &buf[..n] {
            if byte == b'\n' {
                self.line += 1;
            }
            if matches!(byte, b'\n' | b'\r') && self.syntax != Syntax::Quoted {
                self.record = 0;
                self.start = self.line;
                self.syntax = Syntax::FieldStart;
                continue;
            }
            self.syntax = match (self.syntax, byte) {
                (Syntax::Quoted, b'"') => Syntax::QuoteInQuoted,
                (Syntax::Quoted, _) => Syntax::Quoted,
                // A second quote right after one is an escaped quote: still inside.
                (Syntax::QuoteInQuoted | Syntax::FieldStart, b'"') => Syntax::Quoted,
                (_, b',') => Syntax::FieldStart,
                _ => Syntax::Unquoted,
            };
            self.record += 1;
            if self.record > MAX_RECORD_BYTES {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "the record at line {} is longer than {} KiB, the most a record may be",
                        self.start,
                        MAX_RECORD_BYTES / 1024
                    ),
                ));
            }
        }
        Ok(n)
    }
}

/// Counts invalid rows and keeps the first [`INVALID_LISTED`].
#[derive(Default)]
struct Invalid {
    count: u64,
    listed: Vec<InvalidRow>,
}

impl Invalid {
    fn add(&mut self, line: u64, reason: String) {
        self.count += 1;
        if self.listed.len() < INVALID_LISTED {
            self.listed.push(InvalidRow { line, reason });
        }
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Bytes that CSV parsing cares about, mixed with any byte.
    fn csv_bytes() -> impl Strategy<Value = Vec<u8>> {
        let byte = prop_oneof![
            4 => prop::sample::select(b",\"\r\n a1.-e9tT".to_vec()),
            1 => any::<u8>(),
        ];
        prop::collection::vec(byte, 0..4_096)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1_000, failure_persistence: None, ..ProptestConfig::default() })]

        /// Any input ends in a report or an error, never a panic, and the report stays within
        /// the limits whatever the input.
        #[test]
        fn any_input_gives_a_bounded_report_or_an_error(input in csv_bytes()) {
            if let Ok(report) = analyze(input.as_slice(), |_| true) {
                prop_assert!(report.columns.len() <= MAX_COLUMNS);
                prop_assert!(report.invalid_rows.len() <= INVALID_LISTED);
                for column in &report.columns {
                    prop_assert!(column.name.len() <= MAX_NAME_BYTES + 4);
                }
                prop_assert!(report.rows <= input.len() as u64);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(text: &str) -> Analysis {
        analyze(text.as_bytes(), |_| true).expect("analysis")
    }

    #[test]
    fn types_and_statistics_are_inferred_per_column() {
        let report = run("id,price,active,day,name\n\
                          1,2.5,true,2026-01-01,\"Lovelace, Ada\"\n\
                          2,3,false,2026-01-02,Grace\n\
                          3,,yes,2026-01-03,Grace\n");
        assert_eq!(report.rows, 3);
        let kinds: Vec<_> = report.columns.iter().map(|c| c.kind).collect();
        assert_eq!(kinds, ["integer", "float", "boolean", "date", "text"]);
        let price = &report.columns[1];
        assert_eq!((price.count, price.empty), (2, 1));
        assert_eq!(
            (price.min, price.max, price.mean),
            (Some(2.5), Some(3.0), Some(2.75))
        );
        let name = &report.columns[4];
        assert_eq!(name.distinct, 2);
        assert_eq!(name.top[0], ("Grace".to_owned(), 2));
        assert_eq!(name.min, None);
    }

    #[test]
    fn bad_rows_are_listed_with_their_lines() {
        let report = run("a,b,c\n1,2,3\n4,5\n6,7,8,9\n10,11,12\n");
        assert_eq!(report.rows, 2);
        assert_eq!(report.invalid_count, 2);
        assert_eq!(
            report.invalid_rows,
            [
                InvalidRow {
                    line: 3,
                    reason: "expected 3 fields, found 2".into()
                },
                InvalidRow {
                    line: 4,
                    reason: "expected 3 fields, found 4".into()
                },
            ]
        );
        let bad_utf8 = analyze(&b"a\n\xff\xfe\n"[..], |_| true).expect("analysis");
        assert_eq!(bad_utf8.invalid_rows[0].reason, "not valid UTF-8");
    }

    #[test]
    fn distinct_values_are_capped() {
        let mut text = String::from("n\n");
        for i in 0..(DISTINCT_CAP + 10) {
            text.push_str(&format!("{i}\n"));
        }
        let column = &run(&text).columns[0];
        assert_eq!(column.distinct, DISTINCT_CAP as u64);
        assert!(column.distinct_capped);
        assert_eq!(column.count, DISTINCT_CAP as u64 + 10);
    }

    #[test]
    fn a_record_over_the_limit_is_refused_before_it_is_buffered() {
        // One header line of 8 MB: the read fails once 1 MiB has passed, naming the line.
        let mut text = String::from("a,b\n1,2\n\"");
        text.push_str(&"x\n".repeat(MAX_RECORD_BYTES / 2 + 1));
        let err = analyze(text.as_bytes(), |_| true).expect_err("too long");
        assert!(
            err.contains("record at line 3 is longer than 1024 KiB"),
            "{err}"
        );
        let header = ",".repeat(8_000_000);
        let err = analyze(header.as_bytes(), |_| true).expect_err("too long");
        assert!(err.contains("longer than 1024 KiB"), "{err}");
        // Long quoted fields with line breaks inside, each record under the limit, are fine.
        let field = "y".repeat(1000);
        let ok = format!("a\n\"{field}\n{field}\"\n\"z\"\"\"\n");
        assert_eq!(run(&ok).rows, 2);
    }

    #[test]
    fn quotes_inside_unquoted_fields_and_cr_line_ends_do_not_count_as_one_record() {
        // `55"` is a plain character in an unquoted field, as the parser reads it; with the
        // quote taken as opening a field, the rest of this 2 MB file would be one record.
        let mut text = String::from("name,size\r\nTV 55\",1\r\n");
        text.push_str(&"lamp,2\r\n".repeat(300_000));
        assert_eq!(run(&text).rows, 300_001);
        let mut old_mac = String::from("a,b\r");
        old_mac.push_str(&"1,2\r".repeat(300_000));
        assert_eq!(run(&old_mac).rows, 300_000);
        // A doubled quote inside quotes does not end the field: the line break after it is
        // inside the field, and the record keeps counting.
        let escaped = format!("a\n\"x\"\"{}\"\n", "\n".repeat(MAX_RECORD_BYTES + 1));
        assert!(analyze(escaped.as_bytes(), |_| true).is_err());
    }

    #[test]
    fn too_many_columns_is_an_error_and_names_are_cut() {
        let wide = vec!["c"; MAX_COLUMNS + 1].join(",");
        let err = analyze(wide.as_bytes(), |_| true).expect_err("too wide");
        assert_eq!(
            err,
            format!("the header has 501 columns; at most {MAX_COLUMNS} are supported")
        );
        let long_name = "n".repeat(5_000);
        let report = run(&format!("{long_name}\n1\n"));
        assert!(report.columns[0].name.len() <= MAX_NAME_BYTES);
    }

    #[test]
    fn long_values_are_counted_but_not_remembered() {
        let long = "v".repeat(MAX_VALUE_BYTES + 1);
        let column = &run(&format!("a\n{long}\n{long}\nshort\n")).columns[0];
        assert_eq!(column.count, 3);
        assert_eq!(column.distinct, 1);
        assert!(column.distinct_capped);
    }

    #[test]
    fn an_empty_file_is_an_error_and_a_stop_request_stops() {
        assert!(analyze(&b""[..], |_| true).is_err());
        let big = "x\n".repeat(10_000);
        assert_eq!(analyze(big.as_bytes(), |_| false), Err("cancelled".into()));
    }
}
