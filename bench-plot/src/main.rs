//! `bench-plot`: the pictures beside the tables of `docs/benchmarks.md` (issue 7).
//!
//! Reads the figures from where `make bench` already put them, so a plot never disagrees with
//! its table:
//! - `docs/benchmarks.md`'s `## Build` table (seconds), `## Size` table (bytes) and
//!   `## Boot to ready` table (every run and the median);
//! - every `*.csv` in the series directory (default `target/bench/`), one line chart each, for
//!   benchmarks that produce a curve (the scale simulation's imbalance over time). Format: an
//!   optional first line `# title; x label; y label`, then rows `series,x,y` (a header row
//!   whose y is not a number is skipped).
//!
//! Usage: `bench-plot [--markdown docs/benchmarks.md] [--series target/bench] [--out docs/img]`.
//! Writes `build.png`, `size.png`, `boot.png` and `<csv stem>.png`; a table that is missing
//! is skipped with a note, a table that is there but unreadable is an error naming it.

use anyhow::{bail, Context, Result};
use plotters::prelude::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const W: u32 = 900;
const ROW_H: u32 = 70;

fn main() {
    if let Err(e) = run() {
        eprintln!("bench-plot: error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let mut markdown = PathBuf::from("docs/benchmarks.md");
    let mut series = PathBuf::from("target/bench");
    let mut out = PathBuf::from("docs/img");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().context(format!("{a} needs a value"));
        match a.as_str() {
            "--markdown" => markdown = value()?.into(),
            "--series" => series = value()?.into(),
            "--out" => out = value()?.into(),
            _ => bail!("usage: bench-plot [--markdown FILE] [--series DIR] [--out DIR]"),
        }
    }
    let text = std::fs::read_to_string(&markdown)
        .with_context(|| format!("cannot read {}", markdown.display()))?;
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let md = markdown.display().to_string();

    match table(&text, "## Build") {
        Some(rows) => {
            let bars = seconds_column(&rows, 2).with_context(|| format!("{md}: ## Build"))?;
            let path = out.join("build.png");
            bar_chart(&path, "Build time (median)", "seconds", &bars, &[], |v| {
                format!("{v:.2} s")
            })?;
            println!("bench-plot: {}", path.display());
        }
        None => eprintln!("bench-plot: {md} has no ## Build table; build.png not drawn"),
    }
    match table(&text, "## Size") {
        Some(rows) => {
            let bars: Vec<(String, f64)> = rows
                .iter()
                .filter(|r| r.len() > 1 && r[0].contains("initramfs"))
                .map(|r| {
                    Ok((
                        short_label(&r[0]),
                        number(&r[1]).context(r[1].clone())? / 1e6,
                    ))
                })
                .collect::<Result<_>>()
                .with_context(|| format!("{md}: ## Size"))?;
            let path = out.join("size.png");
            bar_chart(&path, "Initramfs size", "MB", &bars, &[], |v| {
                format!("{v:.1} MB")
            })?;
            println!("bench-plot: {}", path.display());
        }
        None => eprintln!("bench-plot: {md} has no ## Size table; size.png not drawn"),
    }
    match table(&text, "## Boot to ready") {
        Some(rows) => {
            let runs = boot_runs(&rows).with_context(|| format!("{md}: ## Boot to ready"))?;
            let path = out.join("boot.png");
            runs_chart(&path, "Boot to ready (QEMU, TCG)", &runs)?;
            println!("bench-plot: {}", path.display());
        }
        None => eprintln!("bench-plot: {md} has no ## Boot to ready table; boot.png not drawn"),
    }
    if let Ok(dir) = std::fs::read_dir(&series) {
        let mut csvs: Vec<PathBuf> = dir
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "csv"))
            .collect();
        csvs.sort();
        for csv in csvs {
            let stem = csv.file_stem().map(|s| s.to_string_lossy().into_owned());
            let path = out.join(format!("{}.png", stem.unwrap_or_default()));
            line_chart(&csv, &path)?;
            println!("bench-plot: {}", path.display());
        }
    }
    Ok(())
}

