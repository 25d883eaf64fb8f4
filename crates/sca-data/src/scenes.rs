//! Built-in cluttered scenes: the embedded default dataset, generated from a seed.
//!
//! Each image shows one labelled object on clutter. Its class fixes a shape, a texture and
//! a colour palette (table `CLASSES`); the object sits at a random position with a random
//! size whose tight bounding box covers 5-40% of the image, on a background of a colour
//! gradient, smooth noise, random blobs and lines, and 1-3 distractor objects whose shapes
//! and textures belong to no class. The object is drawn last, so it is never occluded.
//!
//! A sample is a pure function of (seed, split, index): generation is lazy, thread-safe and
//! reproducible. Labels are `index % classes` (balanced). The object's box is drawn from
//! its own stream, so `bbox()` costs a scan of the box, not a whole render.

use std::path::Path;

use image::RgbImage;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::dataset::Progress;
use crate::rng::{self, domain, splitmix64};
use crate::transform::hsv_to_rgb;
use crate::{BBox, DataError, Dataset, Sample};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    Circle,
    Square,
    Triangle,
    Cross,
    Ring,
    Star,
    Diamond,
    Hexagon,
    Ellipse,
    Ell,
    // Distractors only.
    Crescent,
    HalfDisc,
    Chevron,
    Trapezoid,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Texture {
    HStripes,
    Checker,
    Dots,
    Solid,
    Diagonal,
    Gradient,
    VStripes,
    Grid,
    Rings,
    Zigzag,
    // Distractors only.
    Speckle,
    Wavy,
    Quadrants,
}

struct ClassDef {
    name: &'static str,
    shape: Shape,
    texture: Texture,
    /// Palette hue, fraction of a turn.
    hue: f32,
    /// Width / height of the object's box before jitter.
    aspect: f32,
}

const CLASSES: [ClassDef; 10] = [
    ClassDef { name: "circle-hstripes", shape: Shape::Circle, texture: Texture::HStripes, hue: 0.0, aspect: 1.0 },
    ClassDef { name: "square-checker", shape: Shape::Square, texture: Texture::Checker, hue: 0.1, aspect: 1.0 },
    ClassDef { name: "triangle-dots", shape: Shape::Triangle, texture: Texture::Dots, hue: 0.2, aspect: 1.0 },
    ClassDef { name: "cross-solid", shape: Shape::Cross, texture: Texture::Solid, hue: 0.3, aspect: 1.0 },
    ClassDef { name: "ring-diagonal", shape: Shape::Ring, texture: Texture::Diagonal, hue: 0.4, aspect: 1.0 },
    ClassDef { name: "star-gradient", shape: Shape::Star, texture: Texture::Gradient, hue: 0.5, aspect: 1.0 },
    ClassDef { name: "diamond-vstripes", shape: Shape::Diamond, texture: Texture::VStripes, hue: 0.6, aspect: 0.8 },
    ClassDef { name: "hexagon-grid", shape: Shape::Hexagon, texture: Texture::Grid, hue: 0.7, aspect: 1.15 },
    ClassDef { name: "ellipse-rings", shape: Shape::Ellipse, texture: Texture::Rings, hue: 0.8, aspect: 1.8 },
    ClassDef { name: "lshape-zigzag", shape: Shape::Ell, texture: Texture::Zigzag, hue: 0.9, aspect: 0.8 },
];

const DISTRACTOR_SHAPES: [Shape; 4] = [Shape::Crescent, Shape::HalfDisc, Shape::Chevron, Shape::Trapezoid];
const DISTRACTOR_TEXTURES: [Texture; 3] = [Texture::Speckle, Texture::Wavy, Texture::Quadrants];

pub const MAX_CLASSES: usize = CLASSES.len();

/// Per-channel mean and std of the default scenes (64 px, 10 classes), measured over
/// 2,000 training images; a test keeps them in step with the generator.
pub const MEAN: [f32; 3] = [0.4372, 0.4321, 0.4296];
pub const STD: [f32; 3] = [0.1640, 0.1668, 0.1636];

/// Names of the first `classes` built-in classes.
pub fn class_names(classes: usize) -> Vec<String> {
    CLASSES.iter().take(classes).map(|c| c.name.to_string()).collect()
}

#[inline]
fn frac(x: f32) -> f32 {
    x - x.floor()
}

