use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use sca_data::augment::*;
use sca_data::transform::{CropRect, Planar};
use sca_data::BBox;

use crate::assert_close;

fn rect(x: f32, y: f32, w: f32, h: f32) -> CropRect {
    CropRect { x, y, w, h }
}

#[track_caller]
fn check_rrc(width: usize, height: usize, scale: [f32; 2], ratio: [f32; 2], want: CropRect) {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    assert_eq!(random_resized_crop_params(width, height, scale, ratio, &mut rng), want);
}

#[test]
fn random_resized_crop_fallback_and_full_crops() {
    // Square crops of the whole area cannot fit a 10×6 image: centred 6×6.
    check_rrc(10, 6, [1.0, 1.0], [1.0, 1.0], rect(2.0, 0.0, 6.0, 6.0));
    // Too tall for the ratio range: width kept, height = round(4 / 0.75) = 5, centred.
    check_rrc(4, 10, [1.0, 1.0], [0.75, 4.0 / 3.0], rect(0.0, 2.0, 4.0, 5.0));
    // Too wide: height kept, width = round(3 · 4/3) = 4.
    check_rrc(12, 3, [1.0, 1.0], [0.75, 4.0 / 3.0], rect(4.0, 0.0, 4.0, 3.0));
    // The whole of a square image fits at once.
    check_rrc(6, 6, [1.0, 1.0], [1.0, 1.0], rect(0.0, 0.0, 6.0, 6.0));
}

#[test]
fn random_resized_crop_respects_scale_and_ratio() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for _ in 0..500 {
        let r = random_resized_crop_params(500, 375, [0.05, 0.14], [0.75, 4.0 / 3.0], &mut rng);
        let share = r.w * r.h / (500.0 * 375.0);
        assert!((0.049..=0.141).contains(&share), "area share {share}");
        assert!((0.74..=1.35).contains(&(r.w / r.h)), "ratio {}", r.w / r.h);
        assert!(r.x >= 0.0 && r.y >= 0.0 && r.x + r.w <= 500.0 && r.y + r.h <= 375.0);
    }
}

#[test]
fn view_parameters_follow_their_probabilities() {
    let aug = AugmentConfig::default();
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let n = 4000;
    let (mut flip, mut jitter, mut grey, mut blur) = (0, 0, 0, 0);
    for _ in 0..n {
        let p = sample_view_params(500, 375, &aug.crops[0], &aug, &mut rng);
        flip += p.flip as usize;
        grey += p.grey as usize;
        if let Some(j) = p.jitter {
            jitter += 1;
            let mut order = j.order;
            order.sort();
            assert_eq!(order, [0, 1, 2, 3]);
            for f in [j.brightness, j.contrast, j.saturation] {
                assert!((0.2..=1.8).contains(&f), "factor {f}");
            }
            assert!(j.hue.abs() <= 0.2);
        }
        if let Some(s) = p.blur_sigma {
            blur += 1;
            assert!((0.1..=2.0).contains(&s));
        }
    }
    let rate = |k: usize| k as f64 / n as f64;
    assert!((rate(flip) - 0.5).abs() < 0.03, "flip {}", rate(flip));
    assert!((rate(jitter) - 0.8).abs() < 0.03, "jitter {}", rate(jitter));
    assert!((rate(grey) - 0.2).abs() < 0.03, "grey {}", rate(grey));
    assert!((rate(blur) - 0.5).abs() < 0.03, "blur {}", rate(blur));
}

/// Everything off except what is asked: a crop of the whole image at its own size.
fn plain(size: usize) -> AugmentConfig {
    AugmentConfig {
        crops: vec![CropSpec::new(1, size, 1.0, 1.0)],
        ratio: [1.0, 1.0],
        flip_p: 0.0,
        jitter_p: 0.0,
        grey_p: 0.0,
        blur_p: 0.0,
        mean: [0.0; 3],
        std: [1.0; 3],
        ..AugmentConfig::default()
    }
}

fn test_image() -> image::RgbImage {
    image::RgbImage::from_fn(4, 4, |x, y| image::Rgb([(x * 60) as u8, (y * 60) as u8, 200]))
}

#[test]
fn identity_pipeline_returns_the_image() {
    let img = test_image();
    let mut out = vec![0.0; 48];
    augment_view(&img, &plain(4).crops[0], &plain(4), 9, &mut out);
    assert_close(&out, &Planar::from_rgb(&img).data, 1e-6);
}

