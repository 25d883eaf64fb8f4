//! The SwAV/SimCLR augmentation pipeline and the evaluation transform.
//!
//! One view = RandomResizedCrop(scale range of its crop kind) → horizontal flip (p 0.5) →
//! colour jitter (brightness/contrast/saturation 0.8·s, hue 0.2·s, random order, p 0.8) →
//! greyscale (p 0.2) → Gaussian blur (p 0.5, kernel 23 at 224 px scaled with the crop,
//! sigma 0.1-2.0) → normalise. Its random parameters are drawn from one ChaCha8 stream
//! seeded by a key, in that order, so a view is a pure function of (image, crop kind, key).

use image::RgbImage;
use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::rng::rng_from_key;
use crate::transform::{self, CropRect, Planar};
use crate::{BBox, DataError};

/// ImageNet statistics (torchvision). The paper prints 0.228 for the red std; that is the
/// usual 0.229 mistyped.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// `count` crops of `size × size` pixels, each covering a random share of the image area in
/// `[min_scale, max_scale]`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CropSpec {
    pub count: usize,
    pub size: usize,
    pub min_scale: f32,
    pub max_scale: f32,
}

impl CropSpec {
    pub fn new(count: usize, size: usize, min_scale: f32, max_scale: f32) -> CropSpec {
        CropSpec { count, size, min_scale, max_scale }
    }
}

fn default_crops() -> Vec<CropSpec> {
    vec![CropSpec::new(2, 224, 0.14, 1.0), CropSpec::new(6, 96, 0.05, 0.14)]
}

/// Augmentation settings. Every field has the SwAV default, so `{}` is SwAV's 2×224 + 6×96.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AugmentConfig {
    /// Crop kinds in view order: views `0..crops[0].count` are of kind 0, and so on.
    pub crops: Vec<CropSpec>,
    /// Aspect-ratio range of RandomResizedCrop.
    pub ratio: [f32; 2],
    pub flip_p: f32,
    /// Colour-jitter strength `s`: the four amplitudes below are multiplied by it.
    pub jitter_strength: f32,
    pub jitter_p: f32,
    pub brightness: f32,
    pub contrast: f32,
    pub saturation: f32,
    pub hue: f32,
    pub grey_p: f32,
    pub blur_p: f32,
    /// Kernel size at 224 px; crops of other sizes scale it (odd, at least 3).
    pub blur_kernel_at_224: usize,
    pub blur_sigma: [f32; 2],
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Default for AugmentConfig {
    fn default() -> Self {
        AugmentConfig {
            crops: default_crops(),
            ratio: [3.0 / 4.0, 4.0 / 3.0],
            flip_p: 0.5,
            jitter_strength: 1.0,
            jitter_p: 0.8,
            brightness: 0.8,
            contrast: 0.8,
            saturation: 0.8,
            hue: 0.2,
            grey_p: 0.2,
            blur_p: 0.5,
            blur_kernel_at_224: 23,
            blur_sigma: [0.1, 2.0],
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
        }
    }
}

impl AugmentConfig {
    /// SwAV's multi-crop scaled to images of `size` pixels: 2×size (0.14-1) and
    /// 6×(size·96/224) (0.05-0.14).
    pub fn swav_scaled(size: usize, mean: [f32; 3], std: [f32; 3]) -> AugmentConfig {
        let small = ((size as f32 * 96.0 / 224.0).round() as usize).max(8);
        AugmentConfig {
            crops: vec![CropSpec::new(2, size, 0.14, 1.0), CropSpec::new(6, small, 0.05, 0.14)],
            mean,
            std,
            ..AugmentConfig::default()
        }
    }

    /// Total number of views (sum of the counts).
    pub fn num_views(&self) -> usize {
        self.crops.iter().map(|c| c.count).sum()
    }

