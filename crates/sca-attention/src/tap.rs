//! Which backbone features f the add-on sees.

use burn::config::Config;
use burn::tensor::{backend::Backend, Tensor, TensorData};
// On an explicit kernel: on CUDA, Burn's autotuned matmul would time ~30 candidates per shape.
use sca_kernels::gemm_matmul;

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
///
/// Computed as two matmuls with the interpolation matrices, rows then columns: Burn's
/// `interpolate` has no bilinear backward on its CubeCL backends (it panics), and this
/// resize sits inside the training step for [`Tap::Multi`].
pub fn resize_bilinear<B: Backend>(x: Tensor<B, 4>, size: [usize; 2]) -> Tensor<B, 4> {
    let [n, c, h, w] = x.dims();
    let [h2, w2] = size;
    if [h, w] == [h2, w2] {
        return x;
    }
    let device = x.device();
    let matrix = |out: usize, inp: usize| {
        Tensor::<B, 2>::from_data(TensorData::new(interpolation_weights(out, inp), [inp, out]), &device)
    };
    // Rows: [n·c·w, h] × [h, h2]; then columns: [n·c·h2, w] × [w, w2].
    let rows = x.swap_dims(2, 3).reshape([n * c * w, h]);
    let rows = gemm_matmul(rows, matrix(h2, h)).reshape([n, c, w, h2]).swap_dims(2, 3);
    let cols = gemm_matmul(rows.reshape([n * c * h2, w]), matrix(w2, w));
    cols.reshape([n, c, h2, w2])
}

/// `[inp, out]`, row-major: column `o` holds the weights output `o` gives the inputs,
/// PyTorch's half-pixel rule without antialiasing: source `(o + 0.5)·inp/out − 0.5`,
/// clamped at 0, between its two neighbours (the last input repeated at the edge).
fn interpolation_weights(out: usize, inp: usize) -> Vec<f32> {
    let mut m = vec![0.0f32; inp * out];
    for o in 0..out {
        let src = ((o as f64 + 0.5) * inp as f64 / out as f64 - 0.5).max(0.0);
        let i0 = (src.floor() as usize).min(inp - 1);
        let i1 = (i0 + 1).min(inp - 1);
        let t = (src - i0 as f64) as f32;
        m[i0 * out + o] += 1.0 - t;
        m[i1 * out + o] += t;
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

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

    /// The resize's gradient is the transposed interpolation: each input collects the weights
    /// it gave the outputs (here 1×2 → 1×4: weights 1, .75, .25, 0 and 0, .25, .75, 1).
    #[test]
    fn bilinear_gradient_is_the_transposed_weights() {
        type A = burn::backend::Autodiff<Flex>;
        let x = Tensor::<A, 4>::from_data(TensorData::new(vec![1.0f32, 2.0], [1, 1, 1, 2]), &Default::default()).require_grad();
        let upstream = Tensor::<A, 4>::from_data(TensorData::new(vec![1.0f32, 10.0, 100.0, 1000.0], [1, 1, 1, 4]), &Default::default());
        let grads = (resize_bilinear(x.clone(), [1, 4]) * upstream).sum().backward();
        let g: Vec<f32> = x.grad(&grads).unwrap().into_data().iter::<f32>().collect();
        assert_eq!(g, vec![1.0 + 7.5 + 25.0, 2.5 + 75.0 + 1000.0]);
    }
}
