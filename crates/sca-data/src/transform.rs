//! Deterministic image transforms, each usable alone: crop + resize (antialiased bilinear,
//! as Pillow's `resize`), flip, the four colour-jitter operations, greyscale, Gaussian blur
//! and normalisation. Random parameters are drawn elsewhere (`augment`); here every
//! function takes its parameters explicitly, so each can be checked by hand on tiny images.
//!
//! Working format: [`Planar`], three f32 planes in [0, 1]; the 8-bit source is converted
//! while resampling, so the colour work runs on the (small) crop, never on the full image.

use image::RgbImage;

/// Compile a function twice, for the baseline CPU and with AVX2, and pick at run time.
/// Only the vector width changes: no fused multiply-adds are formed (Rust does not contract
/// floating-point operations), so both versions give bit-identical results.
macro_rules! simd_dispatch {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$m])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn inner($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    inner($($arg),*)
                }
                if !BASELINE_ONLY.load(std::sync::atomic::Ordering::Relaxed) && std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU has just been checked to support AVX2.
                    return unsafe { avx2($($arg),*) };
                }
            }
            inner($($arg),*)
        }
    };
}

thread_local! {
    /// The blur's intermediate image, kept per thread between calls.
    static BLUR_SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

static BASELINE_ONLY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Use only the baseline (non-AVX2) versions of the transforms, process-wide: for checking
/// that both give the same bits, and for timing comparisons.
pub fn force_baseline(on: bool) {
    BASELINE_ONLY.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Greyscale weights of ITU-R 601-2 luma, as Pillow's `convert("L")` and torchvision.
pub const LUMA: [f32; 3] = [0.299, 0.587, 0.114];

/// Three colour planes `[r | g | b]`, each `height × width`, values in [0, 1].
#[derive(Clone, Debug, PartialEq)]
pub struct Planar {
    pub width: usize,
    pub height: usize,
    pub data: Vec<f32>,
}

impl Planar {
    pub fn new(width: usize, height: usize) -> Planar {
        Planar { width, height, data: vec![0.0; 3 * width * height] }
    }

    /// Exact conversion from 8 bits (value / 255).
    pub fn from_rgb(img: &RgbImage) -> Planar {
        let (w, h) = (img.width() as usize, img.height() as usize);
        let mut p = Planar::new(w, h);
        for (i, px) in img.pixels().enumerate() {
            for c in 0..3 {
                p.data[c * w * h + i] = px[c] as f32 / 255.0;
            }
        }
        p
    }

    /// Round to 8 bits (values clamped to [0, 1] first).
    pub fn to_rgb(&self) -> RgbImage {
        let hw = self.width * self.height;
        RgbImage::from_fn(self.width as u32, self.height as u32, |x, y| {
            let i = y as usize * self.width + x as usize;
            image::Rgb(std::array::from_fn(|c| (self.data[c * hw + i].clamp(0.0, 1.0) * 255.0).round() as u8))
        })
    }

    pub fn pixel(&self, x: usize, y: usize) -> [f32; 3] {
        let hw = self.width * self.height;
        let i = y * self.width + x;
        [self.data[i], self.data[hw + i], self.data[2 * hw + i]]
    }

    fn planes_mut(&mut self) -> (&mut [f32], &mut [f32], &mut [f32]) {
        let hw = self.width * self.height;
        let (r, rest) = self.data.split_at_mut(hw);
        let (g, b) = rest.split_at_mut(hw);
        (r, g, b)
    }
}

/// A source rectangle in pixels of the source image (may be fractional).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CropRect {
    pub x: f32,
    pub y: f32,
    pub w: f32,
    pub h: f32,
}

/// Per-output-pixel filter taps along one axis.
struct Taps {
    start: Vec<usize>,
    len: Vec<usize>,
    stride: usize,
    weights: Vec<f32>,
}

/// Pillow's antialiased bilinear coefficients (`ImagingResample`): a triangle filter whose
/// support widens with the downscale factor. Taps may use source pixels in `[lo, hi)`.
fn taps(x0: f64, span: f64, out_len: usize, lo: usize, hi: usize, gain: f32) -> Taps {
    let scale = span / out_len as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale;
    let stride = (support.ceil() as usize) * 2 + 2;
    let mut t = Taps { start: vec![0; out_len], len: vec![0; out_len], stride, weights: vec![0.0; out_len * stride] };
    for xx in 0..out_len {
        let center = x0 + (xx as f64 + 0.5) * scale;
        let mut xmin = ((center - support + 0.5).floor().max(lo as f64)) as usize;
        let mut xmax = ((center + support + 0.5).floor().min(hi as f64)) as usize;
        if xmax <= xmin {
            // A degenerate rectangle: fall back to the nearest pixel.
            xmin = (center.floor() as usize).clamp(lo, hi - 1);
            xmax = xmin + 1;
        }
        let n = (xmax - xmin).min(stride);
        let tri = |k: usize| (1.0 - (((xmin + k) as f64 - center + 0.5) / filterscale).abs()).max(0.0);
        let total: f64 = (0..n).map(tri).sum();
        let w = &mut t.weights[xx * stride..xx * stride + n];
        for (k, wk) in w.iter_mut().enumerate() {
            // An all-zero window (rect far thinner than a pixel) averages instead.
            let v = if total > 0.0 { tri(k) / total } else { 1.0 / n as f64 };
            *wk = v as f32 * gain;
        }
        t.start[xx] = xmin;
        t.len[xx] = n;
    }
    t
}

/// Crop `rect` out of `img`, resize it to `out_w × out_h` and optionally mirror it, in one
/// pass. Filter taps stay inside the rectangle rounded outwards (as crop-then-resize).
pub fn resized_crop(img: &RgbImage, rect: CropRect, out_w: usize, out_h: usize, flip: bool) -> Planar {
    let mut out = Planar::new(0, 0);
    resized_crop_into(img, rect, out_w, out_h, flip, &mut out);
    out
}

/// `resized_crop` into a reused buffer (its old contents do not matter).
pub fn resized_crop_into(img: &RgbImage, rect: CropRect, out_w: usize, out_h: usize, flip: bool, out: &mut Planar) {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let x_lo = (rect.x.floor().max(0.0) as usize).min(w - 1);
    let y_lo = (rect.y.floor().max(0.0) as usize).min(h - 1);
    let x_hi = ((rect.x + rect.w).ceil() as usize).clamp(x_lo + 1, w);
    let y_hi = ((rect.y + rect.h).ceil() as usize).clamp(y_lo + 1, h);
    resample_into(img, rect, [x_lo, y_lo, x_hi, y_hi], out_w, out_h, flip, out)
}

/// Resize the part `rect` of `img` to `out_w × out_h`, with filter taps allowed anywhere in
/// `bounds = [x0, y0, x1, y1)`. Resizing a whole image and then cropping it is this with
/// `bounds` = the whole image (see `EvalTransform`).
pub fn resample(img: &RgbImage, rect: CropRect, bounds: [usize; 4], out_w: usize, out_h: usize, flip: bool) -> Planar {
    let mut out = Planar::new(0, 0);
    resample_into(img, rect, bounds, out_w, out_h, flip, &mut out);
    out
}

simd_dispatch! {
/// `resample` into a reused buffer (its old contents do not matter: every value is written).
pub fn resample_into(img: &RgbImage, rect: CropRect, bounds: [usize; 4], out_w: usize, out_h: usize, flip: bool, out: &mut Planar) {
    let w = img.width() as usize;
    let src = img.as_raw();
    let mut hx = taps(rect.x as f64, rect.w as f64, out_w, bounds[0], bounds[2], 1.0);
    let vy = taps(rect.y as f64, rect.h as f64, out_h, bounds[1], bounds[3], 1.0 / 255.0);
    if flip {
        hx.start.reverse();
        hx.len.reverse();
        let s = hx.stride;
        let mut rev = vec![0.0; hx.weights.len()];
        for xx in 0..out_w {
            rev[xx * s..(xx + 1) * s].copy_from_slice(&hx.weights[(out_w - 1 - xx) * s..(out_w - xx) * s]);
        }
        hx.weights = rev;
    }
    let col_lo = *hx.start.iter().min().unwrap();
    let col_hi = hx.start.iter().zip(&hx.len).map(|(s, l)| s + l).max().unwrap();

    // Vertical pass first, one output row at a time over the needed columns: whole-row
    // multiply-adds from 8 bits (these vectorise); downscaling shrinks the row count before
    // the horizontal pass, whose gathers do not vectorise.
    let mut row = vec![0.0f32; (col_hi - col_lo) * 3];
    let hw = out_w * out_h;
    out.width = out_w;
    out.height = out_h;
    out.data.resize(3 * hw, 0.0);
    for yy in 0..out_h {
        row.iter_mut().for_each(|a| *a = 0.0);
        let s = vy.start[yy];
        for k in 0..vy.len[yy] {
            let wk = vy.weights[yy * vy.stride + k];
            let y = s + k;
            let src_row = &src[(y * w + col_lo) * 3..(y * w + col_hi) * 3];
            for (a, &v) in row.iter_mut().zip(src_row) {
                *a += wk * v as f32;
            }
        }
        let (r_out, rest) = out.data.split_at_mut(hw);
        let (g_out, b_out) = rest.split_at_mut(hw);
        let base = yy * out_w;
        for xx in 0..out_w {
            let s = hx.start[xx] - col_lo;
            let n = hx.len[xx];
            let ws = &hx.weights[xx * hx.stride..xx * hx.stride + n];
            let px = &row[s * 3..(s + n) * 3];
            let (mut r, mut g, mut b) = (0.0f32, 0.0f32, 0.0f32);
            for (k, &wk) in ws.iter().enumerate() {
                r += wk * px[3 * k];
                g += wk * px[3 * k + 1];
                b += wk * px[3 * k + 2];
            }
            r_out[base + xx] = r.clamp(0.0, 1.0);
            g_out[base + xx] = g.clamp(0.0, 1.0);
            b_out[base + xx] = b.clamp(0.0, 1.0);
        }
    }
}
}

/// Mirror left-right in place.
pub fn hflip(p: &mut Planar) {
    let w = p.width;
    for row in p.data.chunks_mut(w) {
        row.reverse();
    }
}

simd_dispatch! {
/// torchvision `adjust_brightness`: scale, clamp.
pub fn adjust_brightness(p: &mut Planar, factor: f32) {
    p.data.iter_mut().for_each(|v| *v = (*v * factor).clamp(0.0, 1.0));
}
}

simd_dispatch! {
/// torchvision `adjust_contrast`: blend with the mean luma of the whole image.
pub fn adjust_contrast(p: &mut Planar, factor: f32) {
    let hw = p.width * p.height;
    let (r, g, b) = p.planes_mut();
    let mut sum = 0.0f64;
    for i in 0..hw {
        sum += (LUMA[0] * r[i] + LUMA[1] * g[i] + LUMA[2] * b[i]) as f64;
    }
    let mean = (sum / hw.max(1) as f64) as f32;
    let offset = (1.0 - factor) * mean;
    p.data.iter_mut().for_each(|v| *v = (factor * *v + offset).clamp(0.0, 1.0));
}
}

simd_dispatch! {
/// torchvision `adjust_saturation`: blend each pixel with its own luma.
pub fn adjust_saturation(p: &mut Planar, factor: f32) {
    let (r, g, b) = p.planes_mut();
    for i in 0..r.len() {
        let l = LUMA[0] * r[i] + LUMA[1] * g[i] + LUMA[2] * b[i];
        let off = (1.0 - factor) * l;
        r[i] = (factor * r[i] + off).clamp(0.0, 1.0);
        g[i] = (factor * g[i] + off).clamp(0.0, 1.0);
        b[i] = (factor * b[i] + off).clamp(0.0, 1.0);
    }
}
}

simd_dispatch! {
/// torchvision `adjust_hue`: rotate the HSV hue by `shift` (a fraction of a turn, |shift| <= 0.5).
///
/// Computed without a full HSV round trip: a hue rotation keeps each pixel's maximum (V)
/// and the chroma (max - min) and only moves the channels along the hue hexagon, so each
/// output channel is `max - chroma·clamp(min(k, 4-k), 0, 1)` with `k = (n + h·6) mod 6`
/// (n = 5, 3, 1 for r, g, b) — equal to `hsv_to_rgb(rgb_to_hsv(..) + shift)`, branch-free.
pub fn adjust_hue(p: &mut Planar, shift: f32) {
    // +12 keeps every sum positive so truncation is a floor.
    let shift6 = shift * 6.0 + 12.0;
    let (r, g, b) = p.planes_mut();
    for ((r, g), b) in r.iter_mut().zip(g.iter_mut()).zip(b.iter_mut()) {
        let (rv, gv, bv) = (*r, *g, *b);
        let maxc = rv.max(gv).max(bv);
        let minc = rv.min(gv).min(bv);
        let cr = maxc - minc;
        let inv = if cr > 0.0 { 1.0 / cr } else { 0.0 };
        // Hue in units of 60°, as torchvision's `_rgb2hsv` (in [-1, 5)).
        let h6 = if maxc == rv {
            (gv - bv) * inv
        } else if maxc == gv {
            2.0 + (bv - rv) * inv
        } else {
            4.0 + (rv - gv) * inv
        };
        let h = h6 + shift6;
        let channel = |n: f32| {
            let k = h + n;
            let k = k - 6.0 * ((k * (1.0 / 6.0)) as i32 as f32);
            maxc - cr * k.min(4.0 - k).clamp(0.0, 1.0)
        };
        *r = channel(5.0);
        *g = channel(3.0);
        *b = channel(1.0);
    }
}
}

/// As torchvision's `_rgb2hsv` on float tensors; h, s, v in [0, 1].
#[inline]
pub fn rgb_to_hsv(r: f32, g: f32, b: f32) -> (f32, f32, f32) {
    let maxc = r.max(g).max(b);
    let minc = r.min(g).min(b);
    let cr = maxc - minc;
    if cr == 0.0 {
        return (0.0, 0.0, maxc);
    }
    let s = cr / maxc;
    let rc = (maxc - r) / cr;
    let gc = (maxc - g) / cr;
    let bc = (maxc - b) / cr;
    let h = if maxc == r {
        bc - gc
    } else if maxc == g {
        2.0 + rc - bc
    } else {
        4.0 + gc - rc
    };
    ((h / 6.0 + 1.0).rem_euclid(1.0), s, maxc)
}

/// As torchvision's `_hsv2rgb`.
#[inline]
pub fn hsv_to_rgb(h: f32, s: f32, v: f32) -> (f32, f32, f32) {
    let h6 = h * 6.0;
    let i = h6.floor();
    let f = h6 - i;
    let p = (v * (1.0 - s)).clamp(0.0, 1.0);
    let q = (v * (1.0 - s * f)).clamp(0.0, 1.0);
    let t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0);
    match (i as i32).rem_euclid(6) {
        0 => (v, t, p),
        1 => (q, v, p),
        2 => (p, v, t),
        3 => (p, q, v),
        4 => (t, p, v),
        _ => (v, p, q),
    }
}

