//! `samples.png` of a 2D EBM run: the data (left) and decoded model samples (right) as 2D
//! histograms on `[−4.5, 4.5]²`, darker where denser (no text, so no font is needed).

use std::path::Path;

use anyhow::{Context, Result};
use plotters::prelude::*;

/// Histogram bins per axis.
const BINS: usize = 90;
/// Half-width of the plotted square.
const EXTENT: f64 = 4.5;
/// Pixels per panel side.
const PANEL: u32 = 360;

fn histogram(points: &[[f64; 2]]) -> Vec<f64> {
    let mut h = vec![0.0; BINS * BINS];
    for p in points {
        let cell = |v: f64| ((v + EXTENT) / (2.0 * EXTENT) * BINS as f64).floor();
        let (x, y) = (cell(p[0]), cell(p[1]));
        if (0.0..BINS as f64).contains(&x) && (0.0..BINS as f64).contains(&y) {
            h[(BINS - 1 - y as usize) * BINS + x as usize] += 1.0;
        }
    }
    h
}

/// Write the two panels to `path` (PNG), atomically.
pub fn samples_png(path: &Path, data: &[[f64; 2]], model: &[[f64; 2]]) -> Result<()> {
    let tmp = path.with_extension("tmp.png");
    {
        let root = BitMapBackend::new(&tmp, (2 * PANEL + 12, PANEL)).into_drawing_area();
        root.fill(&WHITE).context("cannot draw samples.png")?;
        let cell = PANEL as f64 / BINS as f64;
        for (panel, pts) in [data, model].into_iter().enumerate() {
            let h = histogram(pts);
            let max = h.iter().copied().fold(0.0, f64::max).max(1.0);
            let x0 = panel as f64 * f64::from(PANEL + 12);
            for (i, &c) in h.iter().enumerate() {
                if c == 0.0 {
                    continue;
                }
                let shade = (255.0 * (1.0 - (c / max).sqrt())) as u8;
                let (r, col) = ((i / BINS) as f64, (i % BINS) as f64);
                let rect = [
                    ((x0 + col * cell) as i32, (r * cell) as i32),
                    (
                        (x0 + (col + 1.0) * cell).ceil() as i32,
                        ((r + 1.0) * cell).ceil() as i32,
                    ),
                ];
                root.draw(&Rectangle::new(rect, RGBColor(shade, shade, shade).filled()))
                    .context("cannot draw samples.png")?;
            }
        }
        root.present().context("cannot write samples.png")?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("cannot move {} into place", path.display()))?;
    Ok(())
}
