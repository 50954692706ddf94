//! The report of `tern bench paper`: Markdown tables, JSON Lines and three PNG charts, all
//! drawn from the same rows (so `--from-jsonl` redraws a run exactly).

use super::energy::pj7;
use super::VERDICTS;
use anyhow::{Context, Result};
use plotters::prelude::*;
use serde_json::Value;
use std::fmt::Write as _;
use std::path::Path;

fn num(v: &Value, k: &str) -> Option<f64> {
    v.get(k).and_then(Value::as_f64)
}

fn row<'a>(rows: &'a [Value], shape: &str, model: &str) -> Option<&'a Value> {
    rows.iter()
        .find(|r| r["shape"] == shape && r["model"] == model && r.get("error").is_none())
}

fn mj(r: &Value) -> Option<f64> {
    num(&r["energy_model_pj"], "total").map(|p| p * 1e-9)
}

fn opt(x: Option<f64>, digits: usize) -> String {
    x.map_or("n/a".into(), |x| format!("{x:.digits$}"))
}

/// The shapes in the rows, in their first order.
fn shapes(rows: &[Value]) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for r in rows {
        if let Some(s) = r["shape"].as_str() {
            if !v.iter().any(|x| x == s) {
                v.push(s.into());
            }
        }
    }
    v
}

