use sca_data::transform::*;

use crate::{assert_close, grey_row, pixels, planar};

/// Resize a grey row (optionally a sub-range and mirrored) and compare in 8-bit units.
#[track_caller]
fn check_resize(src: &[u8], rect: (f32, f32), out_w: usize, flip: bool, want: &[f32]) {
    let img = grey_row(src);
    let p = resized_crop(&img, CropRect { x: rect.0, y: 0.0, w: rect.1, h: 1.0 }, out_w, 1, flip);
    let got: Vec<f32> = pixels(&p).iter().map(|px| px[0] * 255.0).collect();
    assert_close(&got, want, 1e-3);
    // Grey in, grey out.
    assert!(pixels(&p).iter().all(|px| px[0] == px[1] && px[1] == px[2]));
}

#[test]
fn resize_matches_hand_computed_pillow_weights() {
    check_resize(&[10, 20, 30], (0.0, 3.0), 3, false, &[10.0, 20.0, 30.0]); // identity
    check_resize(&[0, 100], (0.0, 2.0), 1, false, &[50.0]); // 2:1, equal weights 0.75/0.75
    check_resize(&[0, 100], (0.0, 2.0), 4, false, &[0.0, 25.0, 75.0, 100.0]); // 1:2, half-pixel centres
                                                                              // 2:1 with support 2: weights (0.75, 0.75, 0.25)/1.75 and (0.25, 0.75, 0.75)/1.75.
    check_resize(&[0, 100, 200, 255], (0.0, 4.0), 2, false, &[125.0 / 1.75, 366.25 / 1.75]);
    check_resize(&[10, 20, 30], (0.0, 3.0), 3, true, &[30.0, 20.0, 10.0]); // mirrored
    check_resize(&[10, 20, 30, 40], (1.0, 2.0), 2, false, &[20.0, 30.0]); // crop
                                                                          // Taps never leave the crop: the 2:1 average of [20, 30] ignores 10 and 40.
    check_resize(&[10, 20, 30, 40], (1.0, 2.0), 1, false, &[25.0]);
}

#[test]
fn resize_averages_channels_independently() {
    let img = image::RgbImage::from_raw(2, 2, vec![255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255]).unwrap();
    let p = resized_crop(&img, CropRect { x: 0.0, y: 0.0, w: 2.0, h: 2.0 }, 1, 1, false);
    assert_close(&p.pixel(0, 0), &[0.5, 0.5, 0.5], 1e-6);
}

#[test]
fn hflip_mirrors_rows() {
    let mut p = planar(&[[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]]);
    hflip(&mut p);
    assert_eq!(pixels(&p), vec![[0.4, 0.5, 0.6], [0.1, 0.2, 0.3]]);
}

#[track_caller]
fn check_op(op: impl Fn(&mut Planar), input: &[[f32; 3]], want: &[[f32; 3]]) {
    let mut p = planar(input);
    op(&mut p);
    let got: Vec<f32> = pixels(&p).concat();
    assert_close(&got, &want.concat(), 1e-5);
}

#[test]
fn brightness_scales_and_clamps() {
    check_op(|p| adjust_brightness(p, 0.5), &[[0.2, 0.4, 1.0]], &[[0.1, 0.2, 0.5]]);
    check_op(|p| adjust_brightness(p, 2.0), &[[0.2, 0.4, 1.0]], &[[0.4, 0.8, 1.0]]);
    check_op(|p| adjust_brightness(p, 0.0), &[[0.2, 0.4, 1.0]], &[[0.0, 0.0, 0.0]]);
}

#[test]
fn contrast_blends_with_the_image_mean_luma() {
    // Mean luma of black + white = 0.5.
    check_op(|p| adjust_contrast(p, 0.5), &[[0.0; 3], [1.0; 3]], &[[0.25; 3], [0.75; 3]]);
    check_op(|p| adjust_contrast(p, 0.0), &[[0.0; 3], [1.0; 3]], &[[0.5; 3], [0.5; 3]]);
    // Red + black: mean luma 0.299 / 2 = 0.1495, the same for both pixels.
    check_op(|p| adjust_contrast(p, 0.0), &[[1.0, 0.0, 0.0], [0.0; 3]], &[[0.1495; 3], [0.1495; 3]]);
    check_op(|p| adjust_contrast(p, 0.5), &[[1.0, 0.0, 0.0]], &[[0.6495, 0.1495, 0.1495]]);
    check_op(|p| adjust_contrast(p, 2.0), &[[0.0; 3], [1.0; 3]], &[[0.0; 3], [1.0; 3]]);
}

#[test]
fn saturation_blends_with_each_pixels_own_luma() {
    check_op(|p| adjust_saturation(p, 0.0), &[[1.0, 0.0, 0.0], [0.0; 3]], &[[0.299; 3], [0.0; 3]]);
    check_op(|p| adjust_saturation(p, 0.5), &[[1.0, 0.0, 0.0]], &[[0.6495, 0.1495, 0.1495]]);
    check_op(|p| adjust_saturation(p, 2.0), &[[0.5, 0.25, 0.25]], &[[0.67525, 0.17525, 0.17525]]);
    check_op(|p| adjust_saturation(p, 3.0), &[[0.3; 3]], &[[0.3; 3]]);
}

