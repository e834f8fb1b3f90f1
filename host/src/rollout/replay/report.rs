//! The replay report as text for a terminal and as an SVG bar chart.

use super::Report;

impl Report {
    /// Every first-candidate name of the baseline or the candidate, sorted.
    fn backends(&self) -> std::collections::BTreeSet<&String> {
        self.traffic_before
            .keys()
            .chain(self.traffic_after.keys())
            .collect()
    }

    /// The report as text for a terminal.
    pub fn text(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let pct = |x: u64| {
            if self.decisions == 0 {
                0.0
            } else {
                x as f64 * 100.0 / self.decisions as f64
            }
        };
        let _ = writeln!(
            out,
            "route {}: {} decisions replayed with {} against {}",
            self.route, self.decisions, self.candidate, self.baseline
        );
        let _ = writeln!(
            out,
            "  first backend changed: {} ({:.2} %); candidate list changed: {} ({:.2} %)",
            self.changed_primary,
            pct(self.changed_primary),
            self.changed_candidates,
            pct(self.changed_candidates)
        );
        let _ = writeln!(out, "  traffic by first backend      before      after");
        let names = self.backends();
        for name in names {
            let b = self.traffic_before.get(name).copied().unwrap_or(0);
            let a = self.traffic_after.get(name).copied().unwrap_or(0);
            let _ = writeln!(out, "    {name:<24} {:>8.2} % {:>8.2} %", pct(b), pct(a));
        }
        let _ = writeln!(
            out,
            "  sent to an unhealthy or open backend: {} before, {} after",
            self.to_unusable_before, self.to_unusable_after
        );
        let _ = writeln!(
            out,
            "  projected token cost: ${:.6} before, ${:.6} after",
            self.cost_before_usd, self.cost_after_usd
        );
        if !self.missing_attributes.is_empty() {
            let _ = writeln!(
                out,
                "  not in the trace (given as not seen): {}",
                self.missing_attributes.join(", ")
            );
        }
        let _ = writeln!(
            out,
            "  decision time: median {} ns, p99 {} ns; {:.0} decisions/s",
            self.decision_ns_median, self.decision_ns_p99, self.decisions_per_second
        );
        for (reason, n) in &self.skipped {
            let _ = writeln!(out, "  skipped {n} records: {reason}");
        }
        if self.failures == 0 {
            let _ = writeln!(out, "  candidate failures: none");
        } else {
            let _ = writeln!(
                out,
                "  candidate failures: {} {:?}",
                self.failures, self.failures_by_kind
            );
            for f in &self.first_failures {
                let _ = writeln!(
                    out,
                    "    line {}: {} ({}) on {} from {} with {}",
                    f.line,
                    f.kind,
                    f.message,
                    f.method,
                    f.client_ip,
                    serde_json::to_string(&f.attributes).unwrap_or_default()
                );
            }
        }
        out
    }

    /// Traffic share per backend before and after, as an SVG bar chart.
    pub fn svg(&self) -> String {
        let names = self.backends();
        let total = self.decisions.max(1) as f64;
        let row = 44.0;
        let height = 70.0 + row * names.len() as f64;
        let mut svg = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"640\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
             <text x=\"10\" y=\"20\" font-size=\"14\">{} — traffic by first backend: {} (grey) vs {} (blue)</text>\n",
            escape(&self.route),
            escape(&self.baseline),
            escape(&self.candidate)
        );
        for (i, name) in names.iter().enumerate() {
            let y = 40.0 + row * i as f64;
            let b = self.traffic_before.get(*name).copied().unwrap_or(0) as f64 / total;
            let a = self.traffic_after.get(*name).copied().unwrap_or(0) as f64 / total;
            svg += &format!(
                "<text x=\"10\" y=\"{:.0}\">{}</text>\n\
                 <rect x=\"150\" y=\"{:.0}\" width=\"{:.1}\" height=\"16\" fill=\"#999\"/><text x=\"{:.1}\" y=\"{:.0}\">{:.1} %</text>\n\
                 <rect x=\"150\" y=\"{:.0}\" width=\"{:.1}\" height=\"16\" fill=\"#2b6cb0\"/><text x=\"{:.1}\" y=\"{:.0}\">{:.1} %</text>\n",
                y + 20.0,
                escape(name),
                y,
                b * 400.0,
                156.0 + b * 400.0,
                y + 12.0,
                b * 100.0,
                y + 18.0,
                a * 400.0,
                156.0 + a * 400.0,
                y + 30.0,
                a * 100.0
            );
        }
        svg += &format!(
            "<text x=\"10\" y=\"{:.0}\">{} decisions; first backend changed on {:.2} %; {} candidate failures</text>\n</svg>\n",
            height - 10.0,
            self.decisions,
            self.changed_primary_share * 100.0,
            self.failures
        );
        svg
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