/// The body rows (cells trimmed, backticks dropped) of the first table after the heading that
/// starts with `heading`, up to the next heading.
fn table(text: &str, heading: &str) -> Option<Vec<Vec<String>>> {
    let mut lines = text.lines().skip_while(|l| !l.starts_with(heading));
    lines.next()?;
    let rows: Vec<Vec<String>> = lines
        .take_while(|l| !l.starts_with("## "))
        .filter(|l| l.trim_start().starts_with('|'))
        .map(|l| {
            l.trim()
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().replace('`', ""))
                .collect()
        })
        .collect();
    // Header and separator rows.
    (rows.len() > 2).then(|| rows[2..].to_vec())
}

fn number(cell: &str) -> Option<f64> {
    cell.split_whitespace().next()?.parse().ok()
}

fn short_label(what: &str) -> String {
    let cut = what.find('(').unwrap_or(what.len());
    what[..cut].trim().to_string()
}

/// Rows whose `col` reads `N s`.
fn seconds_column(rows: &[Vec<String>], col: usize) -> Result<Vec<(String, f64)>> {
    let bars: Vec<(String, f64)> = rows
        .iter()
        .filter(|r| r.get(col).is_some_and(|c| c.ends_with(" s")))
        .filter_map(|r| Some((short_label(&r[0]), number(&r[col])?)))
        .collect();
    if bars.is_empty() {
        bail!("no row has seconds in column {}", col + 1);
    }
    Ok(bars)
}

/// (what, runs, median) from rows whose fourth column lists the runs.
fn boot_runs(rows: &[Vec<String>]) -> Result<Vec<(String, Vec<f64>, f64)>> {
    let mut out = Vec::new();
    for r in rows {
        let (Some(runs), Some(median)) = (r.get(2), r.get(3)) else {
            continue;
        };
        let runs: Vec<f64> = runs
            .split(',')
            .filter_map(|v| v.trim().parse().ok())
            .collect();
        if let (false, Some(m)) = (runs.is_empty(), number(median)) {
            out.push((short_label(&r[0]), runs, m));
        }
    }
    if out.is_empty() {
        bail!("no row lists its runs in column 3");
    }
    Ok(out)
}

fn err<E: std::fmt::Debug>(path: &Path) -> impl Fn(E) -> anyhow::Error + '_ {
    move |e| anyhow::anyhow!("drawing {}: {e:?}", path.display())
}

/// Horizontal bars, one per (label, value), the value written at the end of each bar.
fn bar_chart(
    path: &Path,
    title: &str,
    unit: &str,
    bars: &[(String, f64)],
    dots: &[Vec<f64>],
    fmt: impl Fn(f64) -> String,
) -> Result<()> {
    let h = 120 + ROW_H * bars.len() as u32;
    let root = BitMapBackend::new(path, (W, h)).into_drawing_area();
    root.fill(&WHITE).map_err(err(path))?;
    let max = bars
        .iter()
        .map(|b| b.1)
        .chain(dots.iter().flatten().copied())
        .fold(0.0, f64::max)
        .max(1e-9)
        * 1.25;
    let n = bars.len() as i32;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 26))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(260)
        .build_cartesian_2d(0.0..max, (0..n - 1).into_segmented())
        .map_err(err(path))?;
    let labels: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
    chart
        .configure_mesh()
        .disable_y_mesh()
        .x_desc(unit)
        .y_labels(bars.len())
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => labels.get(*i as usize).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .label_style(("sans-serif", 17))
        .axis_desc_style(("sans-serif", 17))
        .draw()
        .map_err(err(path))?;
    for (i, (label, v)) in bars.iter().enumerate() {
        // The anchor (what drove is measured against) in grey, drove in green.
        let anchor = label.contains("mkinitramfs") || label.contains("bare");
        let color = if anchor {
            RGBColor(130, 130, 130)
        } else {
            RGBColor(46, 125, 50)
        };
        let right = dots.get(i).into_iter().flatten().fold(*v, |a, b| a.max(*b));
        let y0 = SegmentValue::Exact(i as i32);
        let y1 = SegmentValue::Exact(i as i32 + 1);
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(0.0, y0), (*v, y1)],
                color.filled(),
            )))
            .map_err(err(path))?;
        chart
            .draw_series(std::iter::once(Text::new(
                fmt(*v),
                (right + max * 0.015, SegmentValue::CenterOf(i as i32)),
                ("sans-serif", 17).into_font(),
            )))
            .map_err(err(path))?;
        if let Some(runs) = dots.get(i) {
            chart
                .draw_series(runs.iter().map(|r| {
                    Circle::new((*r, SegmentValue::CenterOf(i as i32)), 5, BLACK.filled())
                }))
                .map_err(err(path))?;
        }
    }
    root.present().map_err(err(path))?;
    Ok(())
}

