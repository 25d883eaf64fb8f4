//! Class activation maps (paper eq. 8) from the linear probe, explanation maps, Average
//! Drop / Average Increase, and localisation against object boxes.
//!
//! - CAM: `L^c = ReLU(Σ_j α^c_j A_j)` with `A` the last-stage activations `[D, h, w]` and
//!   `α^c` row `c` of the probe's weight (no bias). It is upsampled to the input size with
//!   bilinear interpolation (half-pixel centres, PyTorch's `align_corners=False`) and
//!   min-max normalised per image to [0, 1] (`(L − min) / (max − min + 1e-7)`, as
//!   pytorch-grad-cam; a constant map becomes all zeros).
//! - Explanation map: the batch arrives normalised, `x = (p − mean) / std`. We go back to
//!   pixels `p = x·std + mean` (in [0, 1]), multiply every channel by the CAM, and normalise
//!   again: `E = (L ⊙ p − mean) / std`. So the CAM masks the *image*, and black (p = 0) is
//!   what the masked-out parts become, as in Grad-CAM++ and Score-CAM.
//! - Average Drop = 100/N Σ max(0, Y − O)/Y, Average Increase = 100/N Σ 1[O > Y], with Y
//!   the softmax probability of class c on the image and O on its explanation map.
//! - Localisation: pointing game (the CAM's maximum, first in row-major order, lies inside
//!   the box) and the share of the normalised CAM's mass inside the box. A pixel (x, y) is
//!   inside when its centre (x + ½, y + ½) lies in [x0, x1) × [y0, y1).

use burn::tensor::activation::{relu, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use burn::tensor::{Int, Tensor, TensorData};
use sca_backbone::resnet::global_avg_pool;
use sca_backbone::ResNet;
use sca_data::BBox;
use serde::{Deserialize, Serialize};

use crate::head::LinearHead;

/// Eq. 8 for one class per image: `a` `[N, D, h, w]`, `weight` `[C, D]`, `classes[i]` the
/// class of image `i` → `[N, h, w]`, before upsampling and normalisation.
pub fn class_activation_maps<B: Backend>(a: Tensor<B, 4>, weight: Tensor<B, 2>, classes: &[usize]) -> Tensor<B, 3> {
    let [n, d, h, w] = a.dims();
    assert_eq!(classes.len(), n, "one class per image");
    let device = a.device();
    let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(classes.iter().map(|&c| c as i64).collect(), [n]), &device);
    let alpha = weight.select(0, idx).reshape([n, d, 1, 1]);
    relu((a * alpha).sum_dim(1).reshape([n, h, w]))
}

/// Bilinear upsampling to `height × width` (half-pixel centres) and per-map min-max
/// normalisation to [0, 1].
pub fn upsample_normalize<B: Backend>(cam: Tensor<B, 3>, height: usize, width: usize) -> Tensor<B, 3> {
    let [n, h, w] = cam.dims();
    let up = if (h, w) == (height, width) {
        cam
    } else {
        let opts = InterpolateOptions::new(InterpolateMode::Bilinear).with_align_corners(false);
        interpolate(cam.reshape([n, 1, h, w]), [height, width], opts).reshape([n, height, width])
    };
    let flat = up.reshape([n, height * width]);
    let min = flat.clone().min_dim(1);
    let max = flat.clone().max_dim(1);
    ((flat - min.clone()) / (max - min).add_scalar(1e-7)).reshape([n, height, width])
}

/// `E = (L ⊙ (x·std + mean) − mean) / std` for normalised images `x` `[N, 3, H, W]` and
/// maps `cam` `[N, H, W]` in [0, 1].
pub fn explanation_maps<B: Backend>(x: Tensor<B, 4>, cam: Tensor<B, 3>, mean: [f32; 3], std: [f32; 3]) -> Tensor<B, 4> {
    let [n, c, h, w] = x.dims();
    assert_eq!(c, 3, "RGB images");
    let device = x.device();
    let m = Tensor::<B, 1>::from_floats(mean, &device).reshape([1, 3, 1, 1]);
    let s = Tensor::<B, 1>::from_floats(std, &device).reshape([1, 3, 1, 1]);
    let pixels = x * s.clone() + m.clone();
    (pixels * cam.reshape([n, 1, h, w]) - m) / s
}

