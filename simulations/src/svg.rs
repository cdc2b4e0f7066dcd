//! Hand-written SVG charts: line charts and grouped or stacked bar charts,
//! readable without the raw numbers.

use std::fmt::Write;

const W: f64 = 760.0;
const H: f64 = 420.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 170.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 60.0;
const COLORS: [&str; 8] = [
    "#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn header(out: &mut String, title: &str, x_label: &str, y_label: &str) {
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="25" text-anchor="middle" font-size="16" font-weight="bold">{}</text>
<text x="{}" y="{}" text-anchor="middle">{}</text>
<text transform="translate(18,{}) rotate(-90)" text-anchor="middle">{}</text>
"#,
        (LEFT + W - RIGHT) / 2.0,
        esc(title),
        (LEFT + W - RIGHT) / 2.0,
        H - 15.0,
        esc(x_label),
        (TOP + H - BOTTOM) / 2.0,
        esc(y_label)
    );
}

fn nice_max(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if v <= m * mag * (1.0 + 1e-9) {
            return m * mag;
        }
    }
    10.0 * mag
}

fn fmt_tick(v: f64) -> String {
    if v == 0.0 || (v.abs() >= 0.01 && v.abs() < 10_000.0) {
        let s = format!("{v:.2}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        format!("{v:.1e}")
    }
}

fn y_axis(out: &mut String, y_min: f64, y_max: f64) {
    let plot_h = H - TOP - BOTTOM;
    for i in 0..=5 {
        let v = y_min + (y_max - y_min) * f64::from(i) / 5.0;
        let y = H - BOTTOM - plot_h * f64::from(i) / 5.0;
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            W - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            fmt_tick(v)
        );
    }
}

fn legend(out: &mut String, names: &[String]) {
    for (i, name) in names.iter().enumerate() {
        let y = TOP + 10.0 + 20.0 * i as f64;
        let _ = writeln!(
            out,
            r#"<rect x="{:.1}" y="{:.1}" width="12" height="12" fill="{}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            W - RIGHT + 15.0,
            y - 10.0,
            COLORS[i % COLORS.len()],
            W - RIGHT + 32.0,
            y,
            esc(name)
        );
    }
}

/// A line chart of several series of `(x, y)` points, with an optional
/// dashed horizontal target line.
pub fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
    target: Option<(f64, &str)>,
) -> String {
    let mut out = String::new();
    header(&mut out, title, x_label, y_label);
    let points = series.iter().flat_map(|(_, p)| p.iter());
    let (mut x_min, mut x_max, mut y_top) = (f64::INFINITY, f64::NEG_INFINITY, 0.0f64);
    for &(x, y) in points {
        x_min = x_min.min(x);
        x_max = x_max.max(x);
        y_top = y_top.max(y);
    }
    if let Some((t, _)) = target {
        y_top = y_top.max(t);
    }
    if !x_min.is_finite() {
        x_min = 0.0;
        x_max = 1.0;
    }
    if x_max <= x_min {
        x_max = x_min + 1.0;
    }
    // Start the y axis above zero when every value sits high (a zoom the
    // tick labels make plain), so that close lines can be told apart.
    let mut y_bottom = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|&(_, y)| y))
        .fold(f64::INFINITY, f64::min);
    if let Some((t, _)) = target {
        y_bottom = y_bottom.min(t);
    }
    let y_max = nice_max(y_top);
    let y_min = if y_bottom.is_finite() && y_bottom > 0.5 * y_max {
        let step = y_max / 10.0;
        ((y_bottom - step / 2.0) / step).floor().max(0.0) * step
    } else {
        0.0
    };
    y_axis(&mut out, y_min, y_max);
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let px = |x: f64| LEFT + (x - x_min) / (x_max - x_min) * plot_w;
    let py = |y: f64| H - BOTTOM - (y - y_min) / (y_max - y_min) * plot_h;
    // Ticks at the data's own x values when there are few of them.
    let mut xs: Vec<f64> = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|&(x, _)| x))
        .collect();
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    let ticks: Vec<f64> = if !xs.is_empty() && xs.len() <= 12 {
        xs
    } else {
        (0..=5)
            .map(|i| x_min + (x_max - x_min) * f64::from(i) / 5.0)
            .collect()
    };
    for x in ticks {
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            px(x),
            H - BOTTOM + 18.0,
            fmt_tick(x)
        );
    }
    if let Some((t, label)) = target {
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{0:.1}" x2="{1:.1}" y2="{0:.1}" stroke="#c00" stroke-dasharray="6,4"/><text x="{1:.1}" y="{2:.1}" text-anchor="end" fill="#c00">{3}</text>"##,
            py(t),
            W - RIGHT,
            py(t) - 4.0,
            esc(label)
        );
    }
    for (i, (_, pts)) in series.iter().enumerate() {
        let path: Vec<String> = pts
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let color = COLORS[i % COLORS.len()];
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            path.join(" ")
        );
        if pts.len() <= 30 {
            for &(x, y) in pts {
                let _ = writeln!(
                    out,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/>"#,
                    px(x),
                    py(y)
                );
            }
        }
    }
    let _ = writeln!(
        out,
        r##"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#333"/>"##
    );
    legend(
        &mut out,
        &series.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
    );
    out.push_str("</svg>\n");
    out
}

/// A bar chart: one cluster per category, one bar (or stack segment) per
/// group. Each group holds one value per category.
pub fn bar_chart(
    title: &str,
    y_label: &str,
    categories: &[String],
    groups: &[(String, Vec<f64>)],
    stacked: bool,
) -> String {
    let mut out = String::new();
    header(&mut out, title, "", y_label);
    let y_top = if stacked {
        (0..categories.len())
            .map(|c| groups.iter().map(|(_, v)| v[c]).sum::<f64>())
            .fold(0.0, f64::max)
    } else {
        groups
            .iter()
            .flat_map(|(_, v)| v.iter().copied())
            .fold(0.0, f64::max)
    };
    let y_max = nice_max(y_top);
    y_axis(&mut out, 0.0, y_max);
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let slot = plot_w / categories.len().max(1) as f64;
    let bars = if stacked { 1 } else { groups.len().max(1) };
    let bar_w = slot * 0.7 / bars as f64;
    for (c, name) in categories.iter().enumerate() {
        let x0 = LEFT + slot * c as f64 + slot * 0.15;
        let mut base = 0.0;
        for (g, (_, values)) in groups.iter().enumerate() {
            let v = values[c];
            let h = v / y_max * plot_h;
            let (x, y) = if stacked {
                (x0, H - BOTTOM - (base + v) / y_max * plot_h)
            } else {
                (x0 + bar_w * g as f64, H - BOTTOM - h)
            };
            base += v;
            let _ = writeln!(
                out,
                r#"<rect x="{x:.1}" y="{y:.1}" width="{bar_w:.1}" height="{h:.1}" fill="{}"><title>{}: {}</title></rect>"#,
                COLORS[g % COLORS.len()],
                esc(&groups[g].0),
                fmt_tick(v)
            );
        }
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            LEFT + slot * (c as f64 + 0.5),
            H - BOTTOM + 18.0,
            esc(name)
        );
    }
    let _ = writeln!(
        out,
        r##"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#333"/>"##
    );
    legend(
        &mut out,
        &groups.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
    );
    out.push_str("</svg>\n");
    out
}