/// Every run as a dot and the median as a bar, one row per configuration.
fn runs_chart(path: &Path, title: &str, rows: &[(String, Vec<f64>, f64)]) -> Result<()> {
    let bars: Vec<(String, f64)> = rows.iter().map(|r| (r.0.clone(), r.2)).collect();
    let dots: Vec<Vec<f64>> = rows.iter().map(|r| r.1.clone()).collect();
    bar_chart(
        path,
        title,
        "seconds (bar: median, dots: each run)",
        &bars,
        &dots,
        |v| format!("median {v:.2} s"),
    )
}

/// One line per series from a `series,x,y` CSV.
fn line_chart(csv: &Path, path: &Path) -> Result<()> {
    let text =
        std::fs::read_to_string(csv).with_context(|| format!("cannot read {}", csv.display()))?;
    let mut title = csv
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (mut xdesc, mut ydesc) = (String::from("x"), String::from("y"));
    let mut series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        if let Some(meta) = line.strip_prefix('#') {
            let parts: Vec<&str> = meta.split(';').map(str::trim).collect();
            if let [t, x, y, ..] = parts[..] {
                (title, xdesc, ydesc) = (t.into(), x.into(), y.into());
            }
            continue;
        }
        let cells: Vec<&str> = line.split(',').map(str::trim).collect();
        let [name, x, y] = cells[..] else {
            if line.trim().is_empty() {
                continue;
            }
            bail!(
                "{}:{}: expected `series,x,y`, found {line:?}",
                csv.display(),
                i + 1
            );
        };
        let (Ok(x), Ok(y)) = (x.parse::<f64>(), y.parse::<f64>()) else {
            if i <= 1 {
                continue; // header row
            }
            bail!(
                "{}:{}: x and y must be numbers in {line:?}",
                csv.display(),
                i + 1
            );
        };
        series.entry(name.into()).or_default().push((x, y));
    }
    if series.is_empty() {
        bail!("{}: no data rows", csv.display());
    }
    let pts = series.values().flatten();
    let (x0, x1, y0, y1) = pts.fold(
        (f64::MAX, f64::MIN, f64::MAX, f64::MIN),
        |(a, b, c, d), (x, y)| (a.min(*x), b.max(*x), c.min(*y), d.max(*y)),
    );
    let (y0, y1) = (y0.min(0.0), y1 + (y1 - y0).abs().max(1e-9) * 0.1);
    let x1 = if x1 > x0 { x1 } else { x0 + 1.0 };
    let root = BitMapBackend::new(path, (W, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(err(path))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(&title, ("sans-serif", 26))
        .margin(15)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(err(path))?;
    chart
        .configure_mesh()
        .x_desc(xdesc)
        .y_desc(ydesc)
        .label_style(("sans-serif", 16))
        .axis_desc_style(("sans-serif", 17))
        .draw()
        .map_err(err(path))?;
    for (i, (name, mut pts)) in series.into_iter().enumerate() {
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))
            .map_err(err(path))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 16))
        .draw()
        .map_err(err(path))?;
    root.present().map_err(err(path))?;
    Ok(())
}
