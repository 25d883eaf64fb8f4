//! Preview grids of augmented views: one row per source image, showing the original (with
//! its box, if known), every view of the multi-crop, and its positives.

use std::sync::Arc;

use image::{Rgb, RgbImage};

use crate::augment::AugmentConfig;
use crate::loader::{same_label_positives, train_batches, LoaderConfig};
use crate::transform::{denormalise_to_rgb, resample, CropRect};
use crate::{labels, BBox, DataError, Dataset};

const BACKGROUND: Rgb<u8> = Rgb([40, 40, 40]);
const SEPARATOR: Rgb<u8> = Rgb([200, 200, 200]);
const BOX: Rgb<u8> = Rgb([255, 220, 0]);

/// The grid for the first training batch of `n_sources` images (epoch 0 of `seed`), with
/// `positives` positives per source drawn from the true labels. Views are upscaled (nearest,
/// by a whole factor) to nearly fill cells of at least 96 px.
pub fn preview_grid(
    ds: Arc<dyn Dataset>,
    aug: &AugmentConfig,
    n_sources: usize,
    positives: usize,
    seed: u64,
) -> Result<RgbImage, DataError> {
    let n_sources = n_sources.min(ds.len());
    let cfg = LoaderConfig { batch_size: n_sources, workers: 0, prefetch: 1, seed, ..Default::default() };
    let pos = (positives > 0).then(|| same_label_positives(Arc::new(labels(&*ds)), positives));
    let batch = train_batches(ds.clone(), aug, &cfg, 0, 0, pos)
        .next()
        .ok_or_else(|| DataError::Config("the dataset has fewer images than one preview batch".into()))??;

    let cell0 = aug.crops.iter().map(|c| c.size).max().unwrap_or(1);
    let zoom = 96usize.div_ceil(cell0).max(1);
    let cell = cell0 * zoom;
    let pad = 4;
    let n_views = batch.crops.len();
    // Columns: original | views | positives, with a separator gap before views and positives.
    let cols = 1 + n_views + positives;
    let width = pad + cols * (cell + pad) + 2 * pad;
    let height = pad + n_sources * (cell + pad);
    let mut grid = RgbImage::from_pixel(width as u32, height as u32, BACKGROUND);
    let col_x = |c: usize| pad + c * (cell + pad) + if c >= 1 { pad } else { 0 } + if c > n_views { pad } else { 0 };
    let (mean, std) = (aug.mean, aug.std);

    for (row, &index) in batch.indices.iter().enumerate() {
        let y = pad + row * (cell + pad);
        let sample = ds.load(index)?;
        let thumb = fit(&sample.image, cell, sample.bbox);
        paste(&mut grid, &thumb, col_x(0), y, cell);
        for (v, views) in batch.crops.iter().enumerate() {
            let s = views.shape[2];
            let img = zoomed(&denormalise_to_rgb(views.image(row), s, s, mean, std), cell / s);
            paste(&mut grid, &img, col_x(1 + v), y, cell);
        }
        if let Some(p) = &batch.positives {
            let s = p.shape[2];
            for j in 0..positives {
                let img = zoomed(&denormalise_to_rgb(p.image(row * positives + j), s, s, mean, std), cell / s);
                paste(&mut grid, &img, col_x(1 + n_views + j), y, cell);
            }
        }
    }
    // Thin separators in the middle of the double gaps between column groups.
    let mut seps = vec![col_x(1) - pad];
    if positives > 0 {
        seps.push(col_x(1 + n_views) - pad);
    }
    for x in seps {
        for yy in 0..height {
            grid.put_pixel(x as u32, yy as u32, SEPARATOR);
        }
    }
    Ok(grid)
}

fn zoomed(img: &RgbImage, zoom: usize) -> RgbImage {
    if zoom == 1 {
        return img.clone();
    }
    image::imageops::resize(img, img.width() * zoom as u32, img.height() * zoom as u32, image::imageops::FilterType::Nearest)
}

/// Fit an image inside `cell × cell` keeping its aspect, with its box drawn.
fn fit(img: &RgbImage, cell: usize, bbox: Option<BBox>) -> RgbImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let s = cell as f32 / w.max(h) as f32;
    let (ow, oh) = (((w as f32 * s).round() as usize).max(1), ((h as f32 * s).round() as usize).max(1));
    let mut out = resample(img, CropRect { x: 0.0, y: 0.0, w: w as f32, h: h as f32 }, [0, 0, w, h], ow, oh, false).to_rgb();
    if let Some(b) = bbox {
        let x0 = ((b.x0 * s) as u32).min(ow as u32 - 1);
        let y0 = ((b.y0 * s) as u32).min(oh as u32 - 1);
        let x1 = ((b.x1 * s).ceil() as u32).clamp(x0 + 1, ow as u32) - 1;
        let y1 = ((b.y1 * s).ceil() as u32).clamp(y0 + 1, oh as u32) - 1;
        for x in x0..=x1 {
            out.put_pixel(x, y0, BOX);
            out.put_pixel(x, y1, BOX);
        }
        for y in y0..=y1 {
            out.put_pixel(x0, y, BOX);
            out.put_pixel(x1, y, BOX);
        }
    }
    out
}

/// Paste `img` centred in the cell whose top-left corner is (x, y).
fn paste(grid: &mut RgbImage, img: &RgbImage, x: usize, y: usize, cell: usize) {
    let ox = x + (cell.saturating_sub(img.width() as usize)) / 2;
    let oy = y + (cell.saturating_sub(img.height() as usize)) / 2;
    image::imageops::replace(grid, img, ox as i64, oy as i64);
}
