//! `tern plot RUN_DIR... -o loss.png`: training and validation loss of several runs on one
//! chart (b1.58 vs FP is one picture), read from each run's `metrics.jsonl`.

use anyhow::{bail, Context, Result};
use clap::Args as ClapArgs;
use image::ImageEncoder;
use plotters::prelude::*;
use std::path::{Path, PathBuf};

/// Embedded so that the chart has text on machines without system fonts.
const FONT: &[u8] = include_bytes!("../assets/DejaVuSansMono.ttf");

#[derive(ClapArgs)]
pub struct Args {
    /// Run directories (each with metrics.jsonl).
    #[arg(required = true)]
    runs: Vec<PathBuf>,
    /// Output PNG.
    #[arg(long, short, default_value = "loss.png")]
    out: PathBuf,
    /// Chart title.
    #[arg(long, default_value = "tern train: loss vs tokens")]
    title: String,
    /// Width and height in pixels.
    #[arg(long, default_value_t = 1200)]
    width: u32,
    #[arg(long, default_value_t = 700)]
    height: u32,
}

struct Series {
    name: String,
    train: Vec<(f64, f64)>,
    valid: Vec<(f64, f64)>,
}

fn read_run(dir: &Path) -> Result<Series> {
    let path = dir.join("metrics.jsonl");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let (mut train, mut valid) = (Vec::new(), Vec::new());
    for (i, line) in text.lines().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{} line {}: invalid JSON", path.display(), i + 1))?;
        let Some(tokens) = v["tokens"].as_f64() else {
            continue;
        };
        if let Some(l) = v["loss"].as_f64() {
            train.push((tokens / 1e6, l));
        }
        if let Some(l) = v["val_loss"].as_f64() {
            valid.push((tokens / 1e6, l));
        }
    }
    if train.is_empty() && valid.is_empty() {
        bail!("{}: no loss values", path.display());
    }
    let name = dir
        .file_name()
        .map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into());
    Ok(Series { name, train, valid })
}

/// Exponential moving average, so noisy per-step losses read as curves.
fn smooth(points: &[(f64, f64)], alpha: f64) -> Vec<(f64, f64)> {
    let mut acc = None;
    points
        .iter()
        .map(|&(x, y)| {
            let s = acc.map_or(y, |a: f64| a + alpha * (y - a));
            acc = Some(s);
            (x, s)
        })
        .collect()
}

/// Makes the embedded font plotters' "sans-serif" (charts need no system fonts).
pub fn register_font() -> Result<()> {
    plotters::style::register_font("sans-serif", FontStyle::Normal, FONT)
        .map_err(|_| anyhow::anyhow!("the embedded font does not load"))
}

/// RGB pixels as a PNG file's bytes.
pub fn encode_png(pixels: &[u8], width: u32, height: u32) -> Result<Vec<u8>> {
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png)
        .write_image(pixels, width, height, image::ColorType::Rgb8)
        .context("encoding the PNG")?;
    Ok(png)
}

pub fn run(a: &Args) -> Result<()> {
    register_font()?;
    let series = a
        .runs
        .iter()
        .map(|r| read_run(r))
        .collect::<Result<Vec<_>>>()?;
    let all = || series.iter().flat_map(|s| s.train.iter().chain(&s.valid));
    let xmax = all().map(|p| p.0).fold(0.0, f64::max).max(1e-6);
    let ymin = all().map(|p| p.1).fold(f64::INFINITY, f64::min);
    // The first steps' loss (~ln V) would flatten everything else: cap the axis a little
    // above the highest validation loss or the median training loss.
    let mut ys: Vec<f64> = all().map(|p| p.1).collect();
    ys.sort_by(|x, y| x.total_cmp(y));
    let ymax = ys[ys.len() * 9 / 10].max(ymin + 0.1) * 1.05;

    // Drawn into memory, encoded, then written with `tern_io::write_atomic`: a bad output path
    // is an ordinary I/O error naming it, and no half-written PNG is left behind.
    let mut pixels = vec![0u8; a.width as usize * a.height as usize * 3];
    draw(&mut pixels, a, &series, xmax, (ymin * 0.97)..ymax)?;
    let png = encode_png(&pixels, a.width, a.height)?;
    tern_io::write_atomic(&a.out, &png).with_context(|| format!("writing {}", a.out.display()))?;
    eprintln!(
        "tern: wrote {} ({} runs; thin lines: training loss, smoothed; thick: validation)",
        a.out.display(),
        series.len()
    );
    Ok(())
}

/// The chart, as RGB pixels into `pixels` (`width * height * 3` bytes).
fn draw(
    pixels: &mut [u8],
    a: &Args,
    series: &[Series],
    xmax: f64,
    y: std::ops::Range<f64>,
) -> Result<()> {
    let root = BitMapBackend::with_buffer(pixels, (a.width, a.height)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(&a.title, ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..xmax * 1.02, y)?;
    chart
        .configure_mesh()
        .x_desc("training tokens (millions)")
        .y_desc("loss (nats/token)")
        .label_style(("sans-serif", 15))
        .draw()?;
    for (i, s) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let light = color.mix(0.35);
        chart.draw_series(LineSeries::new(
            smooth(&s.train, 0.1),
            light.stroke_width(1),
        ))?;
        chart
            .draw_series(LineSeries::new(s.valid.clone(), color.stroke_width(3)))?
            .label(format!("{} (validation)", s.name))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3))
            });
        chart.draw_series(s.valid.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 16))
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    root.present()?;
    Ok(())
}
