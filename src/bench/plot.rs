//! SVG plots, written by hand: latency over time and latency CDF, one series per measure.

use std::fmt::Write;

use super::report::Samples;

const W: f64 = 720.0;
const H: f64 = 360.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 170.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = 45.0;
const COLORS: [&str; 5] = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"];

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Log10 axis bounds (decades) that hold every value.
fn log_bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::MAX, f64::MIN);
    for v in values.filter(|v| *v > 0.0) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if lo > hi {
        return (-2.0, 1.0);
    }
    let (lo, hi) = (lo.log10().floor(), hi.log10().ceil());
    (lo, if hi <= lo { lo + 1.0 } else { hi })
}

fn frame(title: &str, x_label: &str, y_label: &str) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="11">
<rect width="{W}" height="{H}" fill="white"/>
<text x="{}" y="18" text-anchor="middle" font-size="13">{}</text>
<text x="{}" y="{}" text-anchor="middle">{}</text>
<text x="14" y="{}" text-anchor="middle" transform="rotate(-90 14 {})">{}</text>
<rect x="{LEFT}" y="{TOP}" width="{}" height="{}" fill="none" stroke="#444"/>
"##,
        W / 2.0,
        escape(title),
        LEFT + (W - LEFT - RIGHT) / 2.0,
        H - 8.0,
        escape(x_label),
        TOP + (H - TOP - BOTTOM) / 2.0,
        TOP + (H - TOP - BOTTOM) / 2.0,
        escape(y_label),
        W - LEFT - RIGHT,
        H - TOP - BOTTOM
    );
    s
}

fn legend(s: &mut String, series: &[(&str, &Samples)]) {
    for (i, (name, samples)) in series.iter().enumerate() {
        let y = TOP + 14.0 + 18.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<rect x="{}" y="{}" width="12" height="3" fill="{}"/><text x="{}" y="{}">{} ({})</text>"#,
            W - RIGHT + 10.0,
            y - 4.0,
            COLORS[i % COLORS.len()],
            W - RIGHT + 26.0,
            y,
            escape(name),
            samples.points.len()
        );
    }
}

fn y_axis_log(s: &mut String, lo: f64, hi: f64) -> impl Fn(f64) -> f64 + use<> {
    let ph = H - TOP - BOTTOM;
    let to_y = move |v: f64| TOP + ph - (v.max(10f64.powf(lo)).log10() - lo) / (hi - lo) * ph;
    let mut d = lo;
    while d <= hi {
        let y = to_y(10f64.powf(d));
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            W - RIGHT,
            LEFT - 4.0,
            y + 4.0,
            fmt_decade(d)
        );
        d += 1.0;
    }
    to_y
}

fn fmt_decade(d: f64) -> String {
    let v = 10f64.powf(d);
    if v >= 1.0 { format!("{v:.0}") } else { format!("{v}") }
}

/// Latency (ms, log scale) of each step against the time it was sent.
pub fn latency_over_time(title: &str, series: &[(&str, &Samples)]) -> String {
    let mut s = frame(title, "time since the scenario started (s)", "latency (ms, log)");
    let (lo, hi) = log_bounds(series.iter().flat_map(|(_, x)| x.points.iter().map(|(_, v)| *v as f64 / 1000.0)));
    let t_max = series.iter().flat_map(|(_, x)| x.points.iter().map(|(t, _)| *t)).fold(0.0f64, f64::max).max(1e-3);
    let to_y = y_axis_log(&mut s, lo, hi);
    let pw = W - LEFT - RIGHT;
    for k in 0..=4 {
        let t = t_max * k as f64 / 4.0;
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{t:.1}</text>"#,
            LEFT + pw * k as f64 / 4.0,
            H - BOTTOM + 14.0
        );
    }
    for (i, (_, samples)) in series.iter().enumerate() {
        // Thin out to at most ~4,000 points per series.
        let step = (samples.points.len() / 4000).max(1);
        let _ = write!(s, r#"<g fill="{}" fill-opacity="0.6">"#, COLORS[i % COLORS.len()]);
        for (t, v) in samples.points.iter().step_by(step) {
            let _ = write!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="1.5"/>"#,
                LEFT + t / t_max * pw,
                to_y(*v as f64 / 1000.0)
            );
        }
        s.push_str("</g>\n");
    }
    legend(&mut s, series);
    s.push_str("</svg>\n");
    s
}

/// The latency CDF of each series (x: ms, log scale; y: fraction of steps).
pub fn latency_cdf(title: &str, series: &[(&str, &Samples)]) -> String {
    let mut s = frame(title, "latency (ms, log)", "fraction of events ≤ x");
    let (lo, hi) = log_bounds(series.iter().flat_map(|(_, x)| x.points.iter().map(|(_, v)| *v as f64 / 1000.0)));
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let to_x = |v: f64| LEFT + (v.max(10f64.powf(lo)).log10() - lo) / (hi - lo) * pw;
    let mut d = lo;
    while d <= hi {
        let x = to_x(10f64.powf(d));
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{}" stroke="#ddd"/><text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"##,
            H - BOTTOM,
            H - BOTTOM + 14.0,
            fmt_decade(d)
        );
        d += 1.0;
    }
    for q in [0.0, 0.5, 0.9, 0.99, 1.0] {
        let y = TOP + ph - q * ph;
        let _ = writeln!(s, r#"<text x="{}" y="{:.1}" text-anchor="end">{q}</text>"#, LEFT - 4.0, y + 4.0);
    }
    for (i, (_, samples)) in series.iter().enumerate() {
        let mut values: Vec<u64> = samples.points.iter().map(|(_, v)| *v).collect();
        if values.is_empty() {
            continue;
        }
        values.sort_unstable();
        let n = values.len();
        let step = (n / 2000).max(1);
        let mut pts = String::new();
        for (k, v) in values.iter().enumerate().step_by(step).chain(std::iter::once((n - 1, &values[n - 1]))) {
            let q = (k + 1) as f64 / n as f64;
            let _ = write!(pts, "{:.1},{:.1} ", to_x(*v as f64 / 1000.0), TOP + ph - q * ph);
        }
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{}" stroke-width="1.5" points="{}"/>"#,
            COLORS[i % COLORS.len()],
            pts.trim_end()
        );
    }
    legend(&mut s, series);
    s.push_str("</svg>\n");
    s
}
