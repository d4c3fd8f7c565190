// The bar chart of perf-report (included by src/bin/perf-report.rs).

use std::path::Path;

use fleetboard_perf::stats::Summary;
use plotters::prelude::*;

/// One case's bars.
pub struct Bar {
    /// Case id.
    pub label: String,
    /// TCP, 1 stream, Gbit/s.
    pub tcp1: Option<Summary>,
    /// TCP, 4 streams, Gbit/s.
    pub tcp4: Option<Summary>,
    /// RTT p50, µs.
    pub rtt_p50: Option<Summary>,
    /// RTT p99, µs.
    pub rtt_p99: Option<Summary>,
}

/// Fonts tried for the chart's text (Debian's fonts-dejavu-core).
const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

/// Draws throughput (log scale, so raw veth and the tunnels fit) and RTT side by side.
pub fn draw(path: &Path, title: &str, bars: &[Bar]) -> anyhow::Result<()> {
    let font = FONTS
        .iter()
        .find_map(|p| std::fs::read(p).ok())
        .ok_or_else(|| anyhow::anyhow!("no TTF font found (install fonts-dejavu-core)"))?;
    let font: &'static [u8] = Box::leak(font.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, font)
        .map_err(|_| anyhow::anyhow!("bad font file"))?;

    let root = BitMapBackend::new(path, (1400, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 24))?;
    let (left, right) = root.split_horizontally(760);
    let n = bars.len().max(1) as f64;
    let labels: Vec<String> = bars.iter().map(|b| b.label.clone()).collect();
    let fmt = |x: &f64| {
        let i = x.floor() as usize;
        if (x - x.floor() - 0.5).abs() < 1e-6 {
            labels.get(i).cloned().unwrap_or_default()
        } else {
            String::new()
        }
    };

    let top = bars
        .iter()
        .flat_map(|b| [b.tcp1, b.tcp4])
        .flatten()
        .map(|s| s.max)
        .fold(1.0f64, f64::max)
        * 1.5;
    let mut c = ChartBuilder::on(&left)
        .caption("iperf3 TCP Gbit/s (log scale; median, min-max)", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..n, (0.01f64..top).log_scale())?;
    c.configure_mesh()
        .disable_x_mesh()
        .x_labels(bars.len() * 2 + 1)
        .x_label_formatter(&fmt)
        .y_desc("Gbit/s")
        .draw()?;
    series(&mut c, bars, |b| b.tcp1, 0.1, BLUE, "1 stream", 0.01)?;
    series(&mut c, bars, |b| b.tcp4, 0.5, RED, "4 streams", 0.01)?;
    c.configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE)
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;

    let top = bars
        .iter()
        .flat_map(|b| [b.rtt_p50, b.rtt_p99])
        .flatten()
        .map(|s| s.max)
        .fold(10.0f64, f64::max)
        * 1.2;
    let mut c = ChartBuilder::on(&right)
        .caption("UDP RTT µs (perf-probe; median, min-max)", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..n, 0f64..top)?;
    c.configure_mesh()
        .disable_x_mesh()
        .x_labels(bars.len() * 2 + 1)
        .x_label_formatter(&fmt)
        .y_desc("µs")
        .draw()?;
    series(&mut c, bars, |b| b.rtt_p50, 0.1, GREEN, "p50", 0.0)?;
    series(&mut c, bars, |b| b.rtt_p99, 0.5, MAGENTA, "p99", 0.0)?;
    c.configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    root.present()?;
    Ok(())
}

type Chart<'a, Y> = ChartContext<'a, BitMapBackend<'a>, Cartesian2d<plotters::coord::types::RangedCoordf64, Y>>;

fn series<'a, Y>(
    c: &mut Chart<'a, Y>,
    bars: &[Bar],
    get: impl Fn(&Bar) -> Option<Summary>,
    offset: f64,
    color: RGBColor,
    name: &str,
    floor: f64,
) -> anyhow::Result<()>
where
    Y: Ranged<ValueType = f64>,
{
    let rects = bars.iter().enumerate().filter_map(|(i, b)| {
        get(b).map(|s| {
            let x = i as f64 + offset;
            Rectangle::new([(x, floor.max(1e-9)), (x + 0.4, s.median)], color.filled())
        })
    });
    c.draw_series(rects)?
        .label(name)
        .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    let whiskers = bars.iter().enumerate().filter_map(|(i, b)| {
        get(b).map(|s| {
            let x = i as f64 + offset + 0.2;
            PathElement::new(vec![(x, s.min), (x, s.max)], BLACK.stroke_width(2))
        })
    });
    c.draw_series(whiskers)?;
    Ok(())
}