#[test]
fn each_switch_alone() {
    let img = test_image();
    let run = |aug: AugmentConfig| {
        let mut out = vec![0.0; 48];
        let p = augment_view(&img, &aug.crops[0], &aug, 11, &mut out);
        (p, out)
    };
    let (p, out) = run(AugmentConfig { flip_p: 1.0, ..plain(4) });
    assert!(p.flip);
    let mut flipped = Planar::from_rgb(&img);
    sca_data::transform::hflip(&mut flipped);
    assert_close(&out, &flipped.data, 1e-6);

    let (p, out) = run(AugmentConfig { grey_p: 1.0, ..plain(4) });
    assert!(p.grey);
    assert_close(&out[0..16], &out[16..32], 1e-6);
    // Pixel (0, 0) = (0, 0, 200): luma 0.114 · 200/255.
    assert_close(&out[0..1], &[0.114 * 200.0 / 255.0], 1e-6);

    let (p, out) = run(AugmentConfig { mean: [0.5; 3], std: [0.25; 3], ..plain(4) });
    assert_eq!((p.jitter, p.grey, p.blur_sigma, p.flip), (None, false, None, false));
    assert_close(&out[32..33], &[(200.0 / 255.0 - 0.5) / 0.25], 1e-5);

    let (p, _) = run(AugmentConfig { jitter_p: 1.0, blur_p: 1.0, ..plain(4) });
    assert!(p.jitter.is_some() && p.blur_sigma.is_some());
}

#[test]
fn views_depend_on_the_key_only() {
    let img = test_image();
    let aug = AugmentConfig { crops: vec![CropSpec::new(1, 3, 0.3, 1.0)], ..AugmentConfig::default() };
    let view = |key| {
        let mut out = vec![0.0; 27];
        augment_view(&img, &aug.crops[0], &aug, key, &mut out);
        out
    };
    assert_eq!(view(5), view(5));
    assert_ne!(view(5), view(6));
}

#[test]
fn crop_kinds_map_to_views() {
    let aug = AugmentConfig::default();
    assert_eq!(aug.num_views(), 8);
    let sizes: Vec<usize> = (0..8).map(|v| aug.crop_of_view(v).size).collect();
    assert_eq!(sizes, [224, 224, 96, 96, 96, 96, 96, 96]);
    let small = AugmentConfig::swav_scaled(64, [0.5; 3], [0.2; 3]);
    assert_eq!(small.crops, vec![CropSpec::new(2, 64, 0.14, 1.0), CropSpec::new(6, 27, 0.05, 0.14)]);
}

