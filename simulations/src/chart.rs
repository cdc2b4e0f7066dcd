//! Chart: the suite's figure, drawn with `plotters` into an SVG string.
//!
//! One group of bars per scenario, one bar per policy: origin egress as a
//! multiple of LRU's on the same scenario (LRU = 1), so that scenarios of very
//! different sizes share one axis. The output depends only on the report, so
//! the same run gives the same bytes.

use anyhow::anyhow;
use plotters::prelude::*;

use crate::suite::SuiteReport;

/// Policies in the order their bars are drawn, with their colours.
const SERIES: [(&str, RGBColor); 4] = [
    ("predictive", RGBColor(0x1f, 0x77, 0xb4)),
    ("lru", RGBColor(0xff, 0x7f, 0x0e)),
    ("lfu", RGBColor(0x2c, 0xa0, 0x2c)),
    ("min", RGBColor(0x7f, 0x7f, 0x7f)),
];

/// Draws the suite chart and returns the SVG text.
pub fn suite_chart(report: &SuiteReport) -> anyhow::Result<String> {
    let mut scenarios: Vec<&str> = Vec::new();
    for r in &report.rows {
        if !scenarios.contains(&r.scenario.as_str()) {
            scenarios.push(&r.scenario);
        }
    }
    let value = |scenario: &str, policy: &str| -> Option<f64> {
        let get = |p: &str| {
            report
                .rows
                .iter()
                .find(|r| r.scenario == scenario && r.policy == p)
        };
        let lru = get("lru")?.origin_egress_gb;
        let v = get(policy)?.origin_egress_gb;
        (lru > 0.0).then(|| v / lru)
    };
    let slots = SERIES.len() as i32 + 1;
    let width = (scenarios.len() as i32 * slots).max(1);
    let top = scenarios
        .iter()
        .flat_map(|s| SERIES.iter().filter_map(move |(p, _)| value(s, p)))
        .fold(1.0f64, f64::max)
        .min(10.0)
        * 1.1;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1100, 520)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "Origin egress relative to LRU (lower is better)",
                ("sans-serif", 20),
            )
            .margin(12)
            .x_label_area_size(150)
            .y_label_area_size(60)
            .build_cartesian_2d(0..width, 0.0..top)
            .map_err(|e| anyhow!("{e}"))?;
        let names = scenarios.clone();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(width as usize + 1)
            .x_label_style(
                ("sans-serif", 12)
                    .into_font()
                    .transform(FontTransform::Rotate90),
            )
            .x_label_formatter(&move |x| {
                if x % slots == 1 {
                    names
                        .get((x / slots) as usize)
                        .map_or(String::new(), |s| s.to_string())
                } else {
                    String::new()
                }
            })
            .y_desc("origin egress / LRU's")
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        for (k, (policy, colour)) in SERIES.iter().enumerate() {
            let bars: Vec<Rectangle<(i32, f64)>> = scenarios
                .iter()
                .enumerate()
                .filter_map(|(i, s)| {
                    let v = value(s, policy)?.min(top);
                    let x = i as i32 * slots + k as i32;
                    Some(Rectangle::new([(x, 0.0), (x + 1, v)], colour.filled()))
                })
                .collect();
            let colour = *colour;
            chart
                .draw_series(bars)
                .map_err(|e| anyhow!("{e}"))?
                .label(*policy)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], colour.filled())
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        root.present().map_err(|e| anyhow!("{e}"))?;
    }
    Ok(svg)
}
