//! Tests of sca-data, one module per source module. Hand-computed expectations on tiny
//! inputs; anything slow runs only with SCA_SLOW_TESTS=1.

mod augment;
mod fashion_mnist;
mod image_folder;
mod loader;
mod scenes;
mod spec;
mod subset;
mod transform;

use image::{Rgb, RgbImage};

/// A one-row image whose pixels are grey with the given values.
pub fn grey_row(values: &[u8]) -> RgbImage {
    RgbImage::from_fn(values.len() as u32, 1, |x, _| Rgb([values[x as usize]; 3]))
}

/// One-pixel-high planar image from RGB triples in [0, 1].
pub fn planar(pixels: &[[f32; 3]]) -> sca_data::transform::Planar {
    let n = pixels.len();
    let mut p = sca_data::transform::Planar::new(n, 1);
    for (i, px) in pixels.iter().enumerate() {
        for (c, &v) in px.iter().enumerate() {
            p.data[c * n + i] = v;
        }
    }
    p
}

pub fn pixels(p: &sca_data::transform::Planar) -> Vec<[f32; 3]> {
    (0..p.height).flat_map(|y| (0..p.width).map(move |x| (x, y))).map(|(x, y)| p.pixel(x, y)).collect()
}

#[track_caller]
pub fn assert_close(got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "length: got {got:?}, want {want:?}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol, "element {i}: got {g}, want {w} (all: got {got:?}, want {want:?})");
    }
}

pub fn slow_tests() -> bool {
    std::env::var("SCA_SLOW_TESTS").map(|v| v == "1").unwrap_or(false)
}
