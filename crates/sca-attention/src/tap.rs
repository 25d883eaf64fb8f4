//! Which backbone features f the add-on sees.

use burn::config::Config;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use burn::tensor::{backend::Backend, Tensor};

/// The feature map f of the add-on, from the stage maps `[c2, c3, c4, c5]`
/// (outputs of layer1..layer4).
#[derive(Config, Debug, PartialEq, Eq, Copy)]
pub enum Tap {
    /// c5, the last stage (7×7 at 224 px); the paper's default.
    Last,
    /// c4 (layer3, 14×14 at 224 px); f ⊙ β then runs through layer4 before pooling.
    Stage3,
    /// c3, c4, c5 resized bilinearly to the c3 grid (28×28 at 224 px), concatenated.
    Multi,
}

/// Channels D of the tapped map, from the four stage channel counts
/// (`[256, 512, 1024, 2048]` for ResNet-50).
pub fn tap_channels(stage_channels: [usize; 4], tap: Tap) -> usize {
    match tap {
        Tap::Last => stage_channels[3],
        Tap::Stage3 => stage_channels[2],
        Tap::Multi => stage_channels[1] + stage_channels[2] + stage_channels[3],
    }
}

/// Channels the classifier pools: the tapped map's, or layer4's output for `Stage3`.
pub fn classifier_channels(stage_channels: [usize; 4], tap: Tap) -> usize {
    match tap {
        Tap::Stage3 => stage_channels[3],
        _ => tap_channels(stage_channels, tap),
    }
}

/// The tapped map from `[c2, c3, c4, c5]`.
pub fn tap_features<B: Backend>(stages: [Tensor<B, 4>; 4], tap: Tap) -> Tensor<B, 4> {
    let [_, c3, c4, c5] = stages;
    match tap {
        Tap::Last => c5,
        Tap::Stage3 => c4,
        Tap::Multi => {
            let [_, _, h, w] = c3.dims();
            Tensor::cat(
                vec![c3, resize_bilinear(c4, [h, w]), resize_bilinear(c5, [h, w])],
                1,
            )
        }
    }
}

/// Bilinear resize as PyTorch's `F.interpolate(x, size, mode="bilinear",
/// align_corners=False)`; a no-op when the size already matches.
pub fn resize_bilinear<B: Backend>(x: Tensor<B, 4>, size: [usize; 2]) -> Tensor<B, 4> {
    let [_, _, h, w] = x.dims();
    if [h, w] == size {
        return x;
    }
    // Burn defaults to align_corners = true; PyTorch's default is false.
    interpolate(
        x,
        size,
        InterpolateOptions::new(InterpolateMode::Bilinear).with_align_corners(false),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::TensorData;

    type B = Flex;

    fn map(c: usize, h: usize, w: usize, v: Vec<f32>) -> Tensor<B, 4> {
        Tensor::from_data(TensorData::new(v, [1, c, h, w]), &Default::default())
    }

    fn ramp(c: usize, h: usize, w: usize) -> Tensor<B, 4> {
        map(c, h, w, (0..c * h * w).map(|i| i as f32).collect())
    }

    #[test]
    #[rustfmt::skip]
    fn channels_and_grid_per_tap() {
        fn check(tap: Tap, channels: usize, classifier: usize, grid: [usize; 2]) {
            let stages = [ramp(4, 16, 16), ramp(6, 8, 8), ramp(8, 4, 4), ramp(10, 2, 2)];
            let f = tap_features(stages, tap);
            assert_eq!(f.dims(), [1, channels, grid[0], grid[1]]);
            assert_eq!(tap_channels([4, 6, 8, 10], tap), channels);
            assert_eq!(classifier_channels([4, 6, 8, 10], tap), classifier);
        }
        check(Tap::Last, 10, 10, [2, 2]);
        check(Tap::Stage3, 8, 10, [4, 4]);
        check(Tap::Multi, 24, 24, [8, 8]);
        assert_eq!(tap_channels([256, 512, 1024, 2048], Tap::Multi), 3584);
        assert_eq!(tap_channels([64, 128, 256, 512], Tap::Multi), 896);
    }

    #[test]
    fn multi_keeps_c3_and_upsamples_the_rest() {
        // c3 passes through unchanged; a constant c5 stays constant; c4 is resized.
        let c3 = ramp(1, 4, 4);
        let c4 = map(1, 2, 2, vec![1., 2., 3., 4.]);
        let c5 = map(1, 1, 1, vec![7.]);
        let f = tap_features([ramp(1, 8, 8), c3, c4, c5], Tap::Multi);
        let v: Vec<f32> = f.into_data().iter::<f32>().collect();
        assert_eq!(&v[..16], &(0..16).map(|i| i as f32).collect::<Vec<_>>()[..]);
        assert_eq!(&v[16..20], &[1.0, 1.25, 1.75, 2.0]);
        assert!(v[32..].iter().all(|&x| x == 7.0));
    }

    #[test]
    #[rustfmt::skip]
    fn bilinear_matches_pytorch_align_corners_false() {
        // Reference values of torch.nn.functional.interpolate(x, size, mode="bilinear",
        // align_corners=False), worked out from its half-pixel rule
        // src = (dst + 0.5)·in/out − 0.5, clamped at 0.
        fn check(h: usize, w: usize, v: &[f32], size: [usize; 2], expected: &[f32]) {
            let out = resize_bilinear(map(1, h, w, v.to_vec()), size);
            let got: Vec<f32> = out.into_data().iter::<f32>().collect();
            assert!(got.iter().zip(expected).all(|(g, e)| (g - e).abs() < 1e-6), "{got:?}");
            assert_eq!(got.len(), expected.len());
        }
        check(1, 2, &[1., 2.], [1, 4], &[1.0, 1.25, 1.75, 2.0]);
        check(2, 2, &[1., 2., 3., 4.], [4, 4], &[
            1.0, 1.25, 1.75, 2.0, //
            1.5, 1.75, 2.25, 2.5,
            2.5, 2.75, 3.25, 3.5,
            3.0, 3.25, 3.75, 4.0,
        ]);
        // 1×4 → 1×8: src = (x + 0.5)/2 − 0.5 = −0.25, 0.25, 0.75, ..., 3.25.
        check(1, 4, &[0., 4., 8., 12.], [1, 8], &[0.0, 1.0, 3.0, 5.0, 7.0, 9.0, 11.0, 12.0]);
        // Downsampling 1×4 → 1×2: src = 0.5, 2.5.
        check(1, 4, &[0., 4., 8., 12.], [1, 2], &[2.0, 10.0]);
    }
}