#[test]
fn hue_rotates_around_the_colour_wheel() {
    let third = 1.0 / 3.0;
    check_op(|p| adjust_hue(p, third), &[[1.0, 0.0, 0.0]], &[[0.0, 1.0, 0.0]]); // red → green
    check_op(|p| adjust_hue(p, 0.5), &[[1.0, 0.0, 0.0]], &[[0.0, 1.0, 1.0]]); // red → cyan
    check_op(|p| adjust_hue(p, -1.0 / 6.0), &[[1.0, 0.0, 0.0]], &[[1.0, 0.0, 1.0]]); // red → magenta
    check_op(|p| adjust_hue(p, 1.0 / 12.0), &[[1.0, 0.5, 0.0]], &[[1.0, 1.0, 0.0]]); // orange → yellow
    check_op(|p| adjust_hue(p, 0.25), &[[0.8, 0.4, 0.2]], &[[0.3, 0.8, 0.2]]); // 20° → 110°
    check_op(|p| adjust_hue(p, 0.3), &[[0.5, 0.5, 0.5]], &[[0.5, 0.5, 0.5]]); // grey stays
    check_op(|p| adjust_hue(p, 0.0), &[[0.1, 0.7, 0.3]], &[[0.1, 0.7, 0.3]]);
}

#[test]
fn fast_hue_equals_the_hsv_round_trip() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    for _ in 0..2000 {
        let px = [rng.gen::<f32>(), rng.gen::<f32>(), rng.gen::<f32>()];
        let shift = rng.gen_range(-0.5f32..0.5);
        let (h, s, v) = rgb_to_hsv(px[0], px[1], px[2]);
        let (r, g, b) = hsv_to_rgb((h + shift).rem_euclid(1.0), s, v);
        let mut p = planar(&[px]);
        adjust_hue(&mut p, shift);
        assert_close(&p.pixel(0, 0), &[r, g, b], 2e-5);
    }
}

#[test]
fn greyscale_uses_itu_601_luma() {
    check_op(to_greyscale, &[[1.0, 0.0, 0.0]], &[[0.299; 3]]);
    check_op(to_greyscale, &[[0.2, 0.4, 0.6]], &[[0.363; 3]]);
    check_op(to_greyscale, &[[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]], &[[0.114; 3], [0.587; 3]]);
}

#[test]
fn blur_kernel_size_scales_with_the_crop() {
    for (size, want) in [(224, 23), (96, 11), (64, 7), (112, 13), (28, 3), (32, 3), (8, 3), (448, 47)] {
        assert_eq!(blur_kernel_size(size, 23), want, "crop {size}");
    }
}

#[test]
fn gaussian_kernel_is_normalised_and_trimmed() {
    // exp(-0.5) = 0.60653; / (1 + 2·0.60653).
    assert_close(&gaussian_kernel(3, 1.0), &[0.274069, 0.451863, 0.274069], 1e-6);
    assert_close(&gaussian_kernel(5, 1e6), &[0.2; 5], 1e-6);
    // sigma 0.1: the neighbours weigh e^-50, far below 1e-6, so only the centre stays.
    assert_eq!(gaussian_kernel(23, 0.1), vec![1.0]);
    let k = gaussian_kernel(23, 2.0);
    assert_eq!(k.len(), 19, "taps beyond ±9 weigh under 1e-6 at sigma 2");
    assert!((k.iter().sum::<f32>() - 1.0).abs() < 1e-6);
}

#[test]
fn blur_pads_by_reflection() {
    // A unit impulse in the middle of 3×3 with kernel (a, b, a): reflection puts the
    // impulse on both sides of each border pixel, so borders get 2a per axis.
    let (a, b) = (0.274069f32, 0.451863f32);
    let mut p = Planar::new(3, 3);
    for c in 0..3 {
        p.data[c * 9 + 4] = 1.0;
    }
    gaussian_blur(&mut p, 3, 1.0);
    let want = [
        2.0 * a * 2.0 * a,
        2.0 * a * b,
        2.0 * a * 2.0 * a,
        2.0 * a * b,
        b * b,
        2.0 * a * b,
        2.0 * a * 2.0 * a,
        2.0 * a * b,
        2.0 * a * 2.0 * a,
    ];
    for c in 0..3 {
        assert_close(&p.data[c * 9..(c + 1) * 9], &want, 1e-6);
    }
    // A constant image stays constant.
    let mut flat = planar(&[[0.3, 0.6, 0.9]; 5]);
    gaussian_blur(&mut flat, 23, 2.0);
    assert_close(&pixels(&flat).concat(), &[[0.3, 0.6, 0.9]; 5].concat(), 1e-6);
}

#[test]
fn normalise_and_denormalise() {
    let mean = [0.485, 0.456, 0.406];
    let std = [0.229, 0.224, 0.225];
    let p = planar(&[[0.714, 0.456, 0.181], [0.485, 0.68, 0.631]]);
    let mut out = vec![0.0; 6];
    normalise_into(&p, mean, std, &mut out);
    assert_close(&out, &[1.0, 0.0, 0.0, 1.0, -1.0, 1.0], 1e-5);

    let img = image::RgbImage::from_raw(2, 1, vec![0, 128, 255, 17, 34, 51]).unwrap();
    let mut buf = vec![0.0; 6];
    normalise_into(&Planar::from_rgb(&img), mean, std, &mut buf);
    assert_eq!(denormalise_to_rgb(&buf, 2, 1, mean, std), img);
}

#[test]
fn planar_round_trips_8_bit_images() {
    let img = image::RgbImage::from_raw(2, 2, (0..12).map(|v| v * 20).collect()).unwrap();
    assert_eq!(Planar::from_rgb(&img).to_rgb(), img);
    assert_close(&Planar::from_rgb(&img).pixel(1, 0), &[60.0 / 255.0, 80.0 / 255.0, 100.0 / 255.0], 1e-7);
}
