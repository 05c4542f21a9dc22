//! Import of realized-value deliveries from a customer's file (CSV or Excel `.xlsx`).
//!
//! Every data row becomes either an [`ImportedRow`] or one or more [`RowError`]s naming
//! the row as the customer sees it (header = row 1) and the column by its header in the
//! file. Problems with the file as a whole are a [`FileError`].
//!
//! Memory: input rows are streamed, both for CSV (one reused `ByteRecord`) and for xlsx
//! (calamine's cell reader, so no dense `Range` of width x height cells is built: a stray
//! cell in column XFD would otherwise cost gigabytes). What is kept is the output: an
//! `ImportedRow` is 96 bytes inline plus its `id`, `driver` and `note` heap strings, and
//! each id is held once more in the duplicate check. Roughly 200-250 bytes per row for
//! short ids, i.e. about 25 MB for 100k rows. Errors are capped at 1000.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Cursor;
use std::panic::{AssertUnwindSafe, catch_unwind};

use calamine::{DataRef, ExcelDateTime, ExcelDateTimeType, Reader, SheetType, Xlsx, XlsxError};
use chrono::{NaiveDate, NaiveDateTime};
use serde::{Deserialize, Serialize};

const MAX_ERRORS: usize = 1000;
const MAX_ID_CHARS: usize = 100;
const MAX_NOTE_CHARS: usize = 1000;
const PROGRESS_EVERY: usize = 1000;
/// Names shown in a message before "and N more".
const LIST_LIMIT: usize = 12;
/// Longest excerpt of a cell quoted back in a message.
const EXCERPT_CHARS: usize = 40;
const DEFAULT_NOTE: &str = "note";

/// Field slots, in the order of [`Mapping`].
const ID: usize = 0;
const DRIVER: usize = 1;
const VALUE: usize = 2;
const DATE: usize = 3;
const NOTE: usize = 4;
const FIELDS: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Xlsx,
}

impl Format {
    /// `"csv"` or `"xlsx"` (any case).
    pub fn from_name(name: &str) -> Option<Format> {
        match name.trim().to_ascii_lowercase().as_str() {
            "csv" => Some(Format::Csv),
            "xlsx" => Some(Format::Xlsx),
            _ => None,
        }
    }
}

/// Which header names hold each field. Matching is exact after trimming, case-insensitive.
///
/// `note: None` reads no note. The default `Some("note")` may be absent from the file;
/// any other note name must be present.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Mapping {
    pub id: String,
    pub driver: String,
    pub value: String,
    pub date: String,
    pub note: Option<String>,
}

impl Default for Mapping {
    fn default() -> Self {
        Mapping {
            id: "id".into(),
            driver: "driver".into(),
            value: "value".into(),
            date: "date".into(),
            note: Some(DEFAULT_NOTE.into()),
        }
    }
}

pub struct Rules<'a> {
    pub drivers: &'a [String],
    pub max_abs_value: f64,
    pub first_date: NaiveDate,
    pub last_date: NaiveDate,
    /// Most data rows (non-empty rows after the header) accepted in one file.
    pub max_rows: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImportedRow {
    /// Row number as the customer sees it: header is row 1, first data row is 2.
    pub row: usize,
    pub id: String,
    pub driver: String,
    pub value: f64,
    pub date: NaiveDate,
    pub note: Option<String>,
}

// Keeps the per-row cost in the module doc honest.
#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<ImportedRow>() <= 96);

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RowError {
    /// Same numbering as [`ImportedRow::row`]; 0 for the final "and N more" line.
    pub row: usize,
    /// Header as written in the file; empty for the final "and N more" line.
    pub column: String,
    pub message: String,
}

#[derive(Debug, Default)]
pub struct Parsed {
    /// Rows that passed every check.
    pub rows: Vec<ImportedRow>,
    pub errors: Vec<RowError>,
    /// Non-empty data rows read, accepted or not.
    pub total_rows: usize,
}

/// The whole file is refused.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("the file could not be read as {format}: {reason}")]
    Unreadable {
        format: &'static str,
        reason: String,
    },
    #[error("the workbook has no worksheet")]
    NoSheet,
    #[error("the file is empty: no header row was found")]
    Empty,
    #[error("column `{column}` was not found; headers found: {}", list_names(.found))]
    MissingColumn { column: String, found: Vec<String> },
    #[error("column `{column}` appears more than once in the header")]
    DuplicateColumn { column: String },
    #[error("columns must be separated by commas; the header looks separated by `{found}`")]
    Delimiter { found: char },
    #[error("the file has more than {limit} data rows; please split it into smaller files")]
    TooManyRows { limit: usize },
    #[error("the header row is refused: {reason}")]
    Header { reason: String },
}

/// Most bytes an .xlsx may inflate to, all its parts together: the rows
/// allowed take a small part of it; more is a decompression bomb.
const MAX_INFLATED: u64 = 256 << 20;
/// Most cells, and characters in one, a header row may have.
const MAX_HEADER_CELLS: usize = 1000;
const MAX_HEADER_CHARS: usize = 256;
/// Fewest bytes one shared string takes in its part (`<si><t/></si>`).
const MIN_SHARED_STRING_BYTES: u64 = 13;

/// Checks an .xlsx before calamine reads it: every part inflated for real
/// (the sizes a zip declares may lie) within [`MAX_INFLATED`] all together,
/// and the shared-string table announcing no more strings than its part
/// can hold (calamine reserves room for the count announced: a huge count
/// fails an allocation, which aborts the process).
fn check_xlsx(bytes: &[u8], max_inflated: u64) -> Result<(), FileError> {
    use std::io::Read;
    let unreadable = |reason: String| FileError::Unreadable {
        format: "xlsx",
        reason,
    };
    let mut archive =
        zip::ZipArchive::new(Cursor::new(bytes)).map_err(|error| unreadable(error.to_string()))?;
    let mut inflated = 0u64;
    for index in 0..archive.len() {
        let mut part = archive
            .by_index(index)
            .map_err(|error| unreadable(error.to_string()))?;
        let shared_strings = part.name().is_ok_and(|name| name == "xl/sharedStrings.xml");
        let mut limited = (&mut part).take(max_inflated - inflated + 1);
        // The table's head holds its counts.
        let mut head = Vec::new();
        if shared_strings {
            (&mut limited)
                .take(4096)
                .read_to_end(&mut head)
                .map_err(|error| unreadable(error.to_string()))?;
        }
        let rest = std::io::copy(&mut limited, &mut std::io::sink())
            .map_err(|error| unreadable(error.to_string()))?;
        let size = head.len() as u64 + rest;
        inflated += size;
        if inflated > max_inflated {
            return Err(unreadable(format!(
                "it inflates to more than {max_inflated} bytes"
            )));
        }
        if shared_strings {
            let head = String::from_utf8_lossy(&head);
            // The table's tag must be in its head, where the counts are read.
            let tag = head
                .find("<sst")
                .and_then(|at| head[at..].find('>').map(|end| &head[at..at + end]))
                .ok_or_else(|| {
                    unreadable("its shared strings do not begin in their first 4 KiB".into())
                })?;
            // `count` is of references to the table: it may be larger.
            let announced = attribute_number(tag, "uniqueCount").unwrap_or(0);
            if announced > size / MIN_SHARED_STRING_BYTES + 1 {
                return Err(unreadable(format!(
                    "its shared strings announce {announced} strings in {size} bytes"
                )));
            }
        }
    }
    Ok(())
}

