//! Line charts as PNG without a plotting stack: panels of series with a title, a legend,
//! and the axis ranges written in a built-in 3×5 pixel font. Used for `curves.png`
//! (pretraining loss terms and KNN accuracy over time).

use image::{Rgb, RgbImage};

/// One line: `(x, y)` points in drawing order.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// One chart: a title and its lines, which share the axes.
#[derive(Clone, Debug, PartialEq)]
pub struct Panel {
    pub title: String,
    pub series: Vec<Series>,
}

const PALETTE: [Rgb<u8>; 5] = [Rgb([31, 119, 180]), Rgb([214, 39, 40]), Rgb([44, 160, 44]), Rgb([148, 103, 189]), Rgb([255, 127, 14])];
const INK: Rgb<u8> = Rgb([40, 40, 40]);
const GRID: Rgb<u8> = Rgb([225, 225, 225]);
/// Font pixels per glyph pixel.
const TEXT: u32 = 2;
const WIDTH: u32 = 640;
const PANEL_H: u32 = 240;
/// Plot area inside a panel: left margin for the y labels, top for title and legend.
const LEFT: u32 = 70;
const RIGHT: u32 = 20;
const TOP: u32 = 50;
const BOTTOM: u32 = 30;

/// 3×5 glyphs, one row per byte, bit 2 = left column. Unknown characters draw as blanks.
fn glyph(c: char) -> [u8; 5] {
    match c.to_ascii_uppercase() {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 1, 1],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        '.' => [0, 0, 0, 0, 2],
        '%' => [5, 1, 2, 4, 5],
        '-' => [0, 0, 7, 0, 0],
        '+' => [0, 2, 7, 2, 0],
        '=' => [0, 7, 0, 7, 0],
        ',' => [0, 0, 0, 2, 4],
        ':' => [0, 2, 0, 2, 0],
        '(' => [1, 2, 2, 2, 1],
        ')' => [4, 2, 2, 2, 4],
        '/' => [1, 1, 2, 4, 4],
        '_' => [0, 0, 0, 0, 7],
        'A' => [2, 5, 7, 5, 5],
        'B' => [6, 5, 6, 5, 6],
        'C' => [3, 4, 4, 4, 3],
        'D' => [6, 5, 5, 5, 6],
        'E' => [7, 4, 6, 4, 7],
        'F' => [7, 4, 6, 4, 4],
        'G' => [3, 4, 5, 5, 3],
        'H' => [5, 5, 7, 5, 5],
        'I' => [7, 2, 2, 2, 7],
        'J' => [1, 1, 1, 5, 2],
        'K' => [5, 5, 6, 5, 5],
        'L' => [4, 4, 4, 4, 7],
        'M' => [5, 7, 7, 5, 5],
        'N' => [6, 5, 5, 5, 5],
        'O' => [2, 5, 5, 5, 2],
        'P' => [6, 5, 6, 4, 4],
        'Q' => [2, 5, 5, 6, 3],
        'R' => [6, 5, 6, 5, 5],
        'S' => [3, 4, 2, 1, 6],
        'T' => [7, 2, 2, 2, 2],
        'U' => [5, 5, 5, 5, 7],
        'V' => [5, 5, 5, 5, 2],
        'W' => [5, 5, 7, 7, 5],
        'X' => [5, 5, 2, 5, 5],
        'Y' => [5, 5, 2, 2, 2],
        'Z' => [7, 1, 2, 4, 7],
        _ => [0; 5],
    }
}

fn put(img: &mut RgbImage, x: i64, y: i64, c: Rgb<u8>) {
    if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
        img.put_pixel(x as u32, y as u32, c);
    }
}

/// Writes `text` with its top-left corner at (x, y); returns the width drawn.
pub fn draw_text(img: &mut RgbImage, x: i64, y: i64, text: &str, c: Rgb<u8>) -> i64 {
    let advance = 4 * TEXT as i64;
    for (k, ch) in text.chars().enumerate() {
        for (row, bits) in glyph(ch).iter().enumerate() {
            for col in 0..3 {
                if bits & (4 >> col) != 0 {
                    for dy in 0..TEXT as i64 {
                        for dx in 0..TEXT as i64 {
                            put(img, x + k as i64 * advance + col * TEXT as i64 + dx, y + row as i64 * TEXT as i64 + dy, c);
                        }
                    }
                }
            }
        }
    }
    text.chars().count() as i64 * advance
}