/// The whole report as Markdown.
pub fn markdown(rows: &[Value], cmd: Option<&str>) -> String {
    let mut s = String::new();
    let first = rows.first().cloned().unwrap_or_default();
    let _ = writeln!(s, "# tern bench paper\n");
    let _ = writeln!(
        s,
        "Machine: {}, {} threads. Prompt {} tokens (ppN; also the energy model's context), \
         {} generated (tgN), f16 KV cache, synthetic random weights (BitNet b1.58: tern2 \
         ternary projections and an f16 tied LM head; FP16: f16 projections, same head), \
         one child process per model.",
        first["machine"].as_str().unwrap_or("unknown CPU"),
        first["threads"],
        first["prompt"],
        first["gen"],
    );
    if let Some(c) = cmd {
        let _ = writeln!(s, "\nCommand: `{c}`");
    }
    let _ = writeln!(
        s,
        "\n\"scaled\": the model does not fit in memory here; two whole-layer slices (k1 and k2 \
         of its blocks, real widths) were measured and every figure extrapolated along the \
         line through them.\n"
    );

    let _ = writeln!(s, "## Every model (paper Table 1 and Figure 2)\n");
    let _ = writeln!(
        s,
        "| shape | params | model | weights GB | peak RSS GB | decode ms/token | prefill tokens/s | GB read/token | roofline | CPU-s/token | energy model mJ/token | how |"
    );
    let _ = writeln!(
        s,
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    );
    for r in rows {
        if let Some(e) = r.get("error") {
            let _ = writeln!(
                s,
                "| {} | | {} | | | | | | | | | failed: {} |",
                r["shape"].as_str().unwrap_or("?"),
                r["model"].as_str().unwrap_or("?"),
                e.as_str().unwrap_or("?")
            );
            continue;
        }
        let how = match r["slices"].as_array() {
            Some(k) => format!(
                "scaled from {} and {} of {} blocks",
                k[0], k[1], r["layers"]
            ),
            None => "measured".into(),
        };
        let _ = writeln!(
            s,
            "| {} | {:.2}B | {} | {} | {} | {} | {} | {} | {} | {} | {} | {how} |",
            r["shape"].as_str().unwrap_or("?"),
            num(r, "params").unwrap_or(0.0) / 1e9,
            r["model"].as_str().unwrap_or("?"),
            opt(num(r, "weight_bytes").map(|b| b / 1e9), 2),
            opt(num(r, "peak_rss_bytes").map(|b| b / 1e9), 2),
            opt(num(r, "tg_ms_per_token"), 1),
            opt(num(r, "pp_tokens_per_s"), 1),
            opt(num(r, "bytes_per_token").map(|b| b / 1e9), 2),
            num(r, "roofline_fraction").map_or("n/a".into(), |x| format!("{:.0}%", 100.0 * x)),
            opt(num(r, "cpu_s_per_token"), 3),
            opt(mj(r), 3),
        );
    }

    let _ = writeln!(
        s,
        "\n## BitNet b1.58 against FP16 at the same shape (FP16 / b1.58)\n"
    );
    let _ = writeln!(
        s,
        "| shape | weight memory | peak RSS | decode latency | prefill speed (b1.58 / FP16) | arithmetic energy | CPU time per token |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|");
    for sh in shapes(rows) {
        let (Some(b), Some(fp)) = (row(rows, &sh, "b1.58"), row(rows, &sh, "fp16")) else {
            continue;
        };
        let ratio = |k: &str| num(fp, k).zip(num(b, k)).map(|(x, y)| x / y);
        let x = |r: Option<f64>| r.map_or("n/a".into(), |r| format!("{r:.2}x"));
        let _ = writeln!(
            s,
            "| {sh} | {} | {} | {} | {} | {} | {} |",
            x(ratio("weight_bytes")),
            x(ratio("peak_rss_bytes")),
            x(ratio("tg_ms_per_token")),
            x(num(b, "pp_tokens_per_s")
                .zip(num(fp, "pp_tokens_per_s"))
                .map(|(x, y)| x / y)),
            x(mj(fp).zip(mj(b)).map(|(x, y)| x / y)),
            x(ratio("cpu_s_per_token")),
        );
    }

    let _ = writeln!(
        s,
        "\n## The verdicts: a larger BitNet b1.58 against a smaller FP16 LLaMA\n"
    );
    let _ = writeln!(
        s,
        "Each cell: b1.58 vs FP16, and whether b1.58 costs no more (pass).\n"
    );
    let _ = writeln!(
        s,
        "| claim | decode ms/token | ... against FP16's roofline bound | weights GB | peak RSS GB | energy model mJ/token | CPU-s/token |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|");
    for (big, small) in VERDICTS {
        let claim = format!(
            "{} b1.58 vs {} FP16",
            big.to_uppercase(),
            small.to_uppercase()
        );
        let (Some(b), Some(fp)) = (row(rows, big, "b1.58"), row(rows, small, "fp16")) else {
            let _ = writeln!(
                s,
                "| {claim} | not measured in this run (--shapes) | | | | | |"
            );
            continue;
        };
        let cell = |x: Option<f64>, y: Option<f64>, scale: f64, digits: usize| match (x, y) {
            (Some(x), Some(y)) => format!(
                "{} vs {}: {}",
                opt(Some(x * scale), digits),
                opt(Some(y * scale), digits),
                if x <= y { "pass" } else { "FAIL" }
            ),
            _ => "n/a".into(),
        };
        // The fastest FP16 decode this machine's bandwidth allows: its bytes per token at the
        // probe's read bandwidth. A pass against it does not hang on how well FP16 runs here.
        let bound = num(fp, "bytes_per_token")
            .zip(num(fp, "read_bandwidth_gb_per_s"))
            .map(|(b, bw)| b / (bw * 1e9) * 1e3);
        let _ = writeln!(
            s,
            "| {claim} | {} | {} | {} | {} | {} | {} |",
            cell(
                num(b, "tg_ms_per_token"),
                num(fp, "tg_ms_per_token"),
                1.0,
                1
            ),
            cell(num(b, "tg_ms_per_token"), bound, 1.0, 1),
            cell(num(b, "weight_bytes"), num(fp, "weight_bytes"), 1e-9, 2),
            cell(num(b, "peak_rss_bytes"), num(fp, "peak_rss_bytes"), 1e-9, 2),
            cell(mj(b), mj(fp), 1.0, 3),
            cell(
                num(b, "cpu_s_per_token"),
                num(fp, "cpu_s_per_token"),
                1.0,
                3
            ),
        );
    }

    let _ = writeln!(s, "\n## Energy\n");
    let _ = writeln!(
        s,
        "(a) The paper's arithmetic model (BitNet b1.58 Figure 3, with BitNet's per-operation \
         table at 7 nm: FP16 add {} pJ, FP16 multiply {} pJ, INT8 add {} pJ, INT8 multiply {} \
         pJ; FP32 {} / {} pJ), applied to the operations of one decoded token at the prompt's \
         context: projections (b1.58: one INT8 add per weight plus the scale multiplies; FP16: \
         a multiply and an add per weight), attention over the context and the LM head (FP16 \
         in both). Matmul alone: {:.1}x.\n",
        pj7::FP16_ADD,
        pj7::FP16_MUL,
        pj7::INT8_ADD,
        pj7::INT8_MUL,
        pj7::FP32_ADD,
        pj7::FP32_MUL,
        (pj7::FP16_ADD + pj7::FP16_MUL) / pj7::INT8_ADD
    );
    let counters = rows
        .iter()
        .find_map(|r| r.get("counters").filter(|c| c.is_object()))
        .cloned()
        .unwrap_or_default();
    let has_j = rows.iter().any(|r| num(r, "energy_j_per_token").is_some());
    let _ = writeln!(
        s,
        "(b) Measured: {}. RAPL: {}. Retired instructions: {}.\n",
        if has_j {
            "package energy from RAPL per decoded token (results.jsonl: energy_j_per_token)"
        } else {
            "no energy counter is readable on this machine, so the measured proxy is the \
             process's CPU time per decoded token (getrusage, all threads)"
        },
        counters["rapl"].as_str().unwrap_or("not recorded"),
        counters["instructions"].as_str().unwrap_or("not recorded"),
    );
    let _ = writeln!(
        s,
        "| shape | b1.58 mJ/token | FP16 mJ/token | saving | b1.58 projections share |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|");
    for sh in shapes(rows) {
        let (Some(b), Some(fp)) = (row(rows, &sh, "b1.58"), row(rows, &sh, "fp16")) else {
            continue;
        };
        let (eb, ef) = (mj(b).unwrap_or(0.0), mj(fp).unwrap_or(0.0));
        let share = num(&b["energy_model_pj"], "projections").unwrap_or(0.0) * 1e-9 / eb;
        let _ = writeln!(
            s,
            "| {sh} | {eb:.3} | {ef:.3} | {:.1}x | {:.0}% |",
            ef / eb,
            100.0 * share
        );
    }
    let _ = writeln!(
        s,
        "\n## Charts\n\n![decode latency against size](latency_vs_size.png)\n\n\
         ![memory against size](memory_vs_size.png)\n\n![energy per token](energy_per_token.png)"
    );
    s
}