/// Average Drop in percent: `100/N Σ max(0, Y − O) / Y` (terms with Y = 0 count as 0).
pub fn average_drop(y: &[f32], o: &[f32]) -> f64 {
    assert_eq!(y.len(), o.len());
    if y.is_empty() {
        return 0.0;
    }
    let sum: f64 =
        y.iter().zip(o).map(|(&y, &o)| if y > 0.0 { (y as f64 - o as f64).max(0.0) / y as f64 } else { 0.0 }).sum();
    100.0 * sum / y.len() as f64
}

/// Average Increase in percent: `100/N Σ 1[O > Y]`.
pub fn average_increase(y: &[f32], o: &[f32]) -> f64 {
    assert_eq!(y.len(), o.len());
    if y.is_empty() {
        return 0.0;
    }
    100.0 * y.iter().zip(o).filter(|(y, o)| o > y).count() as f64 / y.len() as f64
}

fn inside(b: &BBox, x: usize, y: usize) -> bool {
    let (cx, cy) = (x as f32 + 0.5, y as f32 + 0.5);
    b.x0 <= cx && cx < b.x1 && b.y0 <= cy && cy < b.y1
}

/// Pointing game and energy share for one `width × height` map (row-major) and its box:
/// `(maximum inside the box, Σ_in L / Σ L)`; a map summing to 0 has energy 0.
pub fn localise(cam: &[f32], width: usize, height: usize, bbox: &BBox) -> (bool, f64) {
    assert_eq!(cam.len(), width * height);
    let mut best = 0;
    for (i, &v) in cam.iter().enumerate() {
        if v > cam[best] {
            best = i;
        }
    }
    let hit = inside(bbox, best % width, best / width);
    let (mut total, mut within) = (0.0f64, 0.0f64);
    for y in 0..height {
        for x in 0..width {
            let v = cam[y * width + x] as f64;
            total += v;
            if inside(bbox, x, y) {
                within += v;
            }
        }
    }
    (hit, if total > 0.0 { within / total } else { 0.0 })
}

/// Everything measured on one image.
#[derive(Clone, Debug, PartialEq)]
pub struct CamRow {
    /// Index of the image in the evaluated dataset.
    pub index: usize,
    /// Ground-truth class.
    pub class: usize,
    /// Softmax probability of the ground-truth class on the image (Y) and on its explanation map (O).
    pub y: f32,
    pub o: f32,
    /// Predicted class (argmax on the image) and the same pair for it.
    pub pred: usize,
    pub y_pred: f32,
    pub o_pred: f32,
    /// Pointing-game hit and energy share of the ground-truth CAM, where the image has a box.
    pub hit: Option<bool>,
    pub energy: Option<f64>,
}

/// The outputs of [`cam_batch`] besides the rows: normalised ground-truth CAMs `[N, H, W]`
/// and explanation maps `[N, 3, H, W]` (normalised like the input), for heatmaps.
pub struct CamBatch<B: Backend> {
    pub rows: Vec<CamRow>,
    pub cams: Tensor<B, 3>,
    pub explanations: Tensor<B, 4>,
}

fn probs_of<B: Backend>(logits: Tensor<B, 2>, classes: &[usize]) -> Vec<f32> {
    let c = logits.dims()[1];
    let p: Vec<f32> = softmax(logits, 1).into_data().convert::<f32>().to_vec().expect("f32 probabilities");
    classes.iter().enumerate().map(|(i, &k)| p[i * c + k]).collect()
}

