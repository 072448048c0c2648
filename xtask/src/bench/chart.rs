//! `connect-latency.svg`: connect() p50 (solid) and p99 (dashed) against the Service count,
//! one colour per mode, both axes logarithmic. Hand-written SVG: no plotting dependency.

use std::fmt::Write as _;

use super::report::{Results, summarize};
use super::topology::MODES;

const W: f64 = 760.0;
const H: f64 = 440.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 230.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
const COLOURS: [&str; 4] = ["#555555", "#1f77b4", "#d62728", "#2ca02c"];

fn nice_decades(lo: f64, hi: f64) -> (f64, f64) {
    (
        10f64.powf(lo.max(1e-3).log10().floor()),
        10f64.powf(hi.max(lo * 10.0).log10().ceil()),
    )
}

/// (services, p50 µs, p99 µs)
type Point = (f64, f64, f64);

pub fn connect_latency(r: &Results) -> String {
    let series: Vec<(usize, Vec<Point>)> = MODES
        .iter()
        .map(|m| {
            let pts = r
                .scales
                .iter()
                .filter(|sc| !sc.modes[m.index()].tcp.is_empty())
                .map(|sc| {
                    let s = summarize(&sc.modes[m.index()].tcp);
                    (sc.services.max(1) as f64, s.p50_us, s.p99_us)
                })
                .collect();
            (m.index(), pts)
        })
        .collect();
    let all_y: Vec<f64> = series
        .iter()
        .flat_map(|(_, p)| p.iter().flat_map(|(_, a, b)| [*a, *b]))
        .filter(|v| *v > 0.0)
        .collect();
    let (ylo, yhi) = nice_decades(
        all_y.iter().copied().fold(f64::INFINITY, f64::min).min(1e9),
        all_y.iter().copied().fold(0.0, f64::max),
    );
    let xmax = r
        .scales
        .iter()
        .map(|s| s.services.max(1) as f64)
        .fold(10.0, f64::max);
    let (xlo, xhi) = (1.0f64, 10f64.powf(xmax.log10().ceil()));
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let x = |v: f64| LEFT + (v.log10() - xlo.log10()) / (xhi.log10() - xlo.log10()) * pw;
    let y =
        |v: f64| TOP + ph - (v.max(ylo).log10() - ylo.log10()) / (yhi.log10() - ylo.log10()) * ph;

    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(o, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        o,
        r#"<text x="{}" y="22" font-size="15" text-anchor="middle">connect() latency vs number of Services ({}; {} CPUs, Linux {})</text>"#,
        W / 2.0,
        if r.settings.quick {
            "quick run"
        } else {
            "median of rounds"
        },
        r.machine.cpus,
        r.machine.kernel
    );
    // Grid and axes.
    let mut d = xlo;
    while d <= xhi * 1.0001 {
        let _ = writeln!(
            o,
            r##"<line x1="{0:.1}" y1="{TOP}" x2="{0:.1}" y2="{1:.1}" stroke="#ddd"/><text x="{0:.1}" y="{2:.1}" text-anchor="middle">{3}</text>"##,
            x(d),
            TOP + ph,
            TOP + ph + 18.0,
            d as u64
        );
        d *= 10.0;
    }
    let mut d = ylo;
    while d <= yhi * 1.0001 {
        let _ = writeln!(
            o,
            r##"<line x1="{LEFT}" y1="{0:.1}" x2="{1:.1}" y2="{0:.1}" stroke="#ddd"/><text x="{2:.1}" y="{3:.1}" text-anchor="end">{4}</text>"##,
            y(d),
            LEFT + pw,
            LEFT - 6.0,
            y(d) + 4.0,
            d
        );
        d *= 10.0;
    }
    let _ = writeln!(
        o,
        r##"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>"##
    );
    let _ = writeln!(
        o,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">Services (log scale)</text>"#,
        LEFT + pw / 2.0,
        H - 10.0
    );
    let _ = writeln!(
        o,
        r#"<text x="16" y="{:.1}" text-anchor="middle" transform="rotate(-90 16 {:.1})">connect() µs (log scale)</text>"#,
        TOP + ph / 2.0,
        TOP + ph / 2.0
    );
    for (i, pts) in &series {
        let c = COLOURS[*i % COLOURS.len()];
        let p50: Vec<String> = pts
            .iter()
            .map(|(n, a, _)| format!("{:.1},{:.1}", x(*n), y(*a)))
            .collect();
        let p99: Vec<String> = pts
            .iter()
            .map(|(n, _, b)| format!("{:.1},{:.1}", x(*n), y(*b)))
            .collect();
        let _ = writeln!(
            o,
            r#"<polyline points="{}" fill="none" stroke="{c}" stroke-width="2.5"/>"#,
            p50.join(" ")
        );
        let _ = writeln!(
            o,
            r#"<polyline points="{}" fill="none" stroke="{c}" stroke-width="1.2" stroke-dasharray="5,4"/>"#,
            p99.join(" ")
        );
        for (n, a, _) in pts {
            let _ = writeln!(
                o,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{c}"/>"#,
                x(*n),
                y(*a)
            );
        }
        let ly = TOP + 14.0 + *i as f64 * 22.0;
        let lx = LEFT + pw + 16.0;
        let _ = writeln!(
            o,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{c}" stroke-width="2.5"/><text x="{}" y="{}">{}</text>"#,
            lx + 24.0,
            lx + 30.0,
            ly + 4.0,
            MODES[*i].label()
        );
    }
    let ly = TOP + 14.0 + MODES.len() as f64 * 22.0 + 8.0;
    let lx = LEFT + pw + 16.0;
    let _ = writeln!(
        o,
        r##"<text x="{lx}" y="{ly}" fill="#333">solid: p50, dashed: p99</text>"##
    );
    o.push_str("</svg>\n");
    o
}