simd_dispatch! {
/// Replace every pixel by its luma on all three channels.
pub fn to_greyscale(p: &mut Planar) {
    let (r, g, b) = p.planes_mut();
    for i in 0..r.len() {
        let l = LUMA[0] * r[i] + LUMA[1] * g[i] + LUMA[2] * b[i];
        r[i] = l;
        g[i] = l;
        b[i] = l;
    }
}
}

/// Odd blur kernel size for a crop of `size` pixels, scaled from `kernel_at_224` at 224 px
/// (23 in SimCLR/SwAV), at least 3.
pub fn blur_kernel_size(size: usize, kernel_at_224: usize) -> usize {
    let k = (kernel_at_224 as f64 * size as f64 / 224.0).round() as usize;
    let k = if k.is_multiple_of(2) { k + 1 } else { k };
    k.max(3)
}

/// Normalised 1-D Gaussian of `kernel_size` taps (torchvision `_get_gaussian_kernel1d`).
/// Tail taps below 1e-6 of the total are then dropped and the rest renormalised: the
/// result differs from the full kernel by under 1e-5 and small sigmas cost far less.
pub fn gaussian_kernel(kernel_size: usize, sigma: f32) -> Vec<f32> {
    let half = (kernel_size / 2) as i64;
    let mut k: Vec<f64> = (-half..=half).map(|x| (-0.5 * (x as f64 / sigma as f64).powi(2)).exp()).collect();
    let total: f64 = k.iter().sum();
    k.iter_mut().for_each(|v| *v /= total);
    let mut cut = 0;
    while cut < half as usize && k[cut] < 1e-6 {
        cut += 1;
    }
    let k = &k[cut..k.len() - cut];
    let total: f64 = k.iter().sum();
    k.iter().map(|v| (v / total) as f32).collect()
}