/// A 2-pixel-thick line (Bresenham, drawn twice offset by one row).
fn line(img: &mut RgbImage, (x0, y0): (i64, i64), (x1, y1): (i64, i64), c: Rgb<u8>) {
    let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
    let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
    let (mut x, mut y, mut err) = (x0, y0, dx + dy);
    loop {
        put(img, x, y, c);
        put(img, x, y + 1, c);
        if x == x1 && y == y1 {
            break;
        }
        let e2 = 2 * err;
        if e2 >= dy {
            err += dy;
            x += sx;
        }
        if e2 <= dx {
            err += dx;
            y += sy;
        }
    }
}

/// Short numbers for axis labels: 3 significant digits.
pub fn label(v: f64) -> String {
    let a = v.abs();
    if a != 0.0 && !(0.01..10_000.0).contains(&a) {
        format!("{v:.1e}").replace("e", "E")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// Data range (min, max) of all finite points of a panel, or `None` without any.
fn data_range(panel: &Panel, pick: impl Fn(&(f64, f64)) -> f64) -> Option<(f64, f64)> {
    let vals = panel.series.iter().flat_map(|s| s.points.iter().map(&pick)).filter(|v| v.is_finite());
    let (lo, hi) = vals.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    (lo <= hi).then_some((lo, hi))
}

/// The axis range: the data range with 5 % room on each side, widened when flat.
fn padded((lo, hi): (f64, f64)) -> (f64, f64) {
    let pad = if hi > lo { 0.05 * (hi - lo) } else { lo.abs().max(1.0) * 0.05 };
    (lo - pad, hi + pad)
}

/// The pixel row/column of a value inside the plot area of panel `p` (origin top-left).
pub fn to_pixel(v: (f64, f64), xr: (f64, f64), yr: (f64, f64), p: usize) -> (i64, i64) {
    let (pw, ph) = ((WIDTH - LEFT - RIGHT) as f64, (PANEL_H - TOP - BOTTOM) as f64);
    let x = LEFT as f64 + (v.0 - xr.0) / (xr.1 - xr.0).max(f64::MIN_POSITIVE) * pw;
    let y = (p as u32 * PANEL_H + TOP) as f64 + (1.0 - (v.1 - yr.0) / (yr.1 - yr.0).max(f64::MIN_POSITIVE)) * ph;
    (x.round() as i64, y.round() as i64)
}

/// Panels stacked vertically, `WIDTH` pixels wide.
pub fn plot_panels(panels: &[Panel]) -> RgbImage {
    let mut img = RgbImage::from_pixel(WIDTH, PANEL_H * panels.len().max(1) as u32, Rgb([255, 255, 255]));
    for (p, panel) in panels.iter().enumerate() {
        let top = (p as u32 * PANEL_H) as i64;
        draw_text(&mut img, 10, top + 8, &panel.title, INK);
        let mut x = 10;
        for (k, s) in panel.series.iter().enumerate() {
            let c = PALETTE[k % PALETTE.len()];
            for d in 0..8 {
                line(&mut img, (x + d, top + 30), (x + d, top + 36), c);
            }
            x += 12 + draw_text(&mut img, x + 12, top + 28, &s.name, INK) + 20;
        }
        let (Some(xd), Some(yd)) = (data_range(panel, |p| p.0), data_range(panel, |p| p.1)) else {
            draw_text(&mut img, LEFT as i64, top + TOP as i64 + 40, "NO DATA YET", INK);
            continue;
        };
        let (xr, yr) = (padded(xd), padded(yd));
        // Frame, light lines at the data's extremes, and their values as labels.
        let (x0, y0) = to_pixel((xr.0, yr.1), xr, yr, p);
        let (x1, y1) = to_pixel((xr.1, yr.0), xr, yr, p);
        let (xlo, ylo) = to_pixel((xd.0, yd.0), xr, yr, p);
        let (xhi, yhi) = to_pixel((xd.1, yd.1), xr, yr, p);
        for y in [ylo, yhi] {
            line(&mut img, (x0, y), (x1, y), GRID);
        }
        for (a, b) in [((x0, y0), (x1, y0)), ((x0, y1), (x1, y1)), ((x0, y0), (x0, y1)), ((x1, y0), (x1, y1))] {
            line(&mut img, a, b, INK);
        }
        let chars = |s: &str| s.chars().count() as i64 * 4 * TEXT as i64;
        let mut ylabels = vec![(yd.1, yhi - 5)];
        if yd.1 > yd.0 {
            ylabels.push((yd.0, ylo - 5));
        }
        for (v, y) in ylabels {
            let s = label(v);
            draw_text(&mut img, LEFT as i64 - 6 - chars(&s), y, &s, INK);
        }
        let mut xlabels = vec![(xd.0, xlo)];
        if xd.1 > xd.0 {
            xlabels.push((xd.1, xhi));
        }
        for (v, x) in xlabels {
            let s = label(v);
            draw_text(&mut img, (x - chars(&s) / 2).clamp(0, WIDTH as i64 - chars(&s)), y1 + 8, &s, INK);
        }
        for (k, s) in panel.series.iter().enumerate() {
            let c = PALETTE[k % PALETTE.len()];
            let pts: Vec<(i64, i64)> = s.points.iter().filter(|v| v.0.is_finite() && v.1.is_finite()).map(|&v| to_pixel(v, xr, yr, p)).collect();
            for w in pts.windows(2) {
                line(&mut img, w[0], w[1], c);
            }
            for &(x, y) in &pts {
                for d in -2..=2 {
                    line(&mut img, (x - 2, y + d), (x + 2, y + d), c);
                }
            }
        }
    }
    img
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glyphs_draw_their_pixels() {
        let mut img = RgbImage::from_pixel(20, 20, Rgb([255, 255, 255]));
        let w = draw_text(&mut img, 0, 0, "1", INK);
        assert_eq!(w, 8);
        // "1" = rows 010 / 110 / 010 / 010 / 111, each glyph pixel 2×2.
        let on = |x: u32, y: u32| img.get_pixel(x, y) == &INK;
        assert!(on(2, 0) && on(3, 1) && !on(0, 0) && !on(4, 0));
        assert!(on(0, 2) && on(2, 2) && !on(4, 2));
        assert!(on(0, 8) && on(2, 8) && on(4, 8) && on(5, 9));
        assert!(!on(6, 0) && !on(0, 10));
    }

    #[test]
    fn a_line_runs_from_corner_to_corner_of_its_panel() {
        let panel = Panel { title: "T".into(), series: vec![Series { name: "A".into(), points: vec![(0.0, 0.0), (10.0, 1.0)] }] };
        let img = plot_panels(&[panel.clone(), panel]);
        assert_eq!((img.width(), img.height()), (WIDTH, 2 * PANEL_H));
        let (xr, yr) = ((-0.5, 10.5), (-0.05, 1.05));
        for p in 0..2 {
            for v in [(0.0, 0.0), (10.0, 1.0)] {
                let (x, y) = to_pixel(v, xr, yr, p);
                assert_eq!(img.get_pixel(x as u32, y as u32), &PALETTE[0], "panel {p}, point {v:?}");
            }
            // Halfway, the line passes within a pixel of the exact position.
            let (x, y) = to_pixel((5.0, 0.5), xr, yr, p);
            assert!((y - 1..=y + 1).any(|y| img.get_pixel(x as u32, y as u32) == &PALETTE[0]), "panel {p}, midpoint");
            // Above the line at mid-x there is background.
            let (x, y) = to_pixel((5.0, 0.9), xr, yr, p);
            assert_eq!(img.get_pixel(x as u32, y as u32), &Rgb([255, 255, 255]));
        }
    }

    #[test]
    fn labels_are_short() {
        assert_eq!(label(3.4012), "3.401");
        assert_eq!(label(52.8), "52.8");
        assert_eq!(label(1234.0), "1234");
        assert_eq!(label(0.00012), "1.2E-4");
        assert_eq!(label(0.0), "0.000");
    }
}