/// The number of attribute `name` in an XML tag (`name = '123'` as well
/// as `name="123"`), if any.
fn attribute_number(tag: &str, name: &str) -> Option<u64> {
    let mut from = 0;
    while let Some(found) = tag[from..].find(name) {
        let at = from + found;
        from = at + name.len();
        if !tag[..at].ends_with(|c: char| c.is_ascii_whitespace()) {
            continue;
        }
        let rest = tag[from..].trim_start();
        let Some(rest) = rest.strip_prefix('=') else {
            continue;
        };
        let rest = rest.trim_start();
        let Some(rest) = rest.strip_prefix(['"', '\'']) else {
            continue;
        };
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        // More digits than a u64 holds: as large as can be.
        return Some(digits.parse().unwrap_or(u64::MAX));
    }
    None
}

/// Reads deliveries from `bytes`. `progress(read, total)` is called every 1000 rows
/// (`total` is 0 while unknown) and once at the end with `(total_rows, total_rows)`.
pub fn read(
    bytes: &[u8],
    format: Format,
    mapping: &Mapping,
    rules: &Rules,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Parsed, FileError> {
    if bytes.is_empty() {
        return Err(FileError::Empty);
    }
    match format {
        Format::Csv => read_csv(bytes, mapping, rules, progress),
        Format::Xlsx => read_xlsx(bytes, mapping, rules, progress),
    }
}

// ---------------------------------------------------------------- CSV

fn read_csv(
    bytes: &[u8],
    mapping: &Mapping,
    rules: &Rules,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Parsed, FileError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    if bytes.starts_with(b"PK\x03\x04") {
        return Err(FileError::Unreadable {
            format: "CSV",
            reason: "it looks like an Excel workbook; choose the xlsx format".into(),
        });
    }
    let unreadable = |e: csv::Error| FileError::Unreadable {
        format: "CSV",
        reason: e.to_string(),
    };
    // flexible: a short row is reported per column rather than refusing the file.
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(bytes);
    let mut record = csv::ByteRecord::new();
    let mut rows = RowCounter::default();
    let blank = |record: &csv::ByteRecord| record.iter().all(|f| f.trim_ascii().is_empty());

    loop {
        if !reader.read_byte_record(&mut record).map_err(unreadable)? {
            return Err(FileError::Empty);
        }
        rows.number(bytes, &record);
        if !blank(&record) {
            break;
        }
    }
    let headers: Vec<(usize, String)> = record
        .iter()
        .enumerate()
        .map(|(i, f)| (i, String::from_utf8_lossy(f).into_owned()))
        .collect();
    if let [(_, only)] = headers.as_slice()
        && let Some(found) = only.chars().find(|c| matches!(c, ';' | '\t'))
    {
        return Err(FileError::Delimiter { found });
    }
    let columns = resolve_columns(&headers, mapping)?;
    let index = columns.index;
    let mut collector = Collector::new(rules, columns, 0);

    while reader.read_byte_record(&mut record).map_err(unreadable)? {
        let row = rows.number(bytes, &record);
        if blank(&record) {
            continue;
        }
        let raws: [Raw; FIELDS] =
            std::array::from_fn(|f| match index[f].and_then(|i| record.get(i)) {
                None => Raw::Missing,
                Some(field) => std::str::from_utf8(field).map_or(Raw::NotUtf8, Raw::Text),
            });
        collector.row(row, &raws, progress)?;
    }
    Ok(collector.finish(progress))
}

/// Numbers CSV records as a spreadsheet shows them: blank lines count, line breaks
/// inside quoted fields do not. (csv's own `Position::line` counts neither reliably.)
#[derive(Default)]
struct RowCounter {
    /// Input offset up to which line breaks have been counted.
    scanned: usize,
    /// Line breaks before `scanned`, less those inside fields.
    breaks: usize,
    /// Line breaks inside the previous record's fields.
    inside: usize,
}

impl RowCounter {
    fn number(&mut self, input: &[u8], record: &csv::ByteRecord) -> usize {
        // The record's position may precede the blank lines the reader skipped.
        let mut start = record.position().map_or(0, |p| p.byte() as usize);
        while matches!(input.get(start), Some(b'\r' | b'\n')) {
            start += 1;
        }
        let start = start.clamp(self.scanned, input.len());
        self.breaks += line_breaks(&input[self.scanned..start]).saturating_sub(self.inside);
        self.scanned = start;
        self.inside = record.iter().map(line_breaks).sum();
        self.breaks + 1
    }
}

/// `\n`, `\r\n` and a lone `\r` each end a line.
fn line_breaks(bytes: &[u8]) -> usize {
    let lf = bytes.iter().filter(|&&b| b == b'\n').count();
    let cr_only = bytes
        .iter()
        .enumerate()
        .filter(|&(i, &b)| b == b'\r' && bytes.get(i + 1) != Some(&b'\n'))
        .count();
    lf + cr_only
}

// ---------------------------------------------------------------- xlsx

fn read_xlsx(
    bytes: &[u8],
    mapping: &Mapping,
    rules: &Rules,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Parsed, FileError> {
    check_xlsx(bytes, MAX_INFLATED)?;
    let mut book: Xlsx<_> = guarded(|| Xlsx::new(Cursor::new(bytes)))?;
    let sheet = book
        .sheets_metadata()
        .iter()
        .find(|s| s.typ == SheetType::WorkSheet)
        .map(|s| s.name.clone())
        .ok_or(FileError::NoSheet)?;
    let book = &mut book;
    let mut cells = guarded(move || Xlsx::worksheet_cells_reader(book, &sheet))?;
    let last_row = cells.dimensions().end.0;

    // The header is the first row with a non-blank cell, as calamine's ranges do.
    let mut header: Vec<(usize, String)> = Vec::new();
    let mut index = [None; FIELDS];
    let mut collector: Option<Collector> = None;
    // Current row: only the mapped cells are kept.
    let mut current: Option<u32> = None;
    let mut slots: [DataRef; FIELDS] = Default::default();
    let mut blank = true;

    loop {
        let next = guarded(|| cells.next_cell())?;
        let next_row = next.as_ref().map(|c| c.get_position().0);
        if let Some(row) = current
            && next_row != Some(row)
        {
            if !blank {
                match &mut collector {
                    None => {
                        let columns = resolve_columns(&header, mapping)?;
                        index = columns.index;
                        let total = last_row.saturating_sub(row) as usize;
                        collector = Some(Collector::new(rules, columns, total));
                    }
                    Some(collector) => {
                        let raws: [Raw; FIELDS] = std::array::from_fn(|f| match index[f] {
                            Some(_) => Raw::Cell(&slots[f]),
                            None => Raw::Missing,
                        });
                        collector.row(row as usize + 1, &raws, progress)?;
                    }
                }
            }
            header.clear();
            slots = Default::default();
            blank = true;
        }
        let Some(cell) = next else { break };
        let (row, col) = cell.get_position();
        current = Some(row);
        let value = cell.get_value();
        if blank_cell(value) {
            continue;
        }
        blank = false;
        if collector.is_none() {
            if let Ok(Some(name)) = text(&Raw::Cell(value)) {
                // Each cell may name one huge shared string: bounded
                // before it is copied.
                if header.len() >= MAX_HEADER_CELLS {
                    return Err(FileError::Header {
                        reason: format!("more than {MAX_HEADER_CELLS} cells"),
                    });
                }
                if name.chars().nth(MAX_HEADER_CHARS).is_some() {
                    return Err(FileError::Header {
                        reason: format!(
                            "cell {} has more than {MAX_HEADER_CHARS} characters",
                            col + 1
                        ),
                    });
                }
                header.push((col as usize, name.into_owned()));
            }
        } else {
            for (slot, at) in slots.iter_mut().zip(index) {
                if at == Some(col as usize) {
                    *slot = value.clone();
                }
            }
        }
    }
    Ok(collector.ok_or(FileError::Empty)?.finish(progress))
}

fn blank_cell(cell: &DataRef) -> bool {
    match cell {
        DataRef::Empty => true,
        DataRef::String(s) => s.trim().is_empty(),
        DataRef::SharedString(s) => s.trim().is_empty(),
        _ => false,
    }
}

/// calamine parses untrusted zip/XML: turn both its errors and any panic into a refusal.
fn guarded<T>(f: impl FnOnce() -> Result<T, XlsxError>) -> Result<T, FileError> {
    let unreadable = |reason: String| FileError::Unreadable {
        format: "an Excel workbook (xlsx)",
        reason,
    };
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(unreadable(e.to_string())),
        Err(_) => Err(unreadable("the file is damaged".into())),
    }
}

// ---------------------------------------------------------------- columns

struct Columns {
    /// Position of each field in the row; `None` only for an absent default note.
    index: [Option<usize>; FIELDS],
    /// Header of each field as written in the file, for error reports.
    name: [String; FIELDS],
}

fn resolve_columns(headers: &[(usize, String)], mapping: &Mapping) -> Result<Columns, FileError> {
    let wanted = [
        Some(mapping.id.as_str()),
        Some(mapping.driver.as_str()),
        Some(mapping.value.as_str()),
        Some(mapping.date.as_str()),
        mapping.note.as_deref(),
    ];
    let mut columns = Columns {
        index: [None; FIELDS],
        name: Default::default(),
    };
    for (field, want) in wanted.into_iter().enumerate() {
        let Some(want) = want else { continue };
        let key = want.trim().to_lowercase();
        let mut hits = headers
            .iter()
            .filter(|(_, h)| h.trim().to_lowercase() == key);
        match (hits.next(), hits.next()) {
            (Some((i, h)), None) => {
                columns.index[field] = Some(*i);
                columns.name[field] = h.trim().to_string();
            }
            (Some(_), Some(_)) => {
                return Err(FileError::DuplicateColumn {
                    column: want.trim().to_string(),
                });
            }
            (None, _) if field == NOTE && want == DEFAULT_NOTE => {}
            (None, _) => {
                return Err(FileError::MissingColumn {
                    column: want.trim().to_string(),
                    found: headers
                        .iter()
                        .map(|(_, h)| h.trim().to_string())
                        .filter(|h| !h.is_empty())
                        .collect(),
                });
            }
        }
    }
    Ok(columns)
}

// ---------------------------------------------------------------- rows

/// One field of one row, before validation.
enum Raw<'r> {
    /// The row has no such field (short CSV row, or no note column).
    Missing,
    /// CSV bytes that are not UTF-8.
    NotUtf8,
    Text(&'r str),
    Cell(&'r DataRef<'r>),
}

struct Collector<'r, 'd> {
    rules: &'r Rules<'d>,
    columns: Columns,
    /// First row of each id, including rows refused for other reasons.
    first_row: HashMap<String, usize>,
    out: Parsed,
    /// Rows with errors beyond the cap.
    more: usize,
    /// Data rows expected, 0 if unknown.
    expected: usize,
}

impl<'r, 'd> Collector<'r, 'd> {
    fn new(rules: &'r Rules<'d>, columns: Columns, expected: usize) -> Self {
        Collector {
            rules,
            columns,
            first_row: HashMap::new(),
            out: Parsed::default(),
            more: 0,
            expected,
        }
    }

    fn row(
        &mut self,
        row: usize,
        raws: &[Raw; FIELDS],
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<(), FileError> {
        self.out.total_rows += 1;
        if self.out.total_rows > self.rules.max_rows {
            return Err(FileError::TooManyRows {
                limit: self.rules.max_rows,
            });
        }
        let mut errors = Vec::new();
        let id = keep(&mut errors, ID, self.id(row, &raws[ID]));
        let driver = keep(&mut errors, DRIVER, self.driver(&raws[DRIVER]));
        let value = keep(&mut errors, VALUE, self.value(&raws[VALUE]));
        let date = keep(&mut errors, DATE, self.date(&raws[DATE]));
        let note = keep(&mut errors, NOTE, note(&raws[NOTE]));
        if let (Some(id), Some(driver), Some(value), Some(date), Some(note)) =
            (id, driver, value, date, note)
        {
            self.out.rows.push(ImportedRow {
                row,
                id,
                driver,
                value,
                date,
                note,
            });
        } else {
            self.report(row, errors);
        }
        if self.out.total_rows.is_multiple_of(PROGRESS_EVERY) {
            progress(self.out.total_rows, self.expected);
        }
        Ok(())
    }

    fn report(&mut self, row: usize, errors: Vec<(usize, String)>) {
        let mut dropped = false;
        for (field, message) in errors {
            if self.out.errors.len() < MAX_ERRORS {
                self.out.errors.push(RowError {
                    row,
                    column: self.columns.name[field].clone(),
                    message,
                });
            } else {
                dropped = true;
            }
        }
        self.more += usize::from(dropped);
    }

    fn finish(mut self, progress: &mut dyn FnMut(usize, usize)) -> Parsed {
        if self.more > 0 {
            self.out.errors.push(RowError {
                row: 0,
                column: String::new(),
                message: format!(
                    "{} more rows had errors; only the first {MAX_ERRORS} errors are listed",
                    self.more
                ),
            });
        }
        progress(self.out.total_rows, self.out.total_rows);
        self.out
    }

    fn id(&mut self, row: usize, raw: &Raw) -> Result<String, String> {
        let id = text(raw)?.ok_or("id is empty")?;
        if id.chars().count() > MAX_ID_CHARS {
            return Err(format!("id is longer than {MAX_ID_CHARS} characters"));
        }
        if let Some(first) = self.first_row.get(id.as_ref()) {
            return Err(format!(
                "id `{}` is already used in row {first}",
                excerpt(&id)
            ));
        }
        let id = id.into_owned();
        self.first_row.insert(id.clone(), row);
        Ok(id)
    }

    fn driver(&self, raw: &Raw) -> Result<String, String> {
        let driver = text(raw)?.ok_or("driver is empty")?;
        if self.rules.drivers.iter().any(|d| *d == driver) {
            Ok(driver.into_owned())
        } else {
            Err(format!(
                "`{}` is not a known driver; known drivers: {}",
                excerpt(&driver),
                list_names(self.rules.drivers)
            ))
        }
    }

    fn value(&self, raw: &Raw) -> Result<f64, String> {
        let value = number(raw)?;
        let max = self.rules.max_abs_value;
        if value.abs() > max {
            return Err(format!(
                "{value} is outside the allowed range -{max} to {max}"
            ));
        }
        Ok(value)
    }

    fn date(&self, raw: &Raw) -> Result<NaiveDate, String> {
        let date = date(raw)?;
        let (first, last) = (self.rules.first_date, self.rules.last_date);
        if date < first || date > last {
            return Err(format!(
                "{date} is outside the allowed range {first} to {last}"
            ));
        }
        Ok(date)
    }
}

/// The value, or `None` after recording the message against `field`.
fn keep<T>(
    errors: &mut Vec<(usize, String)>,
    field: usize,
    result: Result<T, String>,
) -> Option<T> {
    result.map_err(|message| errors.push((field, message))).ok()
}

fn note(raw: &Raw) -> Result<Option<String>, String> {
    // A short row may simply omit its trailing, optional note.
    if let Raw::Missing = raw {
        return Ok(None);
    }
    let Some(note) = text(raw)? else {
        return Ok(None);
    };
    if note.chars().count() > MAX_NOTE_CHARS {
        return Err(format!("note is longer than {MAX_NOTE_CHARS} characters"));
    }
    Ok(Some(note.into_owned()))
}

// ---------------------------------------------------------------- cells

const MISSING: &str = "the row is shorter than the header: this field is missing";
const NOT_UTF8: &str = "the text is not valid UTF-8; save the file as CSV UTF-8";

/// Trimmed text of a field; `None` when blank. Numbers and dates in xlsx become text.
fn text<'x>(raw: &'x Raw) -> Result<Option<Cow<'x, str>>, String> {
    let mut text: Cow<str> = match raw {
        Raw::Missing => return Err(MISSING.into()),
        Raw::NotUtf8 => return Err(NOT_UTF8.into()),
        Raw::Text(s) => Cow::Borrowed(s),
        Raw::Cell(cell) => match cell {
            DataRef::String(s) | DataRef::DateTimeIso(s) | DataRef::DurationIso(s) => {
                Cow::Borrowed(s)
            }
            DataRef::SharedString(s) => Cow::Borrowed(s),
            // f64's Display gives 7.0 as "7" and never uses an exponent.
            DataRef::Float(f) => Cow::Owned(f.to_string()),
            DataRef::Int(i) => Cow::Owned(i.to_string()),
            DataRef::Bool(b) => Cow::Borrowed(if *b { "TRUE" } else { "FALSE" }),
            DataRef::DateTime(d) => Cow::Owned(match excel_date(d) {
                Some(date) => date.to_string(),
                None => d.as_f64().to_string(),
            }),
            DataRef::Error(e) => return Err(format!("the cell holds the Excel error {e}")),
            DataRef::Empty => return Ok(None),
        },
    };
    if let Cow::Borrowed(s) = &mut text {
        *s = s.trim();
    }
    Ok((!text.is_empty()).then_some(text))
}