/// Whether box coordinates (u, v) in [-1, 1]² lie inside the shape (each shape spans its box).
#[inline]
fn inside(shape: Shape, u: f32, v: f32) -> bool {
    let r2 = u * u + v * v;
    match shape {
        Shape::Circle | Shape::Ellipse => r2 <= 1.0,
        Shape::Square => true,
        Shape::Triangle => 2.0 * u.abs() <= v + 1.0,
        Shape::Cross => u.abs() <= 0.34 || v.abs() <= 0.34,
        Shape::Ring => (0.3..=1.0).contains(&r2),
        Shape::Star => {
            // Five points, one up; the box is stretched so the star touches all four sides.
            let x = u * 0.951;
            let y = -1.0 + (v + 1.0) * 0.9045;
            let r = (x * x + y * y).sqrt();
            let sector = std::f32::consts::TAU / 5.0;
            // Angle from the nearest tip, folded to [0, 36°].
            let a = ((y.atan2(x) + std::f32::consts::FRAC_PI_2 + sector / 2.0).rem_euclid(sector) - sector / 2.0).abs();
            let (qx, qy) = (r * a.cos(), r * a.sin());
            // Inside the edge from the tip (1, 0) to the inner corner 0.4·(cos 36°, sin 36°).
            0.6764 * qy + 0.2351 * qx <= 0.2351
        }
        Shape::Diamond => u.abs() + v.abs() <= 1.0,
        Shape::Hexagon => u.abs() + 0.5 * v.abs() <= 1.0,
        Shape::Ell => u <= -0.3 || v >= 0.4,
        Shape::Crescent => r2 <= 1.0 && (u - 0.55) * (u - 0.55) + v * v > 0.6,
        Shape::HalfDisc => r2 <= 1.0 && v >= 0.0,
        Shape::Chevron => {
            let d = u + 0.6 - v.abs();
            (0.0..=0.75).contains(&d)
        }
        Shape::Trapezoid => u.abs() <= 0.45 + 0.55 * (v + 1.0) / 2.0,
    }
}

/// Texture mix in [0, 1] between the two palette colours.
#[inline]
fn texture(t: Texture, u: f32, v: f32, phase: f32, noise: u64) -> f32 {
    let on = |b: bool| if b { 1.0 } else { 0.0 };
    match t {
        Texture::HStripes => on(frac(v * 2.25 + phase) < 0.5),
        Texture::VStripes => on(frac(u * 2.25 + phase) < 0.5),
        Texture::Checker => on(((u * 2.0 + phase).floor() as i32 + (v * 2.0 + phase).floor() as i32) & 1 == 0),
        Texture::Dots => {
            let a = frac(u * 2.5 + phase) - 0.5;
            let b = frac(v * 2.5 + phase) - 0.5;
            on(a * a + b * b < 0.09)
        }
        Texture::Solid => 0.0,
        Texture::Diagonal => on(frac((u + v) * 1.6 + phase) < 0.5),
        Texture::Gradient => (v + 1.0) * 0.5,
        Texture::Grid => on(frac(u * 2.0 + phase) < 0.22 || frac(v * 2.0 + phase) < 0.22),
        Texture::Rings => on(frac((u * u + v * v).sqrt() * 2.5 + phase) < 0.5),
        Texture::Zigzag => on(frac(v * 2.0 + (frac(u * 2.5) - 0.5).abs() * 1.2 + phase) < 0.5),
        Texture::Speckle => on(noise & 1 == 1),
        Texture::Wavy => 0.5 + 0.5 * (7.0 * u + 2.5 * (5.0 * v).sin() + phase * std::f32::consts::TAU).sin(),
        Texture::Quadrants => on((u - phase + 0.5) * (v + phase - 0.5) > 0.0),
    }
}

/// An object placed on the canvas: its box `[x0, x0+bw) × [y0, y0+bh)` in pixels.
#[derive(Clone, Copy, Debug)]
struct Placed {
    shape: Shape,
    texture: Texture,
    x0: usize,
    y0: usize,
    bw: usize,
    bh: usize,
    a: [f32; 3],
    b: [f32; 3],
    phase: f32,
}

impl Placed {
    /// Box coordinates of pixel (x, y) (its centre).
    #[inline]
    fn uv(&self, x: usize, y: usize) -> (f32, f32) {
        let u = ((x - self.x0) as f32 + 0.5) / self.bw as f32 * 2.0 - 1.0;
        let v = ((y - self.y0) as f32 + 0.5) / self.bh as f32 * 2.0 - 1.0;
        (u, v)
    }