/// Writes report.md, results.jsonl (for a fresh run) and the charts into `out`.
pub fn write_all(out: &Path, rows: &[Value], cmd: Option<&str>) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let w = |name: &str, bytes: &[u8]| {
        let p = out.join(name);
        tern_io::write_atomic(&p, bytes).with_context(|| format!("writing {}", p.display()))
    };
    if cmd.is_some() {
        let jsonl: String = rows.iter().map(|r| format!("{r}\n")).collect();
        w("results.jsonl", jsonl.as_bytes())?;
    }
    w("report.md", markdown(rows, cmd).as_bytes())?;
    crate::plot::register_font()?;
    let series = |k: &dyn Fn(&Value) -> Option<f64>, model: &str| -> Vec<(f64, f64, bool)> {
        rows.iter()
            .filter(|r| r["model"] == model && r.get("error").is_none())
            .filter_map(|r| {
                Some((
                    num(r, "params")? / 1e9,
                    k(r)?,
                    r["how"].as_str() == Some("scaled"),
                ))
            })
            .collect()
    };
    let lat = |r: &Value| num(r, "tg_ms_per_token");
    let wgt = |r: &Value| num(r, "weight_bytes").map(|b| b / 1e9);
    let rss = |r: &Value| num(r, "peak_rss_bytes").map(|b| b / 1e9);
    let lines = [
        ("BitNet b1.58", series(&lat, "b1.58")),
        ("FP16", series(&lat, "fp16")),
    ];
    w(
        "latency_vs_size.png",
        &line_chart(
            "decode latency per token vs model size",
            "ms / token",
            &lines,
        )?,
    )?;
    let lines = [
        ("b1.58 weights", series(&wgt, "b1.58")),
        ("FP16 weights", series(&wgt, "fp16")),
        ("b1.58 peak RSS", series(&rss, "b1.58")),
        ("FP16 peak RSS", series(&rss, "fp16")),
    ];
    w(
        "memory_vs_size.png",
        &line_chart("memory vs model size", "GB", &lines)?,
    )?;
    let bars: Vec<(String, f64, f64)> = shapes(rows)
        .into_iter()
        .filter_map(|sh| {
            let b = mj(row(rows, &sh, "b1.58")?)?;
            let f = mj(row(rows, &sh, "fp16")?)?;
            Some((sh, b, f))
        })
        .collect();
    w("energy_per_token.png", &energy_chart(&bars)?)?;
    Ok(())
}