/// Index into `0..n` with reflection at the edges (`-1 -> 1`, `n -> n-2`), torchvision's padding.
#[inline]
fn reflect(i: i64, n: usize) -> usize {
    if n == 1 {
        return 0;
    }
    let period = 2 * (n as i64 - 1);
    let m = i.rem_euclid(period);
    (if m >= n as i64 { period - m } else { m }) as usize
}

simd_dispatch! {
/// Separable Gaussian blur with reflect padding (torchvision `gaussian_blur` on tensors).
pub fn gaussian_blur(p: &mut Planar, kernel_size: usize, sigma: f32) {
    let k = gaussian_kernel(kernel_size, sigma);
    let r = k.len() / 2;
    let (w, h) = (p.width, p.height);
    let mut padded = vec![0.0f32; w + 2 * r];
    // Every row of the intermediate is written before it is read: no need to clear it.
    let mut tmp = BLUR_SCRATCH.with(|t| std::mem::take(&mut *t.borrow_mut()));
    tmp.resize(w * h, 0.0);
    for plane in p.data.chunks_mut(w * h) {
        // Horizontal: pad each row, then one multiply-add sweep per tap.
        for y in 0..h {
            let row = &plane[y * w..(y + 1) * w];
            // Reflect only the margins; the middle is a plain copy.
            if w > r {
                padded[r..r + w].copy_from_slice(row);
                for j in 0..r {
                    padded[j] = row[reflect(j as i64 - r as i64, w)];
                    padded[r + w + j] = row[reflect((w + j) as i64, w)];
                }
            } else {
                for (j, v) in padded.iter_mut().enumerate() {
                    *v = row[reflect(j as i64 - r as i64, w)];
                }
            }
            let out = &mut tmp[y * w..(y + 1) * w];
            out.iter_mut().for_each(|o| *o = 0.0);
            for (t, &wt) in k.iter().enumerate() {
                for (o, &v) in out.iter_mut().zip(&padded[t..t + w]) {
                    *o += wt * v;
                }
            }
        }
        // Vertical: whole rows.
        for y in 0..h {
            let out = &mut plane[y * w..(y + 1) * w];
            out.iter_mut().for_each(|o| *o = 0.0);
            for (t, &wt) in k.iter().enumerate() {
                let sy = reflect(y as i64 + t as i64 - r as i64, h);
                for (o, &v) in out.iter_mut().zip(&tmp[sy * w..(sy + 1) * w]) {
                    *o += wt * v;
                }
            }
        }
    }
    BLUR_SCRATCH.with(|t| *t.borrow_mut() = tmp);
}
}