    /// Crop kind of view `v`.
    pub fn crop_of_view(&self, v: usize) -> &CropSpec {
        let mut v = v;
        for c in &self.crops {
            if v < c.count {
                return c;
            }
            v -= c.count;
        }
        panic!("view index out of range: the config has {} views", self.num_views())
    }

    pub fn validate(&self) -> Result<(), DataError> {
        let bad = |m: String| Err(DataError::Config(m));
        if self.crops.is_empty() || self.num_views() == 0 {
            return bad("augmentation needs at least one crop".into());
        }
        for c in &self.crops {
            if c.size == 0 || !(0.0 < c.min_scale && c.min_scale <= c.max_scale && c.max_scale <= 1.0) {
                return bad(format!("crop {c:?}: size must be > 0 and 0 < min_scale <= max_scale <= 1"));
            }
        }
        if !(0.0 < self.ratio[0] && self.ratio[0] <= self.ratio[1]) {
            return bad(format!("ratio {:?} must satisfy 0 < min <= max", self.ratio));
        }
        for (name, p) in [("flip_p", self.flip_p), ("jitter_p", self.jitter_p), ("grey_p", self.grey_p), ("blur_p", self.blur_p)] {
            if !(0.0..=1.0).contains(&p) {
                return bad(format!("{name} = {p} is not a probability"));
            }
        }
        if self.hue * self.jitter_strength > 0.5 || self.hue < 0.0 {
            return bad(format!("hue amplitude {} × strength {} must lie in [0, 0.5]", self.hue, self.jitter_strength));
        }
        if !(0.0 < self.blur_sigma[0] && self.blur_sigma[0] <= self.blur_sigma[1]) {
            return bad(format!("blur_sigma {:?} must satisfy 0 < min <= max", self.blur_sigma));
        }
        if self.std.iter().any(|&s| s <= 0.0) {
            return bad(format!("std {:?} must be positive", self.std));
        }
        Ok(())
    }
}

/// The colour-jitter parameters of one view: the order of the four operations
/// (0 brightness, 1 contrast, 2 saturation, 3 hue) and their factors.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct JitterParams {
    pub order: [usize; 4],
    pub brightness: f32,
    pub contrast: f32,
    pub saturation: f32,
    pub hue: f32,
}

impl JitterParams {
    pub fn apply(&self, p: &mut Planar) {
        for &op in &self.order {
            match op {
                0 => transform::adjust_brightness(p, self.brightness),
                1 => transform::adjust_contrast(p, self.contrast),
                2 => transform::adjust_saturation(p, self.saturation),
                _ => transform::adjust_hue(p, self.hue),
            }
        }
    }
}

/// Everything random about one view.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ViewParams {
    pub crop: CropRect,
    pub flip: bool,
    pub jitter: Option<JitterParams>,
    pub grey: bool,
    pub blur_sigma: Option<f32>,
}

/// torchvision `RandomResizedCrop.get_params`: ten tries at a random area share and
/// log-uniform aspect ratio, else the largest centred crop within the ratio range.
pub fn random_resized_crop_params(width: usize, height: usize, scale: [f32; 2], ratio: [f32; 2], rng: &mut impl Rng) -> CropRect {
    let area = (width * height) as f64;
    let (lr0, lr1) = ((ratio[0] as f64).ln(), (ratio[1] as f64).ln());
    for _ in 0..10 {
        let target = area * uniform(rng, scale[0] as f64, scale[1] as f64);
        let aspect = uniform(rng, lr0, lr1).exp();
        let w = (target * aspect).sqrt().round() as usize;
        let h = (target / aspect).sqrt().round() as usize;
        if 0 < w && w <= width && 0 < h && h <= height {
            let y = rng.gen_range(0..=height - h);
            let x = rng.gen_range(0..=width - w);
            return CropRect { x: x as f32, y: y as f32, w: w as f32, h: h as f32 };
        }
    }
    let in_ratio = width as f64 / height as f64;
    let (w, h) = if in_ratio < ratio[0] as f64 {
        (width, ((width as f64 / ratio[0] as f64).round() as usize).clamp(1, height))
    } else if in_ratio > ratio[1] as f64 {
        (((height as f64 * ratio[1] as f64).round() as usize).clamp(1, width), height)
    } else {
        (width, height)
    };
    CropRect { x: ((width - w) / 2) as f32, y: ((height - h) / 2) as f32, w: w as f32, h: h as f32 }
}