const W: u32 = 1000;
const H: u32 = 620;

fn color(i: usize) -> RGBColor {
    [
        RGBColor(31, 119, 180),
        RGBColor(214, 39, 40),
        RGBColor(44, 160, 44),
        RGBColor(255, 127, 14),
    ][i % 4]
}

fn bounds(v: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = v
        .filter(|x| *x > 0.0 && x.is_finite())
        .fold((f64::INFINITY, 0.0f64), |(lo, hi), x| {
            (lo.min(x), hi.max(x))
        });
    if lo > hi {
        (0.1, 10.0)
    } else {
        (lo / 1.6, hi * 1.6)
    }
}

/// Log-log lines against parameters; scaled points hollow, measured ones filled.
/// Points of one line: (parameters in billions, value, scaled from slices).
type Line<'a> = (&'a str, Vec<(f64, f64, bool)>);

fn line_chart(title: &str, y: &str, lines: &[Line]) -> Result<Vec<u8>> {
    let mut px = vec![0u8; (W * H * 3) as usize];
    {
        let (x0, x1) = bounds(lines.iter().flat_map(|l| l.1.iter().map(|p| p.0)));
        let (y0, y1) = bounds(lines.iter().flat_map(|l| l.1.iter().map(|p| p.1)));
        let root = BitMapBackend::with_buffer(&mut px, (W, H)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 24))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(72)
            .build_cartesian_2d((x0..x1).log_scale(), (y0..y1).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("parameters (billions; hollow points: scaled from slices)")
            .y_desc(y)
            .label_style(("sans-serif", 15))
            .draw()?;
        for (i, (name, pts)) in lines.iter().enumerate() {
            let c = color(i);
            chart
                .draw_series(LineSeries::new(
                    pts.iter().map(|p| (p.0, p.1)),
                    c.stroke_width(2),
                ))?
                .label(*name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 24, y)], c.stroke_width(3))
                });
            chart.draw_series(pts.iter().map(|&(x, y, scaled)| {
                let style = if scaled {
                    c.stroke_width(2)
                } else {
                    c.filled()
                };
                Circle::new((x, y), 5, style)
            }))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 16))
            .position(SeriesLabelPosition::UpperLeft)
            .draw()?;
        root.present()?;
    }
    crate::plot::encode_png(&px, W, H)
}

