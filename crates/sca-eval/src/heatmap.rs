//! A PNG grid for reports: one row per image, three tiles per row —
//! the image (with its object box in green where known) | the CAM in a jet colour map
//! blended half-and-half over the image | the explanation map (CAM ⊙ image).

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use image::{Rgb, RgbImage};
use sca_data::BBox;

/// One row of the grid, in pixel space: planes `[r | g | b]` in [0, 1].
#[derive(Clone, Debug)]
pub struct HeatmapRow {
    pub width: usize,
    pub height: usize,
    pub image: Vec<f32>,
    /// `height × width` in [0, 1].
    pub cam: Vec<f32>,
    pub explanation: Vec<f32>,
    pub bbox: Option<BBox>,
}

/// Gap between tiles, in output pixels.
const GAP: u32 = 4;

/// The classic jet colour map: blue (0) → cyan → yellow → red (1).
pub fn jet(v: f32) -> [u8; 3] {
    let v = v.clamp(0.0, 1.0);
    let ch = |x: f32| ((1.5 - (4.0 * v - x).abs()).clamp(0.0, 1.0) * 255.0).round() as u8;
    [ch(3.0), ch(2.0), ch(1.0)]
}

fn to_u8(v: f32) -> u8 {
    (v.clamp(0.0, 1.0) * 255.0).round() as u8
}

/// Rows of a batch: `images` and `explanations` normalised `[N, 3, H, W]`, `cams` `[N, H, W]`.
pub fn heatmap_rows<B: Backend>(
    images: Tensor<B, 4>,
    cams: Tensor<B, 3>,
    explanations: Tensor<B, 4>,
    mean: [f32; 3],
    std: [f32; 3],
    bboxes: &[Option<BBox>],
) -> Vec<HeatmapRow> {
    let [n, _, h, w] = images.dims();
    let to_pixels = |x: Tensor<B, 4>| -> Vec<f32> {
        let device = x.device();
        let m = Tensor::<B, 1>::from_floats(mean, &device).reshape([1, 3, 1, 1]);
        let s = Tensor::<B, 1>::from_floats(std, &device).reshape([1, 3, 1, 1]);
        (x * s + m).into_data().convert::<f32>().to_vec().expect("f32 pixels")
    };
    let (img, exp) = (to_pixels(images), to_pixels(explanations));
    let cam: Vec<f32> = cams.into_data().convert::<f32>().to_vec().expect("f32 cams");
    let (p, q) = (3 * h * w, h * w);
    (0..n)
        .map(|i| HeatmapRow {
            width: w,
            height: h,
            image: img[i * p..(i + 1) * p].to_vec(),
            cam: cam[i * q..(i + 1) * q].to_vec(),
            explanation: exp[i * p..(i + 1) * p].to_vec(),
            bbox: bboxes.get(i).copied().flatten(),
        })
        .collect()
}

/// Integer upscaling so tiles are at least 128 pixels high.
pub fn tile_scale(height: usize) -> u32 {
    (128usize.div_ceil(height.max(1))).max(1) as u32
}