    /// Tight box of the covered pixels.
    fn tight_bbox(&self) -> Option<BBox> {
        let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0, 0);
        for y in self.y0..self.y0 + self.bh {
            for x in self.x0..self.x0 + self.bw {
                let (u, v) = self.uv(x, y);
                if inside(self.shape, u, v) {
                    x0 = x0.min(x);
                    y0 = y0.min(y);
                    x1 = x1.max(x + 1);
                    y1 = y1.max(y + 1);
                }
            }
        }
        (x1 > 0).then_some(BBox { x0: x0 as f32, y0: y0 as f32, x1: x1 as f32, y1: y1 as f32 })
    }
}

fn hsv(h: f32, s: f32, v: f32) -> [f32; 3] {
    let (r, g, b) = hsv_to_rgb(h.rem_euclid(1.0), s, v);
    [r, g, b]
}

fn random_colour(rng: &mut ChaCha8Rng, sat: (f32, f32), val: (f32, f32)) -> [f32; 3] {
    hsv(rng.gen(), rng.gen_range(sat.0..sat.1), rng.gen_range(val.0..val.1))
}

/// Place a box covering `area` of a `w × h` image with the given aspect, at a random position.
fn place(w: usize, h: usize, area: f32, aspect: f32, rng: &mut ChaCha8Rng) -> (usize, usize, usize, usize) {
    let total = (w * h) as f32 * area;
    let bw = ((total * aspect).sqrt().ceil() as usize).clamp(3.min(w), w);
    let bh = ((total / aspect).sqrt().ceil() as usize).clamp(3.min(h), h);
    let x0 = rng.gen_range(0..=w - bw);
    let y0 = rng.gen_range(0..=h - bh);
    (x0, y0, bw, bh)
}

/// The labelled object of a scene and its tight box (area share in [0.05, 0.40]).
fn labelled_object(w: usize, h: usize, label: usize, rng: &mut ChaCha8Rng) -> (Placed, BBox) {
    let class = &CLASSES[label];
    let hue = class.hue + rng.gen_range(-0.03..0.03);
    let a = hsv(hue, rng.gen_range(0.6..0.95), rng.gen_range(0.75..1.0));
    let b = hsv(hue + rng.gen_range(-0.03..0.03), rng.gen_range(0.5..0.9), rng.gen_range(0.12..0.4));
    let phase = rng.gen();
    let mut last = None;
    // The tight box of some shapes is a pixel short of the placed box: retry until it fits.
    for _ in 0..16 {
        let area = rng.gen_range(0.05..0.40);
        let aspect = class.aspect * rng.gen_range(0.85f32.ln()..1.18f32.ln()).exp();
        let (x0, y0, bw, bh) = place(w, h, area, aspect, rng);
        let obj = Placed { shape: class.shape, texture: class.texture, x0, y0, bw, bh, a, b, phase };
        if let Some(bb) = obj.tight_bbox() {
            let share = bb.area() / (w * h) as f32;
            if (0.05..=0.40).contains(&share) {
                return (obj, bb);
            }
            last = Some((obj, bb));
        }
    }
    last.expect("a placed object covers at least one pixel")
}

/// RGB f32 canvas, interleaved.
struct Canvas {
    w: usize,
    h: usize,
    px: Vec<f32>,
}

impl Canvas {
    #[inline]
    fn blend(&mut self, x: usize, y: usize, c: [f32; 3], alpha: f32) {
        let i = 3 * (y * self.w + x);
        for (p, c) in self.px[i..i + 3].iter_mut().zip(c) {
            *p += alpha * (c - *p);
        }
    }

    /// Colour gradient plus smooth value noise on a `g × g` grid.
    fn background(&mut self, rng: &mut ChaCha8Rng) {
        let c0 = random_colour(rng, (0.05, 0.35), (0.3, 0.7));
        let c1 = random_colour(rng, (0.05, 0.35), (0.3, 0.7));
        let angle: f32 = rng.gen_range(0.0..std::f32::consts::TAU);
        let (ca, sa) = (angle.cos(), angle.sin());
        const G: usize = 5;
        let grid: Vec<f32> = (0..G * G * 3).map(|_| rng.gen_range(-0.15..0.15)).collect();
        let (w, h) = (self.w, self.h);
        for y in 0..h {
            let fy = y as f32 / h as f32;
            let gy = fy * (G - 1) as f32;
            let iy = (gy as usize).min(G - 2);
            let ty = gy - iy as f32;
            for x in 0..w {
                let fx = x as f32 / w as f32;
                let t = ((fx - 0.5) * ca + (fy - 0.5) * sa + 0.5).clamp(0.0, 1.0);
                let gx = fx * (G - 1) as f32;
                let ix = (gx as usize).min(G - 2);
                let tx = gx - ix as f32;
                let i = 3 * (y * w + x);
                for k in 0..3 {
                    let g00 = grid[(iy * G + ix) * 3 + k];
                    let g01 = grid[(iy * G + ix + 1) * 3 + k];
                    let g10 = grid[((iy + 1) * G + ix) * 3 + k];
                    let g11 = grid[((iy + 1) * G + ix + 1) * 3 + k];
                    let n = (g00 * (1.0 - tx) + g01 * tx) * (1.0 - ty) + (g10 * (1.0 - tx) + g11 * tx) * ty;
                    self.px[i + k] = c0[k] + t * (c1[k] - c0[k]) + n;
                }
            }
        }
    }

