//! `valueverse-bench import`: the heap an import of deliveries takes while
//! its file is read (CSV and .xlsx), per 10,000 rows, beside the file's own
//! size (what merely holding the upload costs). Measured with the binary's
//! allocator wrapped to count live bytes and their peak.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicUsize, Ordering};

use valueverse::actors::import::{self, Format, Mapping, Rules};

/// mimalloc, counting the bytes live and their peak.
pub struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is to mimalloc.
        let pointer = unsafe { mimalloc::MiMalloc.alloc(layout) };
        if !pointer.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        pointer
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded as is to mimalloc.
        unsafe { mimalloc::MiMalloc.dealloc(pointer, layout) }
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as is to mimalloc.
        let moved = unsafe { mimalloc::MiMalloc.realloc(pointer, layout, new_size) };
        if !moved.is_null() {
            if new_size >= layout.size() {
                let live = LIVE.fetch_add(new_size - layout.size(), Ordering::Relaxed)
                    + (new_size - layout.size());
                PEAK.fetch_max(live, Ordering::Relaxed);
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        moved
    }
}

#[derive(Debug, serde::Serialize)]
pub struct Measured {
    pub format: &'static str,
    pub rows: usize,
    pub file_bytes: usize,
    /// Most heap live at once while the file was read, beyond what was
    /// live before (the file itself excluded).
    pub peak_heap_bytes: usize,
    /// What the rows read take once read (the import's output).
    pub kept_heap_bytes: usize,
    pub seconds: f64,
}

const DRIVERS: [&str; 5] = [
    "ticket deflection",
    "agent productivity",
    "upsell from faster answers",
    "churn avoided",
    "escalations avoided",
];

fn csv_file(rows: usize) -> Vec<u8> {
    let mut text = String::from("id,driver,value,date,note\n");
    for row in 0..rows {
        text.push_str(&format!(
            "delivery-{row:08},{},{}.25,2026-{:02}-{:02},month end\n",
            DRIVERS[row % 5],
            1000 + row % 997,
            row % 12 + 1,
            row % 28 + 1
        ));
    }
    text.into_bytes()
}

fn xlsx_file(rows: usize) -> anyhow::Result<Vec<u8>> {
    use rust_xlsxwriter::{ExcelDateTime, Format, Workbook};
    let mut book = Workbook::new();
    let sheet = book.add_worksheet();
    let dates = Format::new().set_num_format("yyyy-mm-dd");
    for (column, name) in ["id", "driver", "value", "date", "note"]
        .into_iter()
        .enumerate()
    {
        sheet.write_string(0, column as u16, name)?;
    }
    for row in 0..rows {
        let at = row as u32 + 1;
        sheet.write_string(at, 0, format!("delivery-{row:08}"))?;
        sheet.write_string(at, 1, DRIVERS[row % 5])?;
        sheet.write_number(at, 2, 1000.25 + (row % 997) as f64)?;
        let day = ExcelDateTime::from_ymd(2026, (row % 12 + 1) as u8, (row % 28 + 1) as u8)?;
        sheet.write_datetime_with_format(at, 3, &day, &dates)?;
        sheet.write_string(at, 4, "month end")?;
    }
    Ok(book.save_to_buffer()?)
}

fn measure(
    format: Format,
    name: &'static str,
    bytes: &[u8],
    rows: usize,
) -> anyhow::Result<Measured> {
    let drivers: Vec<String> = DRIVERS.iter().map(|d| (*d).to_owned()).collect();
    let rules = Rules {
        drivers: &drivers,
        max_abs_value: 1e12,
        first_date: chrono::NaiveDate::from_ymd_opt(2026, 1, 1).expect("a date"),
        last_date: chrono::NaiveDate::from_ymd_opt(2026, 12, 31).expect("a date"),
        max_rows: 1_000_000,
    };
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let started = std::time::Instant::now();
    let parsed = import::read(bytes, format, &Mapping::default(), &rules, &mut |_, _| {})?;
    let seconds = started.elapsed().as_secs_f64();
    let peak = PEAK.load(Ordering::Relaxed) - before;
    let kept = LIVE.load(Ordering::Relaxed).saturating_sub(before);
    anyhow::ensure!(
        parsed.rows.len() == rows && parsed.errors.is_empty(),
        "{name}: read {} rows, {} errors",
        parsed.rows.len(),
        parsed.errors.len()
    );
    drop(parsed);
    Ok(Measured {
        format: name,
        rows,
        file_bytes: bytes.len(),
        peak_heap_bytes: peak,
        kept_heap_bytes: kept,
        seconds,
    })
}

/// Each size in turn, CSV then .xlsx.
pub fn run(sizes: &[usize]) -> anyhow::Result<Vec<Measured>> {
    let mut measured = Vec::new();
    for &rows in sizes {
        let csv = csv_file(rows);
        measured.push(measure(Format::Csv, "csv", &csv, rows)?);
        drop(csv);
        let xlsx = xlsx_file(rows)?;
        measured.push(measure(Format::Xlsx, "xlsx", &xlsx, rows)?);
    }
    Ok(measured)
}