/// Uniform in [lo, hi) (exactly `lo` when the range is empty).
fn uniform(rng: &mut impl Rng, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * rng.gen::<f64>()
}

/// Draw the parameters of one view of a `width × height` image.
pub fn sample_view_params(width: usize, height: usize, crop: &CropSpec, aug: &AugmentConfig, rng: &mut impl Rng) -> ViewParams {
    let crop_rect = random_resized_crop_params(width, height, [crop.min_scale, crop.max_scale], aug.ratio, rng);
    let flip = rng.gen::<f32>() < aug.flip_p;
    let jitter = (rng.gen::<f32>() < aug.jitter_p).then(|| {
        let s = aug.jitter_strength as f64;
        let mut order = [0, 1, 2, 3];
        order.shuffle(rng);
        let mut factor = |amp: f32| uniform(rng, (1.0 - amp as f64 * s).max(0.0), 1.0 + amp as f64 * s) as f32;
        let brightness = factor(aug.brightness);
        let contrast = factor(aug.contrast);
        let saturation = factor(aug.saturation);
        let h = aug.hue as f64 * s;
        let hue = uniform(rng, -h, h) as f32;
        JitterParams { order, brightness, contrast, saturation, hue }
    });
    let grey = rng.gen::<f32>() < aug.grey_p;
    let blur_sigma = (rng.gen::<f32>() < aug.blur_p).then(|| uniform(rng, aug.blur_sigma[0] as f64, aug.blur_sigma[1] as f64) as f32);
    ViewParams { crop: crop_rect, flip, jitter, grey, blur_sigma }
}

/// Apply given view parameters: the augmented crop, in [0, 1], before normalisation.
pub fn apply_view(img: &RgbImage, params: &ViewParams, size: usize, aug: &AugmentConfig) -> Planar {
    let mut p = Planar::new(0, 0);
    apply_view_into(img, params, size, aug, &mut p);
    p
}

/// `apply_view` into a reused buffer.
pub fn apply_view_into(img: &RgbImage, params: &ViewParams, size: usize, aug: &AugmentConfig, p: &mut Planar) {
    transform::resized_crop_into(img, params.crop, size, size, params.flip, p);
    if let Some(j) = &params.jitter {
        j.apply(p);
    }
    if params.grey {
        transform::to_greyscale(p);
    }
    if let Some(sigma) = params.blur_sigma {
        transform::gaussian_blur(p, transform::blur_kernel_size(size, aug.blur_kernel_at_224), sigma);
    }
}

thread_local! {
    /// The working crop of `augment_view`, kept per thread so views do not allocate.
    static VIEW_SCRATCH: std::cell::RefCell<Planar> = std::cell::RefCell::new(Planar::new(0, 0));
}

/// One augmented view, normalised, written as CHW into `out` (`3 × size × size`).
/// Returns the parameters used.
pub fn augment_view(img: &RgbImage, crop: &CropSpec, aug: &AugmentConfig, key: u64, out: &mut [f32]) -> ViewParams {
    let mut rng = rng_from_key(key);
    let params = sample_view_params(img.width() as usize, img.height() as usize, crop, aug, &mut rng);
    VIEW_SCRATCH.with(|s| {
        let mut p = s.borrow_mut();
        apply_view_into(img, &params, crop.size, aug, &mut p);
        transform::normalise_into(&p, aug.mean, aug.std, out);
    });
    params
}