    fn blob(&mut self, rng: &mut ChaCha8Rng) {
        let s = self.w.min(self.h) as f32;
        let cx = rng.gen_range(0.0..self.w as f32);
        let cy = rng.gen_range(0.0..self.h as f32);
        let rx = s * rng.gen_range(0.05..0.2);
        let ry = s * rng.gen_range(0.05..0.2);
        let c = random_colour(rng, (0.1, 0.6), (0.2, 0.85));
        let alpha = rng.gen_range(0.4..0.85);
        let (x0, x1) = (((cx - rx).max(0.0)) as usize, ((cx + rx).ceil() as usize).min(self.w));
        let (y0, y1) = (((cy - ry).max(0.0)) as usize, ((cy + ry).ceil() as usize).min(self.h));
        for y in y0..y1 {
            let dy = (y as f32 + 0.5 - cy) / ry;
            for x in x0..x1 {
                let dx = (x as f32 + 0.5 - cx) / rx;
                if dx * dx + dy * dy <= 1.0 {
                    self.blend(x, y, c, alpha);
                }
            }
        }
    }

    fn line(&mut self, rng: &mut ChaCha8Rng) {
        let (w, h) = (self.w as f32, self.h as f32);
        let (ax, ay) = (rng.gen_range(0.0..w), rng.gen_range(0.0..h));
        let (bx, by) = (rng.gen_range(0.0..w), rng.gen_range(0.0..h));
        let half = rng.gen_range(0.4..1.0) * w.min(h) / 64.0;
        let c = random_colour(rng, (0.0, 0.7), (0.1, 0.95));
        let alpha = rng.gen_range(0.5..0.9);
        let (dx, dy) = (bx - ax, by - ay);
        let len2 = (dx * dx + dy * dy).max(1e-6);
        let x0 = (ax.min(bx) - half).max(0.0) as usize;
        let x1 = ((ax.max(bx) + half).ceil() as usize).min(self.w);
        let y0 = (ay.min(by) - half).max(0.0) as usize;
        let y1 = ((ay.max(by) + half).ceil() as usize).min(self.h);
        for y in y0..y1 {
            let py = y as f32 + 0.5;
            for x in x0..x1 {
                let px = x as f32 + 0.5;
                let t = (((px - ax) * dx + (py - ay) * dy) / len2).clamp(0.0, 1.0);
                let (ex, ey) = (px - ax - t * dx, py - ay - t * dy);
                if ex * ex + ey * ey <= half * half {
                    self.blend(x, y, c, alpha);
                }
            }
        }
    }

    fn object(&mut self, o: &Placed, key: u64) {
        for y in o.y0..o.y0 + o.bh {
            for x in o.x0..o.x0 + o.bw {
                let (u, v) = o.uv(x, y);
                if inside(o.shape, u, v) {
                    let noise = splitmix64(key ^ ((y * self.w + x) as u64));
                    let m = texture(o.texture, u, v, o.phase, noise);
                    let c = [0, 1, 2].map(|k| o.a[k] + m * (o.b[k] - o.a[k]));
                    self.blend(x, y, c, 1.0);
                }
            }
        }
    }

    /// Add per-pixel noise and round to 8 bits.
    fn finish(self, key: u64, amplitude: f32) -> RgbImage {
        let mut out = Vec::with_capacity(self.px.len());
        for (i, chunk) in self.px.chunks_exact(3).enumerate() {
            let n = splitmix64(key.wrapping_add(i as u64));
            for (k, &v) in chunk.iter().enumerate() {
                let r = ((n >> (16 * k)) & 0xFFFF) as f32 / 65535.0 - 0.5;
                out.push(((v + 2.0 * amplitude * r).clamp(0.0, 1.0) * 255.0 + 0.5) as u8);
            }
        }
        RgbImage::from_raw(self.w as u32, self.h as u32, out).expect("canvas size")
    }
}

