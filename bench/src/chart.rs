//! PNG charts of benchmark results: lines for a curve (a quantity over cluster size),
//! grouped bars for Tandem next to its anchor.
//!
//! Text is drawn with a TrueType font read from disk (DejaVu Sans, Debian's
//! `fonts-dejavu-core`, unless `TANDEM_FONT` names another), so no system font service is
//! needed.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context, anyhow};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

const FONT: &str = "sans-serif";
const DEFAULT_FONT_FILE: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const SIZE: (u32, u32) = (900, 520);

/// One named line of a chart.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

fn load_font() -> anyhow::Result<()> {
    static LOADED: OnceLock<Result<(), String>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            let path = std::env::var_os("TANDEM_FONT")
                .map_or_else(|| PathBuf::from(DEFAULT_FONT_FILE), PathBuf::from);
            let bytes = std::fs::read(&path).map_err(|err| {
                format!(
                    "font {}: {err} (install fonts-dejavu-core, or name a .ttf in TANDEM_FONT)",
                    path.display()
                )
            })?;
            // plotters keeps the font for the life of the process.
            plotters::style::register_font(FONT, FontStyle::Normal, Box::leak(bytes.into()))
                .map_err(|_| format!("{}: not a TrueType font", path.display()))
        })
        .clone()
        .map_err(|message| anyhow!(message))
}

fn color(index: usize) -> RGBColor {
    const COLORS: [RGBColor; 5] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
    ];
    COLORS[index % COLORS.len()]
}

fn drawing_error(path: &Path) -> impl Fn(String) -> anyhow::Error + '_ {
    move |message| anyhow!("chart {}: {message}", path.display())
}

/// Draws `series` as lines with their points marked, from 0 (or the least x, if below) on
/// both axes.
///
/// # Errors
/// The font cannot be read, or the PNG cannot be written.
pub fn lines(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> anyhow::Result<()> {
    load_font()?;
    let fail = drawing_error(path);
    let points = || series.iter().flat_map(|s| s.points.iter());
    let x_min = points().map(|p| p.0).fold(0.0, f64::min);
    let x_max = points().map(|p| p.0).fold(1.0, f64::max) * 1.05;
    let y_max = points().map(|p| p.1).fold(1e-9, f64::max) * 1.15;
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(e.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, 22))
        .margin(18)
        .x_label_area_size(48)
        .y_label_area_size(70)
        .build_cartesian_2d(x_min..x_max, 0f64..y_max)
        .map_err(|e| fail(e.to_string()))?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .label_style((FONT, 14))
        .draw()
        .map_err(|e| fail(e.to_string()))?;
    for (index, line) in series.iter().enumerate() {
        let style = color(index).stroke_width(2);
        chart
            .draw_series(LineSeries::new(line.points.iter().copied(), style))
            .map_err(|e| fail(e.to_string()))?
            .label(line.name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], style));
        chart
            .draw_series(
                line.points
                    .iter()
                    .map(|&point| Circle::new(point, 4, color(index).filled())),
            )
            .map_err(|e| fail(e.to_string()))?;
    }
    finish(&mut chart, &root, SeriesLabelPosition::UpperLeft).map_err(fail)
}

/// Draws one group of bars per entry of `groups`, one bar per series in each, with the
/// value written over each bar.
///
/// # Errors
/// A series has not one value per group, the font cannot be read, or the PNG cannot be
/// written.
pub fn bars(
    path: &Path,
    title: &str,
    y_label: &str,
    groups: &[String],
    series: &[(String, Vec<f64>)],
) -> anyhow::Result<()> {
    if let Some((name, _)) = series
        .iter()
        .find(|(_, values)| values.len() != groups.len())
    {
        anyhow::bail!("series {name}: one value per group is needed");
    }
    load_font()?;
    let fail = drawing_error(path);
    let y_max = series
        .iter()
        .flat_map(|(_, values)| values.iter().copied())
        .fold(1e-9, f64::max)
        * 1.2;
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(e.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, 22))
        .margin(18)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..groups.len() as f64, 0f64..y_max)
        .map_err(|e| fail(e.to_string()))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc(y_label)
        .y_label_formatter(&|value| short(*value))
        .label_style((FONT, 14))
        .draw()
        .map_err(|e| fail(e.to_string()))?;
    let width = 0.8 / series.len().max(1) as f64;
    let value_style =
        TextStyle::from((FONT, 12).into_font()).pos(Pos::new(HPos::Center, VPos::Bottom));
    for (index, (name, values)) in series.iter().enumerate() {
        let fill = color(index).filled();
        chart
            .draw_series(values.iter().enumerate().map(|(group, &value)| {
                let left = group as f64 + 0.1 + width * index as f64;
                Rectangle::new([(left, 0.0), (left + width, value)], fill)
            }))
            .map_err(|e| fail(e.to_string()))?
            .label(name.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], fill));
        chart
            .draw_series(values.iter().enumerate().map(|(group, &value)| {
                let center = group as f64 + 0.1 + width * (index as f64 + 0.5);
                Text::new(short(value), (center, value), value_style.clone())
            }))
            .map_err(|e| fail(e.to_string()))?;
    }
    let label_style =
        TextStyle::from((FONT, 15).into_font()).pos(Pos::new(HPos::Center, VPos::Top));
    for (group, name) in groups.iter().enumerate() {
        let (x, y) = chart.backend_coord(&(group as f64 + 0.5, 0.0));
        root.draw(&Text::new(name.as_str(), (x, y + 8), label_style.clone()))
            .map_err(|e| fail(e.to_string()))?;
    }
    finish(&mut chart, &root, SeriesLabelPosition::UpperRight).map_err(fail)
}