/// Bars of the arithmetic-energy model per shape, b1.58 beside FP16, log scale.
fn energy_chart(bars: &[(String, f64, f64)]) -> Result<Vec<u8>> {
    let mut px = vec![0u8; (W * H * 3) as usize];
    {
        let (y0, y1) = bounds(bars.iter().flat_map(|b| [b.1, b.2]));
        let root = BitMapBackend::with_buffer(&mut px, (W, H)).into_drawing_area();
        root.fill(&WHITE)?;
        let n = bars.len().max(1) as f64;
        let names: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "arithmetic energy per decoded token (paper's 7 nm model)",
                ("sans-serif", 24),
            )
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(72)
            .build_cartesian_2d(-0.5f64..n - 0.5, (y0..y1).log_scale())?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(bars.len().max(1))
            .x_label_formatter(&|x| {
                let i = x.round();
                if (x - i).abs() < 0.01 && i >= 0.0 {
                    names.get(i as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .y_desc("mJ / token")
            .label_style(("sans-serif", 15))
            .draw()?;
        for (k, name) in ["BitNet b1.58", "FP16"].into_iter().enumerate() {
            let c = color(k);
            chart
                .draw_series(bars.iter().enumerate().map(|(i, b)| {
                    let v = if k == 0 { b.1 } else { b.2 };
                    let x = i as f64 + if k == 0 { -0.38 } else { 0.02 };
                    Rectangle::new([(x, y0), (x + 0.36, v)], c.filled())
                }))?
                .label(name)
                .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 16, y + 6)], c.filled()));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 16))
            .position(SeriesLabelPosition::UpperLeft)
            .draw()?;
        root.present()?;
    }
    crate::plot::encode_png(&px, W, H)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn r(shape: &str, model: &str, ms: f64, gb: f64, mj: f64) -> Value {
        json!({"shape": shape, "model": model, "params": 1e9, "layers": 4, "how": "measured",
               "tg_ms_per_token": ms, "weight_bytes": gb * 1e9, "peak_rss_bytes": gb * 1.1e9,
               "pp_tokens_per_s": 10.0, "cpu_s_per_token": ms / 500.0,
               "bytes_per_token": gb * 1e9, "read_bandwidth_gb_per_s": 100.0,
               "energy_model_pj": {"total": mj * 1e9, "projections": mj * 0.5e9},
               "machine": "test CPU", "threads": 2, "prompt": 8, "gen": 4})
    }

    /// Verdicts compare the right cells and say pass or FAIL; missing pairs are said.
    #[test]
    fn verdicts_pass_and_fail() {
        let rows = vec![
            r("3b", "b1.58", 10.0, 1.0, 1.0),
            r("3b", "fp16", 50.0, 6.0, 20.0),
            r("13b", "b1.58", 40.0, 3.0, 4.0),
            r("13b", "fp16", 200.0, 26.0, 90.0),
            json!({"shape": "70b", "model": "fp16", "error": "boom"}),
        ];
        let md = markdown(&rows, Some("tern bench paper"));
        let line = |claim: &str| {
            md.lines()
                .find(|l| l.starts_with(claim))
                .unwrap()
                .to_string()
        };
        let v = line("| 13B b1.58 vs 3B FP16");
        assert!(v.contains("40.0 vs 50.0: pass"), "{v}");
        // FP16 3B at 100 GB/s: 6 GB in 60 ms.
        assert!(v.contains("40.0 vs 60.0: pass"), "{v}");
        assert!(v.contains("3.00 vs 6.00: pass"), "{v}");
        assert!(v.contains("4.000 vs 20.000: pass"), "{v}");
        assert!(line("| 30B b1.58 vs 7B FP16").contains("not measured"));
        assert!(md.contains("failed: boom"));
        // Same-shape ratios: FP16 over b1.58.
        assert!(line("| 3b | 6.00x").contains("| 5.00x |"), "{md}");
        let rows = vec![
            r("13b", "b1.58", 60.0, 3.0, 4.0),
            r("3b", "fp16", 50.0, 6.0, 20.0),
        ];
        let v = markdown(&rows, None);
        assert!(v.contains("60.0 vs 50.0: FAIL"), "{v}");
    }

    /// The charts render to PNG files (and redraw from the JSON Lines alone).
    #[test]
    fn charts_are_pngs() {
        let dir = std::env::temp_dir().join(format!("tern-paper-{}", std::process::id()));
        let rows = vec![
            r("3b", "b1.58", 10.0, 1.0, 1.0),
            r("3b", "fp16", 50.0, 6.0, 20.0),
            r("13b", "b1.58", 40.0, 3.0, 4.0),
            r("13b", "fp16", 200.0, 26.0, 90.0),
        ];
        write_all(&dir, &rows, Some("x")).unwrap();
        for f in [
            "latency_vs_size.png",
            "memory_vs_size.png",
            "energy_per_token.png",
        ] {
            let b = std::fs::read(dir.join(f)).unwrap();
            assert_eq!(&b[1..4], b"PNG", "{f}");
        }
        assert!(std::fs::read_to_string(dir.join("results.jsonl"))
            .unwrap()
            .contains("\"13b\""));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