#[test]
fn config_json_defaults_and_errors() {
    let d: AugmentConfig = serde_json::from_str("{}").unwrap();
    assert_eq!(d, AugmentConfig::default());
    assert_eq!(d.crops, vec![CropSpec::new(2, 224, 0.14, 1.0), CropSpec::new(6, 96, 0.05, 0.14)]);
    assert_eq!((d.flip_p, d.jitter_p, d.grey_p, d.blur_p, d.jitter_strength), (0.5, 0.8, 0.2, 0.5, 1.0));
    assert_eq!((d.brightness, d.contrast, d.saturation, d.hue), (0.8, 0.8, 0.8, 0.2));
    assert_eq!((d.blur_kernel_at_224, d.blur_sigma), (23, [0.1, 2.0]));
    assert_eq!((d.mean, d.std), (IMAGENET_MEAN, IMAGENET_STD));

    let c: AugmentConfig =
        serde_json::from_str(r#"{"crops":[{"count":2,"size":64,"min_scale":0.2,"max_scale":1.0}],"blur_p":0.0}"#).unwrap();
    assert_eq!((c.num_views(), c.blur_p, c.grey_p), (2, 0.0, 0.2));

    let err = serde_json::from_str::<AugmentConfig>(r#"{"flip":0.5}"#).unwrap_err().to_string();
    assert!(err.contains("unknown field `flip`"), "{err}");
}

#[track_caller]
fn check_invalid(aug: AugmentConfig, needle: &str) {
    let err = aug.validate().unwrap_err().to_string();
    assert!(err.contains(needle), "{err:?} should mention {needle:?}");
}

#[test]
fn invalid_configs_are_rejected() {
    assert!(AugmentConfig::default().validate().is_ok());
    check_invalid(AugmentConfig { crops: vec![], ..AugmentConfig::default() }, "at least one crop");
    check_invalid(AugmentConfig { crops: vec![CropSpec::new(1, 32, 0.5, 0.2)], ..AugmentConfig::default() }, "min_scale <= max_scale");
    check_invalid(AugmentConfig { crops: vec![CropSpec::new(1, 0, 0.2, 0.5)], ..AugmentConfig::default() }, "size must be > 0");
    check_invalid(AugmentConfig { grey_p: 1.5, ..AugmentConfig::default() }, "grey_p = 1.5");
    check_invalid(AugmentConfig { jitter_strength: 3.0, ..AugmentConfig::default() }, "hue amplitude");
    check_invalid(AugmentConfig { std: [0.2, 0.0, 0.2], ..AugmentConfig::default() }, "std");
}

#[test]
fn eval_transform_geometry() {
    let e = EvalTransform::imagenet();
    assert_eq!(e.resized_dims(500, 375), (341, 256));
    assert_eq!(e.resized_dims(375, 500), (256, 341));
    // left = round_half_even((341 - 224) / 2) = 58, top = 16.
    let r = e.source_rect(500, 375);
    assert_close(&[r.x, r.y, r.w, r.h], &[58.0 * 500.0 / 341.0, 16.0 * 375.0 / 256.0, 224.0 * 500.0 / 341.0, 224.0 * 375.0 / 256.0], 1e-3);
    let b = e.map_bbox(&BBox { x0: 100.0, y0: 50.0, x1: 200.0, y1: 150.0 }, 500, 375).unwrap();
    assert_close(&[b.x0, b.y0, b.x1, b.y1], &[10.2, 18.1333, 78.4, 86.4], 1e-3);
    assert!(e.map_bbox(&BBox { x0: 0.0, y0: 0.0, x1: 20.0, y1: 20.0 }, 500, 375).is_none());
}

#[test]
fn eval_identity_keeps_pixels_and_boxes() {
    let img = test_image();
    let e = EvalTransform::identity(4, [0.0; 3], [1.0; 3]);
    let mut out = vec![0.0; 48];
    e.apply(&img, &mut out);
    assert_close(&out, &Planar::from_rgb(&img).data, 1e-6);
    let b = BBox { x0: 1.0, y0: 0.0, x1: 3.0, y1: 2.0 };
    assert_eq!(e.map_bbox(&b, 4, 4), Some(b));
    // Resize 8 + crop 6 of a 4×4: the centre 3×3 source pixels fill the 6×6 output.
    let e = EvalTransform::identity(8, [0.0; 3], [1.0; 3]);
    let e = EvalTransform { crop: 6, ..e };
    let r = e.source_rect(4, 4);
    assert_close(&[r.x, r.y, r.w, r.h], &[0.5, 0.5, 3.0, 3.0], 1e-6);
    assert!(EvalTransform { crop: 9, ..e }.validate().is_err());
}

#[test]
fn boxes_follow_crops_and_flips() {
    let b = BBox { x0: 1.0, y0: 2.0, x1: 4.0, y1: 5.0 };
    let full = rect(0.0, 0.0, 10.0, 10.0);
    assert_eq!(map_bbox(&b, full, 10, 10, false), Some(b));
    assert_eq!(map_bbox(&b, full, 10, 10, true), Some(BBox { x0: 6.0, y0: 2.0, x1: 9.0, y1: 5.0 }));
    assert_eq!(map_bbox(&b, full, 20, 5, false), Some(BBox { x0: 2.0, y0: 1.0, x1: 8.0, y1: 2.5 }));
    // Clipped to the crop, then scaled.
    let big = BBox { x0: 0.0, y0: 0.0, x1: 8.0, y1: 8.0 };
    assert_eq!(map_bbox(&big, rect(5.0, 5.0, 5.0, 5.0), 10, 10, false), Some(BBox { x0: 0.0, y0: 0.0, x1: 6.0, y1: 6.0 }));
    assert_eq!(map_bbox(&b, rect(6.0, 6.0, 4.0, 4.0), 8, 8, false), None);
}

#[test]
fn vector_and_baseline_code_give_identical_bits() {
    // A scene large enough for every resample and blur path, all switches on.
    let (img, _) = sca_data::scenes::render_scene(120, 90, 2, 5);
    let aug =
        AugmentConfig { jitter_p: 1.0, blur_p: 1.0, grey_p: 0.5, crops: vec![CropSpec::new(1, 40, 0.1, 1.0)], ..AugmentConfig::default() };
    let run = |baseline: bool| {
        sca_data::transform::force_baseline(baseline);
        let out: Vec<Vec<f32>> = (0..24)
            .map(|key| {
                let mut buf = vec![0.0; 3 * 40 * 40];
                augment_view(&img, &aug.crops[0], &aug, key, &mut buf);
                buf
            })
            .collect();
        sca_data::transform::force_baseline(false);
        out
    };
    let (fast, slow) = (run(false), run(true));
    for (k, (a, b)) in fast.iter().zip(&slow).enumerate() {
        assert!(a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()), "view {k} differs");
    }
}