/// Draws the legend at `position` and writes the file.
fn finish<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    root: &DrawingArea<DB, plotters::coord::Shift>,
    position: SeriesLabelPosition,
) -> Result<(), String> {
    chart
        .configure_series_labels()
        .label_font((FONT, 15))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(position)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

/// A bar's value, short: 53576 → "53.6k".
fn short(value: f64) -> String {
    match value.abs() {
        0.0 => "0".to_string(),
        v if v >= 1e6 => format!("{:.2}M", value / 1e6),
        v if v >= 1e4 => format!("{:.1}k", value / 1e3),
        v if v >= 100.0 => format!("{value:.0}"),
        v if v >= 1.0 => format!("{value:.2}"),
        _ => format!("{value:.3}"),
    }
}

/// A bar chart's data: the groups, and each series with one value per group.
pub type Bars = (Vec<String>, Vec<(String, Vec<f64>)>);

/// Reads a chart's data from CSV lines `group,series,value` (a header line is skipped):
/// the groups and the series in the order they first appear.
///
/// # Errors
/// A line has not three fields, a value is not a number, or a value is missing.
pub fn read_bars(text: &str) -> anyhow::Result<Bars> {
    let mut rows = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if line.trim().is_empty()
            || (number == 0 && fields.get(2).is_some_and(|v| v.parse::<f64>().is_err()))
        {
            continue;
        }
        let [group, series, value] = fields[..] else {
            anyhow::bail!("line {}: expected group,series,value: {line}", number + 1);
        };
        let value: f64 = value
            .parse()
            .with_context(|| format!("line {}: {value} is not a number", number + 1))?;
        rows.push((group.to_string(), series.to_string(), value));
    }
    let mut groups: Vec<String> = Vec::new();
    let mut names: Vec<String> = Vec::new();
    for (group, series, _) in &rows {
        if !groups.contains(group) {
            groups.push(group.clone());
        }
        if !names.contains(series) {
            names.push(series.clone());
        }
    }
    let series = names
        .into_iter()
        .map(|name| {
            let values = groups
                .iter()
                .map(|group| {
                    rows.iter()
                        .find(|(g, s, _)| g == group && *s == name)
                        .map(|row| row.2)
                        .with_context(|| format!("no value for {name} in {group}"))
                })
                .collect::<anyhow::Result<Vec<f64>>>()?;
            Ok((name, values))
        })
        .collect::<anyhow::Result<_>>()?;
    Ok((groups, series))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bar_data_is_grouped_in_the_order_it_comes() {
        let (groups, series) = read_bars(
            "group,series,value\nSET,redis,100\nSET,tandem,110\nGET,redis,90\nGET,tandem,95.5\n",
        )
        .unwrap();
        assert_eq!(groups, ["SET", "GET"]);
        assert_eq!(series[0], ("redis".to_string(), vec![100.0, 90.0]));
        assert_eq!(series[1], ("tandem".to_string(), vec![110.0, 95.5]));
    }

    #[test]
    fn bar_data_with_a_hole_or_garbage_is_refused() {
        let missing = read_bars("SET,redis,1\nSET,tandem,2\nGET,redis,3\n").unwrap_err();
        assert!(
            missing.to_string().contains("no value for tandem in GET"),
            "{missing}"
        );
        let garbage = read_bars("SET,redis,1\nSET,tandem,fast\n").unwrap_err();
        assert!(
            format!("{garbage:#}").contains("fast is not a number"),
            "{garbage:#}"
        );
        let short = read_bars("SET,1\n").unwrap_err();
        assert!(
            short.to_string().contains("expected group,series,value"),
            "{short}"
        );
    }

    /// The font is Debian's fonts-dejavu-core; without it the drawing tests skip, unless
    /// `TANDEM_REQUIRE_ALL=1`.
    fn font_or_skip() -> bool {
        match load_font() {
            Ok(()) => true,
            Err(err) if std::env::var("TANDEM_REQUIRE_ALL").is_ok_and(|v| v == "1") => {
                panic!("a font is required (TANDEM_REQUIRE_ALL=1): {err}")
            }
            Err(err) => {
                eprintln!("skipped: {err}");
                false
            }
        }
    }

    fn png_size(path: &Path) -> (u32, u32) {
        let bytes = std::fs::read(path).unwrap();
        assert_eq!(
            &bytes[..8],
            b"\x89PNG\r\n\x1a\n",
            "{} is not a PNG",
            path.display()
        );
        let number = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
        (number(16), number(20))
    }

    #[test]
    fn charts_are_drawn_as_png() {
        if !font_or_skip() {
            return;
        }
        let dir = std::env::temp_dir().join(format!("tandem-chart-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bar_file = dir.join("bars.png");
        let (groups, series) = read_bars("SET,redis,100\nSET,tandem,110\n").unwrap();
        bars(&bar_file, "t", "req/s", &groups, &series).unwrap();
        assert_eq!(png_size(&bar_file), SIZE);
        let line_file = dir.join("lines.png");
        let line = Series {
            name: "join".to_string(),
            points: vec![(-1.0, 0.5), (50.0, 1.2), (200.0, 1.4)],
        };
        lines(&line_file, "t", "nodes", "s", &[line]).unwrap();
        assert_eq!(png_size(&line_file), SIZE);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn values_are_written_short() {
        assert_eq!(short(53576.0), "53.6k");
        assert_eq!(short(1_250_000.0), "1.25M");
        assert_eq!(short(812.4), "812");
        assert_eq!(short(1.234), "1.23");
        assert_eq!(short(0.0), "0");
    }
}
