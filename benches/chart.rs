//! SVG charts for the balancing benches: cumulative distributions of
//! latencies on a log scale, side-by-side panels, one line per policy.

use std::fmt::Write as _;

/// One panel: a title and, per policy, its name and samples (ms).
pub struct Panel<'a> {
    pub title: String,
    pub lines: Vec<(&'a str, &'a [f64])>,
}

/// Renders `panels` side by side with an x axis from `range.0` to
/// `range.1` ms (log scale). Lines whose name starts with "nginx" are
/// dashed, so a Switchyard line they coincide with shows.
pub fn cdf_svg(panels: &[Panel], range: (f64, f64)) -> String {
    const W: f64 = 440.0;
    const H: f64 = 300.0;
    const PAD: f64 = 50.0;
    let colors = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#7f7f7f"];
    let (lo, hi) = (range.0.log10(), range.1.log10());
    let x =
        |ms: f64| PAD + (ms.clamp(range.0, range.1).log10() - lo) / (hi - lo) * (W - PAD - 10.0);
    let y = |q: f64| H - PAD + 10.0 - q * (H - PAD - 20.0);
    let legend_rows = panels.iter().map(|p| p.lines.len()).max().unwrap_or(0) as f64;
    let mut out = String::new();
    let _ = write!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"11\">\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>",
        W * panels.len() as f64 + 20.0 * (panels.len() as f64 - 1.0).max(0.0),
        H + 30.0 + 15.0 * legend_rows
    );
    for (p, panel) in panels.iter().enumerate() {
        let dx = p as f64 * (W + 20.0);
        let _ = write!(out, "<g transform=\"translate({dx},0)\">");
        let _ = write!(
            out,
            "<text x=\"{PAD}\" y=\"16\" font-size=\"13\" font-weight=\"bold\">CDF, {} (ms, log)</text>",
            panel.title
        );
        let mut decade = 10f64.powf(lo.ceil());
        while decade <= range.1 {
            let gx = x(decade);
            let label = if decade >= 1000.0 {
                format!("{} s", decade / 1000.0)
            } else {
                format!("{decade} ms")
            };
            let _ = write!(
                out,
                "<line x1=\"{gx}\" y1=\"{}\" x2=\"{gx}\" y2=\"{}\" stroke=\"#ddd\"/><text x=\"{gx}\" y=\"{}\" text-anchor=\"middle\">{label}</text>",
                y(1.0),
                y(0.0),
                y(0.0) + 14.0
            );
            decade *= 10.0;
        }
        for q in [0.0, 0.25, 0.5, 0.75, 0.9, 1.0] {
            let gy = y(q);
            let _ = write!(
                out,
                "<line x1=\"{PAD}\" y1=\"{gy}\" x2=\"{}\" y2=\"{gy}\" stroke=\"#eee\"/><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{q}</text>",
                W - 10.0,
                PAD - 4.0,
                gy + 4.0
            );
        }
        for (i, (name, samples)) in panel.lines.iter().enumerate() {
            let mut data = samples.to_vec();
            data.sort_by(f64::total_cmp);
            let n = data.len().max(1) as f64;
            let points: Vec<String> = data
                .iter()
                .enumerate()
                .map(|(k, ms)| format!("{:.1},{:.1}", x(*ms), y((k + 1) as f64 / n)))
                .collect();
            let color = colors[i % colors.len()];
            let dash = if name.starts_with("nginx") {
                " stroke-dasharray=\"6 4\""
            } else {
                ""
            };
            let _ = write!(
                out,
                "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.8\"{dash} points=\"{}\"/>",
                points.join(" ")
            );
            // The legend goes under the axis.
            let ly = y(0.0) + 34.0 + i as f64 * 15.0;
            let _ = write!(
                out,
                "<line x1=\"{PAD}\" y1=\"{ly}\" x2=\"{}\" y2=\"{ly}\" stroke=\"{color}\" stroke-width=\"3\"/><text x=\"{}\" y=\"{}\">{name}</text>",
                PAD + 18.0,
                PAD + 23.0,
                ly + 4.0,
            );
        }
        out.push_str("</g>");
    }
    out.push_str("</svg>\n");
    out
}
