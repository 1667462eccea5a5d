//! PNG line charts with plotters (bitmap backend, an embedded DejaVu Sans font, so no system
//! font library is needed).

use std::path::Path;
use std::sync::Once;

use anyhow::{Result, anyhow};
use plotters::prelude::*;
use plotters::style::FontStyle;

static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
static REGISTER: Once = Once::new();

fn register_font() {
    REGISTER.call_once(|| {
        // The font is embedded and known to parse; a failure would only lose the text.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// One line of a chart: a label and its points (non-finite and, on a log axis, non-positive
/// points are dropped).
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend label.
    pub label: String,
    /// Points `(x, y)`.
    pub points: Vec<(f64, f64)>,
    /// Dashed (for peers) or solid (ours).
    pub dashed: bool,
}

/// A horizontal reference line across a chart (a known ceiling, a target): thin, dashed, grey.
#[derive(Debug, Clone)]
pub struct Reference {
    /// Legend label.
    pub label: String,
    /// Height.
    pub y: f64,
}

/// A line chart.
#[derive(Debug, Clone)]
pub struct Chart<'a> {
    /// Title.
    pub title: &'a str,
    /// x-axis label.
    pub x_label: &'a str,
    /// y-axis label.
    pub y_label: &'a str,
    /// Logarithmic x axis.
    pub log_x: bool,
    /// Logarithmic y axis.
    pub log_y: bool,
}

/// Color of reference lines.
const REFERENCE: RGBColor = RGBColor(90, 90, 90);

const COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// Color of the series whose label starts with `key` (same method, same color across charts).
fn color_of(index: usize) -> RGBColor {
    COLORS[index % COLORS.len()]
}

fn bounds(values: impl Iterator<Item = f64>, log: bool) -> Option<(f64, f64)> {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() || !hi.is_finite() {
        return None;
    }
    if log {
        Some((lo / 1.3, hi * 1.3))
    } else if hi > lo {
        let pad = 0.05 * (hi - lo);
        Some((lo - pad, hi + pad))
    } else {
        Some((lo - 0.5 - lo.abs() * 0.1, hi + 0.5 + hi.abs() * 0.1))
    }
}

/// Dashes a polyline: every other piece of about `piece` pixels (in data space, approximated by
/// splitting each segment into pieces).
fn dashed(points: &[(f64, f64)], log_x: bool, log_y: bool) -> Vec<Vec<(f64, f64)>> {
    let tf = |v: f64, log: bool| if log { v.ln() } else { v };
    let inv = |v: f64, log: bool| if log { v.exp() } else { v };
    let mut out = Vec::new();
    for w in points.windows(2) {
        let (a, b) = (w[0], w[1]);
        let n = 6;
        for k in (0..n).step_by(2) {
            let t0 = k as f64 / n as f64;
            let t1 = (k + 1) as f64 / n as f64;
            let p = |t: f64| {
                (
                    inv(tf(a.0, log_x) + t * (tf(b.0, log_x) - tf(a.0, log_x)), log_x),
                    inv(tf(a.1, log_y) + t * (tf(b.1, log_y) - tf(a.1, log_y)), log_y),
                )
            };
            out.push(vec![p(t0), p(t1)]);
        }
    }
    out
}

/// An axis tick: at most 3 significant digits, no float noise (`0.7`, `2.5e-4`, `40000`).
pub fn tick(v: f64) -> String {
    if v.abs() < 1e-12 {
        // Zero, or a tick position's rounding noise around it (-5.6e-17).
        return "0".into();
    }
    if !v.is_finite() {
        return format!("{v}");
    }
    let a = v.abs();
    if !(1e-3..1e6).contains(&a) {
        return format!("{v:.1e}");
    }
    let digits = (2 - a.log10().floor() as i32).max(0) as usize;
    let s = format!("{v:.digits$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// Points along the horizontal line at height `y` from `x0` to `x1`, evenly spaced on the x axis
/// (logarithmically on a log axis), for [`dashed`].
fn horizontal(x0: f64, x1: f64, y: f64, log_x: bool) -> Vec<(f64, f64)> {
    let n = 20;
    (0..=n)
        .map(|i| {
            let t = i as f64 / n as f64;
            let x = if log_x {
                (x0.ln() + t * (x1.ln() - x0.ln())).exp()
            } else {
                x0 + t * (x1 - x0)
            };
            (x, y)
        })
        .collect()
}

/// Draws `series` into a 960×600 PNG at `path`. Series are colored by position.
pub fn line_chart(path: &Path, chart: &Chart, series: &[Series]) -> Result<()> {
    line_chart_with(path, chart, series, &[])
}

/// [`line_chart`] with horizontal reference lines (kept inside the y range, listed in the legend).
/// References that a log y axis cannot show (non-positive) are dropped.
pub fn line_chart_with(path: &Path, chart: &Chart, series: &[Series], references: &[Reference]) -> Result<()> {
    register_font();
    let keep = |(x, y): &(f64, f64)| {
        x.is_finite() && y.is_finite() && (!chart.log_x || *x > 0.0) && (!chart.log_y || *y > 0.0)
    };
    let series: Vec<Series> = series
        .iter()
        .map(|s| Series {
            points: s.points.iter().copied().filter(keep).collect(),
            ..s.clone()
        })
        .filter(|s| !s.points.is_empty())
        .collect();
    let references: Vec<&Reference> = references
        .iter()
        .filter(|r| r.y.is_finite() && (!chart.log_y || r.y > 0.0))
        .collect();
    let xs = series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let ys = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .chain(references.iter().map(|r| r.y));
    let (Some((x0, x1)), Some((y0, y1))) = (bounds(xs, chart.log_x), bounds(ys, chart.log_y)) else {
        return Err(anyhow!("{}: nothing to plot", path.display()));
    };
    let root = BitMapBackend::new(path, (960, 600)).into_drawing_area();
    let err = |e: &dyn std::fmt::Display| anyhow!("cannot draw {}: {e}", path.display());
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut builder = ChartBuilder::on(&root);
    builder
        .caption(chart.title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(72);
    macro_rules! draw {
        ($ctx:expr) => {{
            let mut ctx = $ctx;
            ctx.configure_mesh()
                .x_label_formatter(&|v| tick(*v))
                .y_label_formatter(&|v| tick(*v))
                .x_desc(chart.x_label)
                .y_desc(chart.y_label)
                .label_style(("sans-serif", 14))
                .axis_desc_style(("sans-serif", 16))
                .draw()
                .map_err(|e| err(&e))?;
            for (i, s) in series.iter().enumerate() {
                let color = color_of(i);
                let style = ShapeStyle::from(&color).stroke_width(2);
                if s.dashed {
                    for piece in dashed(&s.points, chart.log_x, chart.log_y) {
                        ctx.draw_series(LineSeries::new(piece, style)).map_err(|e| err(&e))?;
                    }
                    ctx.draw_series(std::iter::once(PathElement::new(vec![s.points[0]], style)))
                        .map_err(|e| err(&e))?
                        .label(&s.label)
                        .legend(move |(x, y)| {
                            PathElement::new(vec![(x, y), (x + 8, y), (x + 12, y), (x + 20, y)], style)
                        });
                } else {
                    ctx.draw_series(LineSeries::new(s.points.clone(), style))
                        .map_err(|e| err(&e))?
                        .label(&s.label)
                        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
                }
                ctx.draw_series(s.points.iter().map(|&p| Circle::new(p, 2, color.filled())))
                    .map_err(|e| err(&e))?;
            }
            for r in &references {
                let style = ShapeStyle::from(&REFERENCE).stroke_width(1);
                for piece in dashed(&horizontal(x0, x1, r.y, chart.log_x), chart.log_x, chart.log_y) {
                    ctx.draw_series(LineSeries::new(piece, style)).map_err(|e| err(&e))?;
                }
                ctx.draw_series(std::iter::once(PathElement::new(vec![(x0, r.y)], style)))
                    .map_err(|e| err(&e))?
                    .label(&r.label)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
            }
            ctx.configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .label_font(("sans-serif", 14))
                .position(SeriesLabelPosition::UpperRight)
                .draw()
                .map_err(|e| err(&e))?;
        }};
    }
    match (chart.log_x, chart.log_y) {
        (false, false) => draw!(builder.build_cartesian_2d(x0..x1, y0..y1).map_err(|e| err(&e))?),
        (true, false) => draw!(
            builder
                .build_cartesian_2d((x0..x1).log_scale(), y0..y1)
                .map_err(|e| err(&e))?
        ),
        (false, true) => draw!(
            builder
                .build_cartesian_2d(x0..x1, (y0..y1).log_scale())
                .map_err(|e| err(&e))?
        ),
        (true, true) => draw!(
            builder
                .build_cartesian_2d((x0..x1).log_scale(), (y0..y1).log_scale())
                .map_err(|e| err(&e))?
        ),
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// Whether positive values spanning more than a factor of 10 are better read on a log axis.
pub fn spans_decades(series: &[Series]) -> bool {
    let ys = || series.iter().flat_map(|s| s.points.iter().map(|p| p.1));
    let (lo, hi) = (
        ys().fold(f64::INFINITY, f64::min),
        ys().fold(f64::NEG_INFINITY, f64::max),
    );
    lo > 0.0 && hi.is_finite() && hi / lo > 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_short() {
        assert_eq!(tick(0.7000000001), "0.7");
        assert_eq!(tick(40000.0), "40000");
        assert_eq!(tick(0.25), "0.25");
        assert_eq!(tick(0.00025), "2.5e-4");
        assert_eq!(tick(1.0), "1");
        assert_eq!(tick(-5.55e-17), "0");
        assert_eq!(tick(0.0), "0");
    }

    #[test]
    fn draws_a_png() {
        let dir = std::env::temp_dir().join(format!("xtask-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.png");
        let s = vec![
            Series {
                label: "a".into(),
                points: vec![(1.0, 1.0), (10.0, 0.1), (100.0, 0.01)],
                dashed: false,
            },
            Series {
                label: "b".into(),
                points: vec![(1.0, 2.0), (10.0, 0.5), (100.0, f64::NAN)],
                dashed: true,
            },
        ];
        let chart = Chart {
            title: "test",
            x_label: "x",
            y_label: "y",
            log_x: true,
            log_y: true,
        };
        line_chart(&path, &chart, &s).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        let with_ref = dir.join("r.png");
        let refs = [
            Reference {
                label: "ceiling".into(),
                y: 5.0,
            },
            Reference {
                label: "dropped on a log axis".into(),
                y: -1.0,
            },
        ];
        line_chart_with(&with_ref, &chart, &s, &refs).unwrap();
        assert_eq!(&std::fs::read(&with_ref).unwrap()[1..4], b"PNG");
        assert!(line_chart(&dir.join("empty.png"), &chart, &[]).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