/// Render one scene of `width × height` pixels with an object of class `label` (< 10);
/// returns the image and the object's tight box.
pub fn render_scene(width: usize, height: usize, label: usize, key: u64) -> (RgbImage, BBox) {
    let mut rng = rng::rng_from_key(key);
    let mut obj_rng = rng::rng_from_key(rng::key(&[key, 1]));
    let (obj, bbox) = labelled_object(width, height, label, &mut obj_rng);
    let mut c = Canvas { w: width, h: height, px: vec![0.0; width * height * 3] };
    c.background(&mut rng);
    for _ in 0..rng.gen_range(3..=6) {
        c.blob(&mut rng);
    }
    for _ in 0..rng.gen_range(2..=4) {
        c.line(&mut rng);
    }
    for _ in 0..rng.gen_range(1..=3) {
        let shape = DISTRACTOR_SHAPES[rng.gen_range(0..DISTRACTOR_SHAPES.len())];
        let tex = DISTRACTOR_TEXTURES[rng.gen_range(0..DISTRACTOR_TEXTURES.len())];
        let a = random_colour(&mut rng, (0.2, 0.8), (0.3, 0.95));
        let b = random_colour(&mut rng, (0.2, 0.8), (0.1, 0.6));
        let area = rng.gen_range(0.03..0.12);
        let aspect = rng.gen_range(0.7..1.4);
        let (x0, y0, bw, bh) = place(width, height, area, aspect, &mut rng);
        let d = Placed { shape, texture: tex, x0, y0, bw, bh, a, b, phase: rng.gen() };
        c.object(&d, rng.gen());
    }
    c.object(&obj, rng.gen());
    let amplitude = 0.04;
    (c.finish(rng.gen(), amplitude), bbox)
}

/// Write `n` scenes of `width × height` as JPEG files `scene_00000.jpg`, ... into `dir`
/// (created if needed), in parallel: realistic stand-ins for benchmark photographs.
pub fn write_jpeg_scenes(
    dir: &Path,
    n: usize,
    width: usize,
    height: usize,
    quality: u8,
    progress: Option<Progress>,
) -> Result<(), DataError> {
    use rayon::prelude::*;
    std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    (0..n).into_par_iter().try_for_each(|i| {
        let (img, _) = render_scene(width, height, i % MAX_CLASSES, rng::key(&[domain::SCENE, 0xBE7C, i as u64]));
        let path = dir.join(format!("scene_{i:05}.jpg"));
        let file = std::fs::File::create(&path).map_err(|e| DataError::io(&path, e))?;
        let mut w = std::io::BufWriter::new(file);
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut w, quality)
            .encode_image(&img)
            .map_err(|e| DataError::io(&path, std::io::Error::other(e)))?;
        if let Some(p) = &progress {
            p();
        }
        Ok(())
    })
}

/// Which half of the built-in dataset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

/// The built-in scenes of one split.
#[derive(Clone, Debug)]
pub struct Scenes {
    image_size: usize,
    classes: usize,
    len: usize,
    seed: u64,
    split: Split,
}

impl Scenes {
    pub fn new(image_size: usize, classes: usize, len: usize, seed: u64, split: Split) -> Result<Scenes, DataError> {
        if classes == 0 || classes > MAX_CLASSES {
            return Err(DataError::Config(format!("built-in scenes have 1 to {MAX_CLASSES} classes, not {classes}")));
        }
        if image_size < 16 {
            return Err(DataError::Config(format!("built-in scenes need at least 16 px, not {image_size}")));
        }
        Ok(Scenes { image_size, classes, len, seed, split })
    }

    fn key(&self, index: usize) -> u64 {
        rng::key(&[domain::SCENE, self.seed, self.split as u64, index as u64])
    }

    pub fn image_size(&self) -> usize {
        self.image_size
    }
}

impl Dataset for Scenes {
    fn len(&self) -> usize {
        self.len
    }
    fn num_classes(&self) -> usize {
        self.classes
    }
    fn class_names(&self) -> Vec<String> {
        class_names(self.classes)
    }
    fn label(&self, index: usize) -> usize {
        index % self.classes
    }
    fn load(&self, index: usize) -> Result<Sample, DataError> {
        if index >= self.len {
            return Err(DataError::Index { index, len: self.len });
        }
        let label = self.label(index);
        let (image, bbox) = render_scene(self.image_size, self.image_size, label, self.key(index));
        Ok(Sample { image, label, bbox: Some(bbox) })
    }
    fn bbox(&self, index: usize) -> Option<BBox> {
        let mut obj_rng = rng::rng_from_key(rng::key(&[self.key(index), 1]));
        Some(labelled_object(self.image_size, self.image_size, self.label(index), &mut obj_rng).1)
    }
}