/// One batch of the CAM protocol. `images` normalised `[N, 3, H, W]` with `mean`/`std`,
/// `indices`/`labels`/`bboxes` per image (boxes in the image's pixel coordinates). Run the
/// backbone on a non-autodiff backend (or `.valid()`): BatchNorm must use its running stats.
#[allow(clippy::too_many_arguments)]
pub fn cam_batch<B: Backend>(
    backbone: &ResNet<B>,
    head: &LinearHead<B>,
    images: Tensor<B, 4>,
    indices: &[usize],
    labels: &[usize],
    bboxes: &[Option<BBox>],
    mean: [f32; 3],
    std: [f32; 3],
) -> CamBatch<B> {
    let [n, _, h, w] = images.dims();
    assert!(indices.len() == n && labels.len() == n && bboxes.len() == n, "one index, label and box slot per image");
    let classify = |x: Tensor<B, 4>| {
        let a = backbone.forward_stages(x).c5;
        let logits = head.forward(global_avg_pool(a.clone()));
        (a, logits)
    };
    let (a, logits) = classify(images.clone());
    let preds: Vec<usize> = logits
        .clone()
        .argmax(1)
        .into_data()
        .convert::<i64>()
        .to_vec::<i64>()
        .expect("int argmax")
        .into_iter()
        .map(|v| v as usize)
        .collect();
    let y = probs_of(logits.clone(), labels);
    let y_pred = probs_of(logits, &preds);

    let weight = head.weight.val();
    let cams = upsample_normalize(class_activation_maps(a.clone(), weight.clone(), labels), h, w);
    let explanations = explanation_maps(images.clone(), cams.clone(), mean, std);
    let o = probs_of(classify(explanations.clone()).1, labels);

    // The predicted-class variant only needs new forwards where the prediction is wrong.
    let mut o_pred = o.clone();
    let wrong: Vec<usize> = (0..n).filter(|&i| preds[i] != labels[i]).collect();
    if !wrong.is_empty() {
        let device = images.device();
        let sel = Tensor::<B, 1, Int>::from_data(TensorData::new(wrong.iter().map(|&i| i as i64).collect(), [wrong.len()]), &device);
        let classes: Vec<usize> = wrong.iter().map(|&i| preds[i]).collect();
        let cam_p = upsample_normalize(class_activation_maps(a.select(0, sel.clone()), weight, &classes), h, w);
        let e_p = explanation_maps(images.select(0, sel), cam_p, mean, std);
        let o_p = probs_of(classify(e_p).1, &classes);
        for (j, &i) in wrong.iter().enumerate() {
            o_pred[i] = o_p[j];
        }
    }

    let host: Vec<f32> = if bboxes.iter().any(Option::is_some) {
        cams.clone().into_data().convert::<f32>().to_vec().expect("f32 cams")
    } else {
        Vec::new()
    };
    let rows = (0..n)
        .map(|i| {
            let loc = bboxes[i].as_ref().map(|b| localise(&host[i * h * w..(i + 1) * h * w], w, h, b));
            CamRow {
                index: indices[i],
                class: labels[i],
                y: y[i],
                o: o[i],
                pred: preds[i],
                y_pred: y_pred[i],
                o_pred: o_pred[i],
                hit: loc.map(|l| l.0),
                energy: loc.map(|l| l.1),
            }
        })
        .collect();
    CamBatch { rows, cams, explanations }
}

/// The summary written to `cam/metrics.json`; all figures in percent.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct CamMetrics {
    /// Average Drop / Increase for the ground-truth class.
    pub ad: f64,
    pub ai: f64,
    /// The same for the predicted class.
    pub ad_pred: f64,
    pub ai_pred: f64,
    /// Images evaluated.
    pub n: usize,
    /// Top-1 accuracy of the probe on these images (context for the predicted-class variant).
    pub top1: f64,
    /// Pointing-game accuracy and mean energy share inside the box, over the images with a
    /// box (`null` when none has one).
    pub pointing_game: Option<f64>,
    pub energy_in_box: Option<f64>,
    pub n_boxes: usize,
}

impl CamMetrics {
    pub fn from_rows(rows: &[CamRow]) -> CamMetrics {
        let col = |f: fn(&CamRow) -> f32| rows.iter().map(f).collect::<Vec<f32>>();
        let (y, o, yp, op) = (col(|r| r.y), col(|r| r.o), col(|r| r.y_pred), col(|r| r.o_pred));
        let n = rows.len();
        let boxed: Vec<&CamRow> = rows.iter().filter(|r| r.hit.is_some()).collect();
        let nb = boxed.len();
        let pct = |k: usize, n: usize| if n == 0 { 0.0 } else { 100.0 * k as f64 / n as f64 };
        CamMetrics {
            ad: average_drop(&y, &o),
            ai: average_increase(&y, &o),
            ad_pred: average_drop(&yp, &op),
            ai_pred: average_increase(&yp, &op),
            n,
            top1: pct(rows.iter().filter(|r| r.pred == r.class).count(), n),
            pointing_game: (nb > 0).then(|| pct(boxed.iter().filter(|r| r.hit == Some(true)).count(), nb)),
            energy_in_box: (nb > 0).then(|| 100.0 * boxed.iter().map(|r| r.energy.unwrap_or(0.0)).sum::<f64>() / nb as f64),
            n_boxes: nb,
        }
    }
}