/// Draws the grid (white background, nearest-neighbour upscaling by [`tile_scale`]).
pub fn heatmap_grid(rows: &[HeatmapRow]) -> RgbImage {
    let Some(first) = rows.first() else {
        return RgbImage::new(1, 1);
    };
    let (w, h) = (first.width, first.height);
    let s = tile_scale(h);
    let (tw, th) = (w as u32 * s, h as u32 * s);
    let mut out = RgbImage::from_pixel(3 * tw + 4 * GAP, rows.len() as u32 * (th + GAP) + GAP, Rgb([255, 255, 255]));
    for (r, row) in rows.iter().enumerate() {
        assert_eq!((row.width, row.height), (w, h), "all rows share one size");
        let hw = w * h;
        let px = |planes: &[f32], i: usize| [planes[i], planes[hw + i], planes[2 * hw + i]];
        let y0 = GAP + r as u32 * (th + GAP);
        for y in 0..h {
            for x in 0..w {
                let i = y * w + x;
                let im = px(&row.image, i);
                let heat = jet(row.cam[i]);
                let blend: [u8; 3] = std::array::from_fn(|c| to_u8(0.5 * im[c] + 0.5 * heat[c] as f32 / 255.0));
                let ex = px(&row.explanation, i);
                let tiles = [im.map(to_u8), blend, ex.map(to_u8)];
                for (t, colour) in tiles.iter().enumerate() {
                    let x0 = GAP + t as u32 * (tw + GAP);
                    for dy in 0..s {
                        for dx in 0..s {
                            out.put_pixel(x0 + x as u32 * s + dx, y0 + y as u32 * s + dy, Rgb(*colour));
                        }
                    }
                }
            }
        }
        if let Some(b) = row.bbox {
            // The box outline (2 output pixels wide) on the image tile, in green.
            let clampx = |v: f32| ((v * s as f32).round() as i64).clamp(0, tw as i64 - 1) as u32;
            let clampy = |v: f32| ((v * s as f32).round() as i64).clamp(0, th as i64 - 1) as u32;
            let (bx0, bx1, by0, by1) = (clampx(b.x0), clampx(b.x1), clampy(b.y0), clampy(b.y1));
            let green = Rgb([0, 255, 0]);
            for x in bx0..=bx1 {
                for d in 0..2u32 {
                    out.put_pixel(GAP + x, y0 + (by0 + d).min(th - 1), green);
                    out.put_pixel(GAP + x, y0 + by1.saturating_sub(d), green);
                }
            }
            for y in by0..=by1 {
                for d in 0..2u32 {
                    out.put_pixel(GAP + (bx0 + d).min(tw - 1), y0 + y, green);
                    out.put_pixel(GAP + bx1.saturating_sub(d), y0 + y, green);
                }
            }
        }
    }
    out
}

/// PNG bytes of an image.
pub fn encode_png(img: &RgbImage) -> Vec<u8> {
    let mut bytes = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png).expect("encoding PNG in memory");
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jet_colours() {
        let check = |v: f32, expected: [u8; 3]| assert_eq!(jet(v), expected, "{v}");
        check(0.0, [0, 0, 128]);
        check(0.5, [128, 255, 128]);
        check(1.0, [128, 0, 0]);
        check(-3.0, [0, 0, 128]);
    }

    #[test]
    fn grid_layout_and_file() {
        // Two 8×8 rows: tiles scaled ×16 to 128 px, 4 px gaps → 3·128 + 4·4 by 2·(128 + 4) + 4.
        let row = |grey: f32, cam: f32, bbox| HeatmapRow {
            width: 8,
            height: 8,
            image: vec![grey; 3 * 64],
            cam: vec![cam; 64],
            explanation: vec![grey * cam; 3 * 64],
            bbox,
        };
        let rows = vec![row(0.4, 0.0, None), row(0.2, 1.0, Some(BBox { x0: 2.0, y0: 2.0, x1: 6.0, y1: 6.0 }))];
        let img = heatmap_grid(&rows);
        assert_eq!(img.dimensions(), (400, 268));
        // Row 0: image grey 0.4 (102); CAM tile ½·0.4 + ½·jet(0) = (51, 51, 51 + 64); explanation black.
        assert_eq!(img.get_pixel(4 + 10, 4 + 10).0, [102, 102, 102]);
        assert_eq!(img.get_pixel(4 + 132 + 10, 4 + 10).0, [51, 51, 115]);
        assert_eq!(img.get_pixel(4 + 264 + 10, 4 + 10).0, [0, 0, 0]);
        // Row 1 (y from 136): the box edge at x = 2·16 = 32 is green; inside it the image (0.2 → 51).
        assert_eq!(img.get_pixel(4 + 32, 136 + 64).0, [0, 255, 0]);
        assert_eq!(img.get_pixel(4 + 64, 136 + 64).0, [51, 51, 51]);
        // Gaps stay white.
        assert_eq!(img.get_pixel(4 + 128 + 1, 136 + 64).0, [255, 255, 255]);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("heatmaps.png");
        std::fs::write(&path, encode_png(&img)).unwrap();
        let back = image::open(&path).unwrap().to_rgb8();
        assert_eq!(back, img);
    }
}