/// Map a box through a crop of `rect` resized to `out_w × out_h` (and mirrored if `flip`),
/// clipped to the output; `None` when nothing of it remains.
pub fn map_bbox(b: &BBox, rect: CropRect, out_w: usize, out_h: usize, flip: bool) -> Option<BBox> {
    let sx = out_w as f32 / rect.w;
    let sy = out_h as f32 / rect.h;
    let mut x0 = ((b.x0 - rect.x) * sx).clamp(0.0, out_w as f32);
    let mut x1 = ((b.x1 - rect.x) * sx).clamp(0.0, out_w as f32);
    let y0 = ((b.y0 - rect.y) * sy).clamp(0.0, out_h as f32);
    let y1 = ((b.y1 - rect.y) * sy).clamp(0.0, out_h as f32);
    if flip {
        (x0, x1) = (out_w as f32 - x1, out_w as f32 - x0);
    }
    (x1 > x0 && y1 > y0).then_some(BBox { x0, y0, x1, y1 })
}

/// Evaluation transform: resize the shorter side to `resize`, centre-crop `crop × crop`,
/// normalise (torchvision `Resize(resize)` + `CenterCrop(crop)`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EvalTransform {
    pub resize: usize,
    pub crop: usize,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl EvalTransform {
    /// ImageNet evaluation: Resize(256) + CenterCrop(224).
    pub fn imagenet() -> EvalTransform {
        EvalTransform { resize: 256, crop: 224, mean: IMAGENET_MEAN, std: IMAGENET_STD }
    }

    /// Keep a dataset of `size`-pixel square images as it is (only normalise).
    pub fn identity(size: usize, mean: [f32; 3], std: [f32; 3]) -> EvalTransform {
        EvalTransform { resize: size, crop: size, mean, std }
    }

    pub fn validate(&self) -> Result<(), DataError> {
        if self.crop == 0 || self.crop > self.resize {
            return Err(DataError::Config(format!("eval crop {} must be in 1..={} (the resize)", self.crop, self.resize)));
        }
        Ok(())
    }

    /// Size of a `width × height` image after the resize step (torchvision rounding).
    pub fn resized_dims(&self, width: usize, height: usize) -> (usize, usize) {
        if width <= height {
            (self.resize, (self.resize as f64 * height as f64 / width as f64) as usize)
        } else {
            ((self.resize as f64 * width as f64 / height as f64) as usize, self.resize)
        }
    }

    /// The source rectangle that ends up in the output.
    pub fn source_rect(&self, width: usize, height: usize) -> CropRect {
        let (rw, rh) = self.resized_dims(width, height);
        // Python's round (ties to even), as torchvision's CenterCrop.
        let top = ((rh - self.crop) as f64 / 2.0).round_ties_even();
        let left = ((rw - self.crop) as f64 / 2.0).round_ties_even();
        let sx = width as f64 / rw as f64;
        let sy = height as f64 / rh as f64;
        CropRect { x: (left * sx) as f32, y: (top * sy) as f32, w: (self.crop as f64 * sx) as f32, h: (self.crop as f64 * sy) as f32 }
    }

    /// The transformed image before normalisation.
    pub fn apply_planar(&self, img: &RgbImage) -> Planar {
        let (w, h) = (img.width() as usize, img.height() as usize);
        transform::resample(img, self.source_rect(w, h), [0, 0, w, h], self.crop, self.crop, false)
    }

    /// Transformed and normalised, CHW into `out` (`3 × crop × crop`).
    pub fn apply(&self, img: &RgbImage, out: &mut [f32]) {
        transform::normalise_into(&self.apply_planar(img), self.mean, self.std, out);
    }

    /// A box of the source image in output pixels (clipped; `None` if cropped away).
    pub fn map_bbox(&self, b: &BBox, width: usize, height: usize) -> Option<BBox> {
        map_bbox(b, self.source_rect(width, height), self.crop, self.crop, false)
    }
}