simd_dispatch! {
/// Write `(v - mean) / std` per channel into `out` (CHW, `3 × height × width`).
pub fn normalise_into(p: &Planar, mean: [f32; 3], std: [f32; 3], out: &mut [f32]) {
    let hw = p.width * p.height;
    assert_eq!(out.len(), 3 * hw, "output buffer does not match a 3×{}×{} image", p.height, p.width);
    for c in 0..3 {
        let inv = 1.0 / std[c];
        for (o, &v) in out[c * hw..(c + 1) * hw].iter_mut().zip(&p.data[c * hw..(c + 1) * hw]) {
            *o = (v - mean[c]) * inv;
        }
    }
}
}

/// Inverse of `normalise_into` for one CHW image: back to 8-bit RGB (for previews).
pub fn denormalise_to_rgb(chw: &[f32], width: usize, height: usize, mean: [f32; 3], std: [f32; 3]) -> RgbImage {
    let hw = width * height;
    assert_eq!(chw.len(), 3 * hw, "buffer does not hold a 3×{height}×{width} image");
    RgbImage::from_fn(width as u32, height as u32, |x, y| {
        let i = y as usize * width + x as usize;
        image::Rgb(std::array::from_fn(|c| ((chw[c * hw + i] * std[c] + mean[c]).clamp(0.0, 1.0) * 255.0).round() as u8))
    })
}
