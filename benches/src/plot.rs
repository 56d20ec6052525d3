//! The SVG plot: throughput per direction and stream count, and connection
//! rates with one and several clients, one bar per path (medians).

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::metrics::Metric;
use crate::report::PathSamples;

const THROUGHPUT: [(Metric, &str); 5] = [
    (Metric::Up1, "up, 1 stream"),
    (Metric::Up4, "up, 4 streams"),
    (Metric::Down1, "down, 1 stream"),
    (Metric::Down4, "down, 4 streams"),
    (Metric::In1, "published, 1 stream"),
];

const CONNECTIONS: [(Metric, &str); 4] = [
    (Metric::ConnRate, "1 client"),
    (Metric::ConnRate8, "1 thread × 8"),
    (Metric::ConnRate4x2, "4 threads × 2"),
    (Metric::HostIpRate, "to the host's IP"),
];

/// Names categories at their centres (x = i + 0.5) and leaves other ticks blank.
fn category_label(x: f64, names: &[String]) -> String {
    let i = x - 0.5;
    if (i - i.round()).abs() < 1e-6 && i >= 0.0 {
        names.get(i.round() as usize).cloned().unwrap_or_default()
    } else {
        String::new()
    }
}

fn median(p: &PathSamples, m: Metric) -> f64 {
    p.summary(m).map(|s| s.median).unwrap_or(0.0)
}

/// One group of bars per metric, one bar per path, with a legend.
fn grouped_bars(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    caption: &str,
    unit: &str,
    groups: &[(Metric, &str)],
    paths: &[PathSamples],
) -> Result<()> {
    let bar = 0.8 / paths.len().max(1) as f64;
    let names: Vec<String> = groups.iter().map(|(_, l)| l.to_string()).collect();
    let top = paths
        .iter()
        .flat_map(|p| groups.iter().map(move |(m, _)| median(p, *m)))
        .fold(1.0, f64::max)
        * 1.4; // headroom for the legend
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..groups.len() as f64, 0f64..top)
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(groups.len() * 2 + 1)
        .x_label_formatter(&|x| category_label(*x, &names))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .y_desc(unit)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    for (i, p) in paths.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(groups.iter().enumerate().map(|(g, (m, _))| {
                let x0 = g as f64 + 0.1 + i as f64 * bar;
                Rectangle::new([(x0, 0.0), (x0 + bar * 0.9, median(p, *m))], color.filled())
            }))
            .map_err(|e| anyhow!("{e}"))?
            .label(p.name.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 12, y + 6)], color.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

pub fn write_svg(out: &Path, paths: &[PathSamples]) -> Result<()> {
    let root = SVGBackend::new(out, (1800, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let (left, right) = root.split_horizontally(1000);
    grouped_bars(
        &left,
        "TCP throughput: container ↔ peer, host → published port (median)",
        "Gbit/s",
        &THROUGHPUT,
        paths,
    )?;
    grouped_bars(
        &right,
        "short connections per second (median)",
        "connections/s",
        &CONNECTIONS,
        paths,
    )?;
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}
