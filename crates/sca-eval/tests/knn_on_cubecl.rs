//! The KNN search and the probe's top-5 accuracy on a CubeCL backend, whose top-k selection
//! runs on the device (`sca_kernels::top_k`'s kernel; Burn's own would sort every block on
//! the host): wgpu over Mesa's software Vulkan (lavapipe), the runtime the CUDA backend
//! shares its CubeCL code with. It must give what the CPU path gives, ties included. Skipped without Vulkan unless
//! `SCA_REQUIRE_VULKAN` is set (CI sets it).

use burn::backend::{Autodiff, Flex};
use burn::tensor::{Tensor, TensorData};
use sca_eval::head::LinearHead;
use sca_eval::knn::{nearest, weighted_knn};
use sca_eval::probe::{accuracy, HostFeatures};
use sca_kernels::{top_k, WgpuBackend as W};

/// `rows × d` small integers in -2..=2 (a fixed pseudo-random sequence): their dot products
/// are exact on any kernel, and many tie, across block borders too.
fn integers(rows: usize, d: usize, seed: u64) -> TensorData {
    let mut state = seed;
    let values: Vec<f32> = (0..rows * d)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 33) % 5) as f32 - 2.0
        })
        .collect();
    TensorData::new(values, [rows, d])
}

#[test]
fn the_gpu_selection_finds_the_cpu_paths_neighbours() {
    let Some(device) = sca_kernels::cubecl_test_device::<W>() else { return };
    let queries = integers(150, 8, 2);
    let on_cpu = |t: &TensorData| Tensor::<Flex, 2>::from_data(t.clone(), &Default::default());
    let on_gpu = |t: &TensorData| Tensor::<W, 2>::from_data(t.clone(), &device);
    // Blocks larger and smaller than k, a last block narrower than the others, one block.
    for (n_bank, k, chunk) in [(2000, 30, 1000), (2000, 30, 300), (300, 30, 20), (2000, 200, 512), (2000, 5, 4096)] {
        let bank = integers(n_bank, 8, 1);
        let want = nearest(&on_cpu(&bank), &on_cpu(&queries), k, chunk);
        let got = nearest(&on_gpu(&bank), &on_gpu(&queries), k, chunk);
        assert_eq!(got.1, want.1, "bank indices, bank {n_bank} k={k} chunk={chunk}");
        assert_eq!(got.0, want.0, "similarities, bank {n_bank} k={k} chunk={chunk}");
    }
    // The accuracy on top, labels voting.
    let (bank, k, chunk) = (integers(2000, 8, 1), 30, 300);
    let labels: Vec<usize> = (0..2000).map(|i| i % 10).collect();
    let truth: Vec<usize> = (0..150).map(|i| (i * 3) % 10).collect();
    let cpu = weighted_knn(&on_cpu(&bank), &labels, &on_cpu(&queries), &truth, 10, k, 0.1, chunk);
    let gpu = weighted_knn(&on_gpu(&bank), &labels, &on_gpu(&queries), &truth, 10, k, 0.1, chunk);
    assert_eq!(gpu, cpu);
    // Ties at the k-th place: the lower bank index stays, whatever the blocks.
    let bank = TensorData::new(vec![1.0f32, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0], [4, 2]);
    let q = TensorData::new(vec![1.0f32, 0.0], [1, 2]);
    for chunk in [1, 2, 4] {
        assert_eq!(nearest(&on_gpu(&bank), &on_gpu(&q), 2, chunk).1, vec![vec![0, 1]], "chunk {chunk}");
    }
}

/// `top_k` on the autodiff backend selects from the inner tensors, as on the plain one.
#[test]
fn top_k_selects_on_the_device_under_autodiff_too() {
    let Some(device) = sca_kernels::cubecl_test_device::<W>() else { return };
    let x = integers(6, 40, 3);
    let (v, i) = top_k(Tensor::<W, 2>::from_data(x.clone(), &device), 4);
    let (va, ia) = top_k(Tensor::<Autodiff<W>, 2>::from_data(x.clone(), &device), 4);
    assert_eq!(va.into_data(), v.clone().into_data());
    assert_eq!(ia.into_data(), i.clone().into_data());
    // The device kernel returns each row's selection in column order (Burn's sort would
    // return it largest first): the kernel ran.
    let cols: Vec<i64> = i.into_data().convert::<i64>().to_vec().unwrap();
    assert!(cols.chunks(4).all(|c| c.windows(2).all(|w| w[0] < w[1])), "{cols:?}");
}

/// The linear probe's top-1 / top-5 accuracy, on Flex (Burn's sort) and on the device
/// selection, which hands each row's five best logits back in column order: top-1 must be
/// the largest of them, not the first.
#[test]
fn probe_accuracy_on_the_device_selection() {
    fn hits<B: burn::tensor::backend::Backend>(device: &B::Device) -> (f64, f64) {
        // Identity head, so the features are the logits; by hand: top-1 hits rows 0, 3, 4,
        // top-5 also row 1; rows 2 and 5 miss both.
        let eye: Vec<f32> = (0..49).map(|i| if i % 8 == 0 { 1.0 } else { 0.0 }).collect();
        let head = LinearHead::<B>::from_tensors(Tensor::<B, 1>::from_floats(eye.as_slice(), device).reshape([7, 7]), Tensor::zeros([7], device));
        let rows: [([f32; 7], usize); 6] = [
            ([0., 1., 2., 3., 4., 5., 6.], 6),
            ([6., 5., 4., 3., 2., 1., 0.], 1),
            ([6., 5., 4., 3., 2., 1., 0.], 5),
            ([0., 0., 9., 0., 0., 0., 0.], 2),
            ([1., 3., 2., 7., 5., 4., 0.], 3),
            ([1., 3., 2., 7., 5., 4., 0.], 0),
        ];
        let features = HostFeatures::new(rows.iter().flat_map(|(x, _)| *x).collect(), 7, rows.iter().map(|(_, y)| *y).collect());
        accuracy(&head, &features, 4, device)
    }
    let check = |backend: &str, (top1, top5): (f64, f64)| {
        assert_eq!(top1, 50.0, "{backend}");
        assert!((top5 - 400.0 / 6.0).abs() < 1e-9, "{backend}: {top5}");
    };
    check("Flex", hits::<Flex>(&Default::default()));
    if let Some(device) = sca_kernels::cubecl_test_device::<W>() {
        check("wgpu", hits::<W>(&device));
    }
}