fn number(raw: &Raw) -> Result<f64, String> {
    let value = match raw {
        Raw::Cell(DataRef::Int(i)) => *i as f64,
        Raw::Cell(DataRef::Float(f)) => *f,
        Raw::Cell(DataRef::Bool(b)) => {
            return Err(format!(
                "{} is a true/false value, not a number",
                if *b { "TRUE" } else { "FALSE" }
            ));
        }
        Raw::Cell(DataRef::DateTime(_) | DataRef::DateTimeIso(_) | DataRef::DurationIso(_)) => {
            return Err("the cell holds a date or time, not a number".into());
        }
        _ => {
            let text = text(raw)?.ok_or("value is empty")?;
            text.parse::<f64>()
                .map_err(|_| format!("`{}` is not a number", excerpt(&text)))?
        }
    };
    if !value.is_finite() {
        return Err(format!("`{value}` is not a finite number"));
    }
    Ok(value)
}

fn date(raw: &Raw) -> Result<NaiveDate, String> {
    match raw {
        Raw::Cell(DataRef::DateTime(d)) if d.is_duration() => {
            Err("the cell holds a duration, not a date".into())
        }
        Raw::Cell(DataRef::DateTime(d)) => {
            excel_date(d).ok_or_else(|| "the cell does not hold a valid date".into())
        }
        Raw::Cell(DataRef::Int(i)) => serial_date(*i as f64),
        Raw::Cell(DataRef::Float(f)) => serial_date(*f),
        Raw::Cell(DataRef::Bool(_)) => Err("a true/false value is not a date".into()),
        _ => {
            let text = text(raw)?.ok_or("date is empty")?;
            iso_date(&text)
                .ok_or_else(|| format!("`{}` is not a date of the form YYYY-MM-DD", excerpt(&text)))
        }
    }
}