/// The per-image CSV: header `index,class,Y,O`, one row per image (ground-truth class).
pub fn scores_csv(rows: &[CamRow]) -> String {
    let mut s = String::from("index,class,Y,O\n");
    for r in rows {
        s.push_str(&format!("{},{},{},{}\n", r.index, r.class, r.y, r.o));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use sca_backbone::{Arch, ResNetConfig};

    type B = Flex;

    fn t4(data: Vec<f32>, shape: [usize; 4]) -> Tensor<B, 4> {
        Tensor::from_data(TensorData::new(data, shape), &Default::default())
    }

    fn host<const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
        t.into_data().convert::<f32>().to_vec().unwrap()
    }

    fn close(a: &[f32], b: &[f32], tol: f32) {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= tol, "element {i}: {x} vs {y}\n{a:?}\n{b:?}");
        }
    }

    #[test]
    fn cam_of_known_head_on_known_map() {
        // A: channel 0 = [[1, 2], [3, 4]], channel 1 = [[4, 3], [2, 1]].
        let a = t4(vec![1.0, 2.0, 3.0, 4.0, 4.0, 3.0, 2.0, 1.0], [1, 2, 2, 2]);
        // Class 0: α = (1, −1) → [[−3, −1], [1, 3]] → ReLU. Class 1: α = (½, ½) → 2.5 everywhere.
        let w = Tensor::<B, 2>::from_floats([[1.0, -1.0], [0.5, 0.5]], &Default::default());
        let check = |class: usize, expected: [f32; 4]| {
            close(&host(class_activation_maps(a.clone(), w.clone(), &[class])), &expected, 1e-6);
        };
        check(0, [0.0, 0.0, 1.0, 3.0]);
        check(1, [2.5, 2.5, 2.5, 2.5]);
        // Two images in one batch, each with its own class.
        let a2 = Tensor::cat(vec![a.clone(), a.clone()], 0);
        close(&host(class_activation_maps(a2, w, &[1, 0])), &[2.5, 2.5, 2.5, 2.5, 0.0, 0.0, 1.0, 3.0], 1e-6);
    }

    #[test]
    fn upsampling_and_normalisation() {
        let check = |input: Vec<f32>, (h, w): (usize, usize), size: usize, expected: Vec<f32>| {
            let cam = Tensor::<B, 3>::from_data(TensorData::new(input, [1, h, w]), &Default::default());
            close(&host(upsample_normalize(cam, size, size)), &expected, 1e-5);
        };
        // 2×2 → 4×4 with half-pixel centres (PyTorch align_corners=False), then ÷ 3.
        let up = [0.0, 0.25, 0.75, 1.0, 0.5, 0.75, 1.25, 1.5, 1.5, 1.75, 2.25, 2.5, 2.0, 2.25, 2.75, 3.0];
        check(vec![0.0, 1.0, 2.0, 3.0], (2, 2), 4, up.iter().map(|v| v / 3.0).collect());
        // Same size: only min-max (min 2, max 6).
        check(vec![2.0, 4.0, 6.0, 3.0], (2, 2), 2, vec![0.0, 0.5, 1.0, 0.25]);
        // A constant map becomes zeros.
        check(vec![5.0; 4], (2, 2), 4, vec![0.0; 16]);
    }

    #[test]
    fn explanation_map_in_pixel_space() {
        // mean .5, std .25: the pixel 0.8 is x = 1.2. CAM 1 keeps it, ½ makes the pixel 0.4
        // (x = −0.4), 0 makes it black (x = −2).
        let x = t4(vec![1.2; 12], [1, 3, 2, 2]);
        let cam = Tensor::<B, 3>::from_floats([[[1.0, 0.5], [0.0, 0.25]]], &Default::default());
        let e = host(explanation_maps(x, cam, [0.5; 3], [0.25; 3]));
        close(&e, &[1.2, -0.4, -2.0, -1.2].repeat(3), 1e-5);
    }

    #[test]
    fn average_drop_and_increase() {
        let check = |y: &[f32], o: &[f32], ad: f64, ai: f64| {
            assert!((average_drop(y, o) - ad).abs() < 1e-4, "AD {y:?} {o:?}: {}", average_drop(y, o));
            assert!((average_increase(y, o) - ai).abs() < 1e-9, "AI {y:?} {o:?}");
        };
        check(&[0.5], &[0.5], 0.0, 0.0);
        check(&[0.5], &[0.0], 100.0, 0.0);
        check(&[0.5], &[0.9], 0.0, 100.0);
        check(&[0.8, 0.4], &[0.2, 0.6], 37.5, 50.0);
        check(&[0.5, 0.5, 0.5, 0.5], &[0.25, 0.5, 0.75, 0.0], 37.5, 25.0);
        check(&[], &[], 0.0, 0.0);
    }

    #[test]
    fn localisation() {
        let bb = |x0, y0, x1, y1| BBox { x0, y0, x1, y1 };
        // 4×4 map, maximum 9 at (x 2, y 1), total 9 + 1 + 2 = 12.
        let mut cam = vec![0.0f32; 16];
        cam[4 + 2] = 9.0; // row 1, column 2
        cam[0] = 1.0;
        cam[3 * 4 + 3] = 2.0;
        let check = |b: BBox, hit: bool, energy: f64| {
            let (h, e) = localise(&cam, 4, 4, &b);
            assert_eq!(h, hit, "{b:?}");
            assert!((e - energy).abs() < 1e-9, "{b:?}: {e}");
        };
        check(bb(1.0, 0.0, 3.0, 2.0), true, 0.75);
        check(bb(0.0, 0.0, 2.0, 2.0), false, 1.0 / 12.0);
        check(bb(0.0, 0.0, 4.0, 4.0), true, 1.0);
        // Fractional edges: pixel centres decide (x 2.5 ≥ 2.4 is in, 3.5 < 3.6 too).
        check(bb(2.4, 1.4, 3.6, 3.6), true, 11.0 / 12.0);
        assert_eq!(localise(&[0.0; 4], 2, 2, &bb(1.0, 1.0, 2.0, 2.0)), (false, 0.0));
    }

    #[test]
    fn metrics_from_rows() {
        let row = |index, class, y, o, pred, y_pred, o_pred, hit, energy| CamRow { index, class, y, o, pred, y_pred, o_pred, hit, energy };
        let rows = vec![
            row(0, 1, 0.5, 0.25, 1, 0.5, 0.25, Some(true), Some(0.8)),
            row(1, 0, 0.4, 0.6, 2, 0.5, 0.0, Some(false), Some(0.2)),
            row(2, 2, 0.8, 0.8, 2, 0.8, 0.8, None, None),
        ];
        let m = CamMetrics::from_rows(&rows);
        // AD: (0.5 + 0 + 0)/3; AI: 1/3; predicted: (0.5 + 1 + 0)/3 and 0.
        assert!((m.ad - 50.0 / 3.0).abs() < 1e-4 && (m.ai - 100.0 / 3.0).abs() < 1e-9, "{m:?}");
        assert!((m.ad_pred - 50.0).abs() < 1e-4 && m.ai_pred == 0.0, "{m:?}");
        assert!((m.top1 - 200.0 / 3.0).abs() < 1e-9 && m.n == 3 && m.n_boxes == 2, "{m:?}");
        assert_eq!(m.pointing_game, Some(50.0));
        assert!((m.energy_in_box.unwrap() - 50.0).abs() < 1e-9);
        assert_eq!(scores_csv(&rows[..1]), "index,class,Y,O\n0,1,0.5,0.25\n");
    }

    #[test]
    fn uniform_head_gives_no_drop_and_no_increase() {
        // With an all-zero head every softmax is uniform (1/4), on the image and on any
        // explanation map: Y = O = 0.25, so AD = 0 and AI = 0; CAMs are all zero.
        let device = Default::default();
        let backbone = ResNetConfig::new(Arch::ResNet18).with_small_stem(true).init::<B>(&device);
        let head = LinearHead::<B>::from_tensors(Tensor::zeros([4, 512], &device), Tensor::zeros([4], &device));
        let x = Tensor::<B, 4>::random([2, 3, 8, 8], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
        let boxes = [Some(BBox { x0: 0.0, y0: 0.0, x1: 4.0, y1: 4.0 }), None];
        let out = cam_batch(&backbone, &head, x, &[10, 11], &[3, 1], &boxes, [0.5; 3], [0.25; 3]);
        for r in &out.rows {
            assert!((r.y - 0.25).abs() < 1e-6 && (r.o - 0.25).abs() < 1e-6 && (r.o_pred - 0.25).abs() < 1e-6, "{r:?}");
        }
        assert_eq!(out.rows.iter().map(|r| (r.index, r.class)).collect::<Vec<_>>(), vec![(10, 3), (11, 1)]);
        // Pointing game on an all-zero map: the first pixel (0, 0) is inside the box.
        assert_eq!((out.rows[0].hit, out.rows[0].energy, out.rows[1].hit), (Some(true), Some(0.0), None));
        let m = CamMetrics::from_rows(&out.rows);
        assert_eq!((m.ad, m.ai, m.n), (0.0, 0.0, 2));
        assert_eq!(out.cams.dims(), [2, 8, 8]);
        assert_eq!(out.explanations.dims(), [2, 3, 8, 8]);
    }
}