/// `YYYY-MM-DD`, or `YYYY-MM-DDTHH:MM:SS[.fff]` of which the date is kept.
fn iso_date(s: &str) -> Option<NaiveDate> {
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    let shaped = digits(0..4)
        && b.get(4) == Some(&b'-')
        && digits(5..7)
        && b.get(7) == Some(&b'-')
        && digits(8..10);
    if !shaped {
        return None;
    }
    match b.get(10) {
        None => NaiveDate::parse_from_str(s, "%Y-%m-%d").ok(),
        Some(b'T') => NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
            .ok()
            .map(|dt| dt.date()),
        Some(_) => None,
    }
}

/// A plain number in a date column read as an Excel serial date (1900 system).
fn serial_date(serial: f64) -> Result<NaiveDate, String> {
    // Excel's own range: 1 = 1900-01-01 up to 9999-12-31.
    if !(1.0..2_958_466.0).contains(&serial) {
        return Err(format!("{serial} is not a date"));
    }
    excel_date(&ExcelDateTime::new(
        serial,
        ExcelDateTimeType::DateTime,
        false,
    ))
    .ok_or_else(|| format!("{serial} is not a valid date"))
}

/// calamine's conversion handles the 1904 system and Excel's 1900 leap-year bug
/// (its 1900-02-29 is rejected here by chrono).
fn excel_date(d: &ExcelDateTime) -> Option<NaiveDate> {
    let (year, month, day, ..) = d.to_ymd_hms_milli();
    NaiveDate::from_ymd_opt(year.into(), month.into(), day.into())
}

// ---------------------------------------------------------------- messages

fn excerpt(s: &str) -> Cow<'_, str> {
    match s.char_indices().nth(EXCERPT_CHARS) {
        Some((cut, _)) => Cow::Owned(format!("{}…", &s[..cut])),
        None => Cow::Borrowed(s),
    }
}

fn list_names(names: &[String]) -> String {
    if names.is_empty() {
        return "(none)".into();
    }
    let mut list = names
        .iter()
        .take(LIST_LIMIT)
        .map(|n| format!("`{}`", excerpt(n)))
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > LIST_LIMIT {
        list.push_str(&format!(" and {} more", names.len() - LIST_LIMIT));
    }
    list
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_xlsxwriter as xw;

    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).unwrap()
    }

    fn drivers() -> Vec<String> {
        ["revenue_uplift", "cost_savings", "risk_reduction"]
            .map(String::from)
            .to_vec()
    }

    fn rules(drivers: &[String]) -> Rules<'_> {
        Rules {
            drivers,
            max_abs_value: 1e9,
            first_date: d(2026, 1, 1),
            last_date: d(2026, 12, 31),
            max_rows: 10_000,
        }
    }

    fn csv_with(text: &str, mapping: &Mapping) -> Result<Parsed, FileError> {
        let drivers = drivers();
        read(
            text.as_bytes(),
            Format::Csv,
            mapping,
            &rules(&drivers),
            &mut |_, _| {},
        )
    }

    fn csv(text: &str) -> Parsed {
        csv_with(text, &Mapping::default()).unwrap()
    }

    fn xlsx_bytes(bytes: &[u8]) -> Result<Parsed, FileError> {
        let drivers = drivers();
        read(
            bytes,
            Format::Xlsx,
            &Mapping::default(),
            &rules(&drivers),
            &mut |_, _| {},
        )
    }

    fn error(parsed: &Parsed, column: &str) -> RowError {
        parsed
            .errors
            .iter()
            .find(|e| e.column == column)
            .unwrap_or_else(|| panic!("no error for `{column}` in {:?}", parsed.errors))
            .clone()
    }

    enum X {
        S(&'static str),
        Str(String),
        N(f64),
        D(u16, u8, u8),
        B(bool),
    }

    fn xlsx(rows: &[Vec<Option<X>>]) -> Vec<u8> {
        let mut book = xw::Workbook::new();
        let sheet = book.add_worksheet();
        let date = xw::Format::new().set_num_format("yyyy-mm-dd");
        for (r, cells) in rows.iter().enumerate() {
            for (c, cell) in cells.iter().enumerate() {
                let (r, c) = (r as u32, c as u16);
                match cell {
                    None => continue,
                    Some(X::S(s)) => sheet.write_string(r, c, *s),
                    Some(X::Str(s)) => sheet.write_string(r, c, s),
                    Some(X::N(n)) => sheet.write_number(r, c, *n),
                    Some(X::B(b)) => sheet.write_boolean(r, c, *b),
                    Some(X::D(y, m, day)) => sheet.write_datetime_with_format(
                        r,
                        c,
                        xw::ExcelDateTime::from_ymd(*y, *m, *day).unwrap(),
                        &date,
                    ),
                }
                .unwrap();
            }
        }
        book.save_to_buffer().unwrap()
    }

    fn header() -> Vec<Option<X>> {
        ["id", "driver", "value", "date", "note"]
            .map(|h| Some(X::S(h)))
            .into_iter()
            .collect()
    }

    const GOOD_DRIVERS: [&str; 3] = ["revenue_uplift", "cost_savings", "risk_reduction"];

    fn good_csv() -> String {
        let mut s = String::from("id,driver,value,date,note\n");
        for i in 1..=12 {
            let note = if i % 2 == 0 {
                format!("note {i}")
            } else {
                String::new()
            };
            s.push_str(&format!(
                "D-{i},{},{},2026-03-{i:02},{note}\n",
                GOOD_DRIVERS[i % 3],
                i as f64 * 100.5
            ));
        }
        s
    }

    fn check_good(parsed: &Parsed) {
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        assert_eq!(parsed.total_rows, 12);
        assert_eq!(parsed.rows.len(), 12);
        for (i, row) in (1..=12).zip(&parsed.rows) {
            assert_eq!(row.row, i + 1);
            assert_eq!(row.id, format!("D-{i}"));
            assert_eq!(row.driver, GOOD_DRIVERS[i % 3]);
            assert_eq!(row.value, i as f64 * 100.5);
            assert_eq!(row.date, d(2026, 3, i as u32));
            let note = (i % 2 == 0).then(|| format!("note {i}"));
            assert_eq!(row.note, note);
        }
    }

    #[test]
    fn good_csv_twelve_rows() {
        check_good(&csv(&good_csv()));
    }

    #[test]
    fn bom_crlf_and_datetime_are_accepted() {
        let text = format!("\u{feff}{}", good_csv().replace('\n', "\r\n"));
        check_good(&csv(&text));
        let parsed = csv("id,driver,value,date\nA,cost_savings,1,2026-05-06T13:45:00\n");
        assert_eq!(parsed.rows[0].date, d(2026, 5, 6));
        assert_eq!(parsed.rows[0].note, None);
    }

    #[test]
    fn good_xlsx_matches_csv() {
        let mut rows = vec![header()];
        for i in 1..=12usize {
            let date = if i == 1 {
                X::S("2026-03-01")
            } else {
                X::D(2026, 3, i as u8)
            };
            let note = (i % 2 == 0).then(|| X::Str(format!("note {i}")));
            rows.push(vec![
                Some(X::Str(format!("D-{i}"))),
                Some(X::S(GOOD_DRIVERS[i % 3])),
                Some(X::N(i as f64 * 100.5)),
                Some(date),
                note,
            ]);
        }
        let parsed = xlsx_bytes(&xlsx(&rows)).unwrap();
        check_good(&parsed);
        assert_eq!(parsed.rows, csv(&good_csv()).rows);
    }

    #[test]
    fn xlsx_cell_kinds() {
        let parsed = xlsx_bytes(&xlsx(&[
            header(),
            // Numeric id, number as text, plain serial number as date (46082 = 2026-03-01).
            vec![
                Some(X::N(7.0)),
                Some(X::S(" cost_savings ")),
                Some(X::S(" 12.5 ")),
                Some(X::N(46082.0)),
                None,
            ],
            vec![
                Some(X::S("b")),
                Some(X::S("cost_savings")),
                Some(X::B(true)),
                Some(X::S("01/03/2026")),
            ],
            vec![
                Some(X::S("c")),
                Some(X::S("cost_savings")),
                None,
                Some(X::B(false)),
            ],
        ]))
        .unwrap();
        assert_eq!(parsed.total_rows, 3);
        let row = &parsed.rows[0];
        assert_eq!(
            (row.id.as_str(), row.driver.as_str()),
            ("7", "cost_savings")
        );
        assert_eq!((row.value, row.date), (12.5, d(2026, 3, 1)));
        let e: Vec<_> = parsed
            .errors
            .iter()
            .map(|e| (e.row, e.column.as_str()))
            .collect();
        assert_eq!(e, [(3, "value"), (3, "date"), (4, "value"), (4, "date")]);
        assert!(parsed.errors[0].message.contains("true/false"));
        assert!(parsed.errors[1].message.contains("01/03/2026"));
        assert!(parsed.errors[2].message.contains("empty"));
    }

    #[test]
    fn missing_column_names_it_and_lists_headers() {
        let err = csv_with("id,driver,amount,date\n", &Mapping::default()).unwrap_err();
        let FileError::MissingColumn { column, found } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(column, "value");
        assert_eq!(found, &["id", "driver", "amount", "date"]);
        assert!(err.to_string().contains("`amount`"), "{err}");
    }

    #[test]
    fn custom_mapping_and_header_matching() {
        let mapping = Mapping {
            value: "Amount (USD)".into(),
            date: "Booked on".into(),
            note: Some("Comment".into()),
            ..Mapping::default()
        };
        let text = " ID ,Driver,extra,amount (usd),BOOKED ON,comment\nA,cost_savings,x,5,2026-02-02,hi\nB,nope,x,abc,2026-02-02,\n";
        let parsed = csv_with(text, &mapping).unwrap();
        assert_eq!(parsed.rows[0].value, 5.0);
        assert_eq!(parsed.rows[0].note.as_deref(), Some("hi"));
        // Errors name the header as written in the file.
        let columns: Vec<_> = parsed.errors.iter().map(|e| e.column.as_str()).collect();
        assert_eq!(columns, ["Driver", "amount (usd)"]);
        // An explicitly named note column must exist; the default one may be absent.
        let err = csv_with("id,driver,Amount (USD),Booked on\n", &mapping).unwrap_err();
        assert!(matches!(err, FileError::MissingColumn { ref column, .. } if column == "Comment"));
        assert!(csv_with("id,driver,value,date\n", &Mapping::default()).is_ok());
    }

    #[test]
    fn duplicate_header_and_semicolons_refused() {
        let err = csv_with("id,driver,value,Value,date\n", &Mapping::default()).unwrap_err();
        assert!(matches!(err, FileError::DuplicateColumn { ref column } if column == "value"));
        let err = csv_with(
            "id;driver;value;date\n1;a;2;2026-01-01\n",
            &Mapping::default(),
        )
        .unwrap_err();
        assert!(
            matches!(err, FileError::Delimiter { found: ';' }),
            "{err:?}"
        );
    }

    #[test]
    fn text_in_number_cell() {
        let parsed = csv("id,driver,value,date\nA,cost_savings,abc,2026-02-02\n");
        assert_eq!(
            parsed.errors,
            [RowError {
                row: 2,
                column: "value".into(),
                message: "`abc` is not a number".into()
            }]
        );
        let parsed = xlsx_bytes(&xlsx(&[
            header(),
            vec![
                Some(X::S("A")),
                Some(X::S("cost_savings")),
                Some(X::S("12 EUR")),
                Some(X::D(2026, 2, 2)),
            ],
        ]))
        .unwrap();
        let e = error(&parsed, "value");
        assert_eq!(e.row, 2);
        assert!(e.message.contains("`12 EUR`"), "{}", e.message);
        assert!(parsed.rows.is_empty());
    }

    #[test]
    fn dates_out_of_range_or_malformed() {
        let parsed = csv(
            "id,driver,value,date\nA,cost_savings,1,2025-12-31\nB,cost_savings,1,03/01/2026\nC,cost_savings,1,2026-02-30\nD,cost_savings,1,2026-3-1\n",
        );
        assert!(parsed.rows.is_empty());
        let rows: Vec<_> = parsed
            .errors
            .iter()
            .map(|e| (e.row, e.column.as_str()))
            .collect();
        assert_eq!(rows, [(2, "date"), (3, "date"), (4, "date"), (5, "date")]);
        let range = &parsed.errors[0].message;
        assert!(
            range.contains("2026-01-01") && range.contains("2026-12-31"),
            "{range}"
        );
        assert!(parsed.errors[1].message.contains("YYYY-MM-DD"));

        let parsed = xlsx_bytes(&xlsx(&[
            header(),
            vec![
                Some(X::S("A")),
                Some(X::S("cost_savings")),
                Some(X::N(1.0)),
                Some(X::D(2027, 1, 1)),
            ],
        ]))
        .unwrap();
        assert!(error(&parsed, "date").message.contains("2026-12-31"));
    }

    #[test]
    fn row_rules() {
        let long_id = "x".repeat(101);
        let long_note = "n".repeat(1001);
        let text = format!(
            "id,driver,value,date,note\n\
             A,cost_savings,1,2026-02-02,\n\
             A,unknown,1,2026-02-02,\n\
             ,cost_savings,1,2026-02-02,\n\
             B,cost_savings,1e10,2026-02-02,\n\
             C,cost_savings,NaN,2026-02-02,\n\
             D,cost_savings,-inf,2026-02-02,\n\
             {long_id},cost_savings,1,2026-02-02,\n\
             E,cost_savings,1,2026-02-02,{long_note}\n\
             F,cost_savings,-1e9,2026-02-02,\n"
        );
        let parsed = csv(&text);
        assert_eq!(parsed.total_rows, 9);
        let ids: Vec<_> = parsed.rows.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["A", "F"]);
        let e: Vec<_> = parsed
            .errors
            .iter()
            .map(|e| (e.row, e.column.as_str()))
            .collect();
        assert_eq!(
            e,
            [
                (3, "id"),
                (3, "driver"),
                (4, "id"),
                (5, "value"),
                (6, "value"),
                (7, "value"),
                (8, "id"),
                (9, "note")
            ]
        );
        let m: Vec<_> = parsed.errors.iter().map(|e| e.message.as_str()).collect();
        assert!(m[0].contains("row 2"), "{}", m[0]);
        assert!(
            m[1].contains("`unknown`") && m[1].contains("`risk_reduction`"),
            "{}",
            m[1]
        );
        assert_eq!(m[2], "id is empty");
        assert!(m[3].contains("1000000000"), "{}", m[3]);
        assert!(m[4].contains("NaN") && m[5].contains("inf"));
    }

    #[test]
    fn blank_ragged_multiline_rows() {
        let parsed = csv(
            "id,driver,value,date,note\n\nA,cost_savings,1,2026-02-02,\"two\nlines\"\n,,,,\nB,cost_savings\nC,cost_savings,1,2026-02-02\n",
        );
        assert_eq!(parsed.total_rows, 3);
        let rows: Vec<_> = parsed.rows.iter().map(|r| (r.row, r.id.as_str())).collect();
        assert_eq!(rows, [(3, "A"), (6, "C")]);
        assert_eq!(parsed.rows[0].note.as_deref(), Some("two\nlines"));
        let e: Vec<_> = parsed
            .errors
            .iter()
            .map(|e| (e.row, e.column.as_str()))
            .collect();
        assert_eq!(e, [(5, "value"), (5, "date")]);

        // xlsx: a blank row in between keeps the sheet's numbering.
        let row = |id| {
            vec![
                Some(X::S(id)),
                Some(X::S("cost_savings")),
                Some(X::N(1.0)),
                Some(X::D(2026, 2, 2)),
            ]
        };
        let parsed = xlsx_bytes(&xlsx(&[header(), row("A"), vec![], row("B")])).unwrap();
        let rows: Vec<_> = parsed.rows.iter().map(|r| r.row).collect();
        assert_eq!((rows, parsed.total_rows), (vec![2, 4], 2));
    }

    #[test]
    fn too_many_rows_stops_early() {
        let mut text = String::from("id,driver,value,date\n");
        for i in 0..100_000 {
            text.push_str(&format!("{i},cost_savings,1,2026-02-02\n"));
        }
        let drivers = drivers();
        let rules = Rules {
            max_rows: 50_000,
            ..rules(&drivers)
        };
        let mut seen = 0;
        let err = read(
            text.as_bytes(),
            Format::Csv,
            &Mapping::default(),
            &rules,
            &mut |n, _| seen = seen.max(n),
        )
        .unwrap_err();
        assert!(matches!(err, FileError::TooManyRows { limit: 50_000 }));
        assert!(err.to_string().contains("50000"));
        assert_eq!(seen, 50_000);

        let rules = Rules {
            max_rows: 1,
            ..rules
        };
        let row = || {
            vec![
                Some(X::S("A")),
                Some(X::S("cost_savings")),
                Some(X::N(1.0)),
                Some(X::D(2026, 2, 2)),
            ]
        };
        let bytes = xlsx(&[header(), row(), row()]);
        let err = read(
            &bytes,
            Format::Xlsx,
            &Mapping::default(),
            &rules,
            &mut |_, _| {},
        );
        assert!(matches!(err, Err(FileError::TooManyRows { limit: 1 })));
    }

    #[test]
    fn garbage_files_refused() {
        let unreadable =
            |r: Result<Parsed, FileError>| matches!(r, Err(FileError::Unreadable { .. }));
        assert!(unreadable(xlsx_bytes(b"definitely not a workbook")));
        // An empty zip archive: a zip, but not a workbook.
        let mut empty_zip = b"PK\x05\x06".to_vec();
        empty_zip.resize(22, 0);
        assert!(unreadable(xlsx_bytes(&empty_zip)));
        let good = xlsx(&[header()]);
        assert!(xlsx_bytes(&good).is_ok());
        assert!(unreadable(xlsx_bytes(&good[..good.len() / 2])));
        // An xlsx uploaded as CSV.
        assert!(unreadable(csv_with(
            &String::from_utf8_lossy(&good),
            &Mapping::default()
        )));
        assert!(matches!(xlsx_bytes(b""), Err(FileError::Empty)));
        assert!(matches!(
            csv_with("\u{feff}\n\n", &Mapping::default()),
            Err(FileError::Empty)
        ));
    }

    #[test]
    fn invalid_utf8_is_a_row_error() {
        let drivers = drivers();
        let bytes = b"id,driver,value,date,note\nA,cost_savings,1,2026-02-02,caf\xe9\nB,cost_savings,1,2026-02-02,ok\n";
        let parsed = read(
            bytes,
            Format::Csv,
            &Mapping::default(),
            &rules(&drivers),
            &mut |_, _| {},
        )
        .unwrap();
        let e = error(&parsed, "note");
        assert_eq!(e.row, 2);
        assert!(e.message.contains("UTF-8"));
        assert_eq!(parsed.rows.len(), 1);
    }

    #[test]
    fn error_cap() {
        let mut text = String::from("id,driver,value,date\n");
        for i in 0..5_000 {
            text.push_str(&format!("{i},cost_savings,x,2026-02-02\n"));
        }
        let parsed = csv(&text);
        assert_eq!(parsed.total_rows, 5_000);
        assert_eq!(parsed.errors.len(), 1001);
        assert_eq!(parsed.errors[999].row, 1001);
        let last = parsed.errors.last().unwrap();
        assert_eq!(last.column, "");
        assert!(
            last.message.starts_with("4000 more rows"),
            "{}",
            last.message
        );
    }

    #[test]
    fn progress_reports() {
        let mut text = String::from("id,driver,value,date\n");
        for i in 0..2_500 {
            text.push_str(&format!("{i},cost_savings,1,2026-02-02\n"));
        }
        let drivers = drivers();
        let mut calls = Vec::new();
        read(
            text.as_bytes(),
            Format::Csv,
            &Mapping::default(),
            &rules(&drivers),
            &mut |n, total| calls.push((n, total)),
        )
        .unwrap();
        assert_eq!(calls, [(1000, 0), (2000, 0), (2500, 2500)]);

        // xlsx knows its size up front.
        let mut rows = vec![header()];
        for i in 0..1_500 {
            rows.push(vec![
                Some(X::Str(i.to_string())),
                Some(X::S("cost_savings")),
                Some(X::N(1.0)),
                Some(X::D(2026, 2, 2)),
            ]);
        }
        let mut calls = Vec::new();
        read(
            &xlsx(&rows),
            Format::Xlsx,
            &Mapping::default(),
            &rules(&drivers),
            &mut |n, total| calls.push((n, total)),
        )
        .unwrap();
        assert_eq!(calls, [(1000, 1500), (1500, 1500)]);
    }

    #[test]
    fn format_names() {
        assert_eq!(Format::from_name("csv"), Some(Format::Csv));
        assert_eq!(Format::from_name("XLSX"), Some(Format::Xlsx));
        assert_eq!(Format::from_name("xls"), None);
    }

    /// A workbook of the parts given, as Excel zips them.
    fn crafted(shared_strings: &str, sheet: &[u8]) -> Vec<u8> {
        use std::io::Write;
        use zip::write::SimpleFileOptions;
        let mut book = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let options =
            SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        let parts: [(&str, &[u8]); 6] = [
            ("[Content_Types].xml", br#"<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"><Default Extension="xml" ContentType="application/xml"/><Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/></Types>"#),
            ("_rels/.rels", br#"<?xml version="1.0"?><Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" Target="xl/workbook.xml"/></Relationships>"#),
            ("xl/workbook.xml", br#"<?xml version="1.0"?><workbook xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships"><sheets><sheet name="S" sheetId="1" r:id="rId1"/></sheets></workbook>"#),
            ("xl/_rels/workbook.xml.rels", br#"<?xml version="1.0"?><Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/worksheet" Target="worksheets/sheet1.xml"/></Relationships>"#),
            ("xl/sharedStrings.xml", shared_strings.as_bytes()),
            ("xl/worksheets/sheet1.xml", sheet),
        ];
        for (name, content) in parts {
            book.start_file(name, options).unwrap();
            book.write_all(content).unwrap();
        }
        book.finish().unwrap().into_inner()
    }

    const ONE_CELL: &[u8] = br#"<?xml version="1.0"?><worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"><sheetData><row r="1"><c r="A1" t="s"><v>0</v></c></row></sheetData></worksheet>"#;

    /// The review's attack: a 1.6 KB file announcing 10^14 shared strings
    /// made calamine reserve petabytes, and the allocation failure aborted
    /// the node (no panic to catch). Refused before calamine reads it.
    #[test]
    fn a_shared_string_count_beyond_the_file_is_refused() {
        let file = crafted(
            r#"<?xml version="1.0"?><sst xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" count="1" uniqueCount="100000000000000"><si><t>id</t></si></sst>"#,
            ONE_CELL,
        );
        assert!(file.len() < 4096);
        match read(
            &file,
            Format::Xlsx,
            &Mapping::default(),
            &rules(&drivers()),
            &mut |_, _| {},
        ) {
            Err(FileError::Unreadable { reason, .. }) => {
                assert!(reason.contains("shared strings"), "{reason}")
            }
            other => panic!("read: {other:?}"),
        }
    }

    /// The review's second attack: a header row of thousands of cells, each
    /// a copy of one 1 MiB shared string, took a node to gigabytes. The
    /// header's cells and names are bounded.
    #[test]
    fn a_header_of_huge_repeated_strings_is_refused() {
        let big = "a".repeat(1 << 20);
        let strings = format!(
            r#"<?xml version="1.0"?><sst xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" count="1" uniqueCount="1"><si><t>{big}</t></si></sst>"#
        );
        let mut sheet = br#"<?xml version="1.0"?><worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"><sheetData><row r="1">"#.to_vec();
        for _ in 0..2_000 {
            sheet.extend_from_slice(br#"<c t="s"><v>0</v></c>"#);
        }
        sheet.extend_from_slice(b"</row></sheetData></worksheet>");
        let file = crafted(&strings, &sheet);
        match read(
            &file,
            Format::Xlsx,
            &Mapping::default(),
            &rules(&drivers()),
            &mut |_, _| {},
        ) {
            Err(FileError::Header { reason }) => assert!(reason.contains("characters"), "{reason}"),
            other => panic!("read: {other:?}"),
        }
    }

    /// A workbook inflating past the bound is refused, whatever sizes its
    /// zip declares.
    #[test]
    fn a_decompression_bomb_is_refused() {
        let mut sheet = br#"<?xml version="1.0"?><worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"><sheetData>"#.to_vec();
        sheet.resize(sheet.len() + (3 << 20), b' ');
        sheet.extend_from_slice(b"</sheetData></worksheet>");
        let file = crafted(
            r#"<?xml version="1.0"?><sst xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" count="0" uniqueCount="0"></sst>"#,
            &sheet,
        );
        assert!(file.len() < 64 << 10, "{} bytes", file.len());
        match check_xlsx(&file, 1 << 20) {
            Err(FileError::Unreadable { reason, .. }) => {
                assert!(reason.contains("inflates"), "{reason}")
            }
            other => panic!("check: {other:?}"),
        }
        assert!(check_xlsx(&file, 8 << 20).is_ok());
    }

    #[test]
    fn counts_are_read_however_the_tag_is_written() {
        for tag in [
            r#"<sst xmlns="x" count="1" uniqueCount="7""#,
            "<sst\n uniqueCount = '7' count='1'",
            "<sst\tuniqueCount=\"7\"",
        ] {
            assert_eq!(attribute_number(tag, "uniqueCount"), Some(7), "{tag}");
        }
        assert_eq!(
            attribute_number("<sst xuniqueCount=\"7\"", "uniqueCount"),
            None
        );
        assert_eq!(
            attribute_number(
                "<sst uniqueCount=\"99999999999999999999999\"",
                "uniqueCount"
            ),
            Some(u64::MAX)
        );
    }
}
