//! This crate's kernels write their outputs by place in memory, so every output they allocate
//! must be stored densely (`cube_util::empty_dense`).
//!
//! CubeCL's CUDA runtime lays a new tensor out with `PitchedMemoryLayoutPolicy`: each row
//! (the last dimension) padded to an aligned pitch, with strides to match. The tests run on
//! wgpu and the CPU, whose policy is dense, so a kernel writing a padded output would pass
//! them all and scramble its result on CUDA only. The first test pins down the padding
//! (the reason for the rule); the second keeps the padded allocators out of the sources.

use burn_cubecl::cubecl::stream_id::StreamId;
use cubecl_runtime::allocator::PitchedMemoryLayoutPolicy;
use cubecl_runtime::server::{MemoryLayoutDescriptor, MemoryLayoutPolicy, MemoryLayoutStrategy};

/// The strides CUDA's policy gives a new f32 tensor of `shape` (512-byte alignment, as
/// `cubecl-cuda` sets it).
fn cuda_strides(shape: &[usize], strategy: MemoryLayoutStrategy) -> Vec<usize> {
    let policy = PitchedMemoryLayoutPolicy::new(512);
    let descriptor = MemoryLayoutDescriptor::new(strategy, shape.to_vec().into(), 4);
    let (_, layouts) = policy.apply(StreamId::current(), &[descriptor]);
    layouts[0].strides.to_vec()
}

#[test]
fn cuda_pads_the_rows_of_an_optimized_tensor_and_not_of_a_contiguous_one() {
    // A 3 × 3 convolution's weight: rows of 3 floats stored 4 apart.
    assert_eq!(cuda_strides(&[64, 64, 3, 3], MemoryLayoutStrategy::Optimized), [768, 12, 4, 1]);
    // An NCHW activation at 56 px: rows of 56 stored 64 apart.
    assert_eq!(cuda_strides(&[8, 256, 56, 56], MemoryLayoutStrategy::Optimized), [256 * 56 * 64, 56 * 64, 64, 1]);
    // im2col rows of a 3 × 3 convolution over 64 channels (576 values, 2,304 bytes) padded to 640.
    assert_eq!(cuda_strides(&[100, 576], MemoryLayoutStrategy::Optimized), [640, 1]);
    // Dense, as `empty_dense` asks.
    assert_eq!(cuda_strides(&[64, 64, 3, 3], MemoryLayoutStrategy::Contiguous), [576, 9, 3, 1]);
    assert_eq!(cuda_strides(&[100, 576], MemoryLayoutStrategy::Contiguous), [576, 1]);
}

#[test]
fn the_kernels_allocate_their_outputs_densely() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let padded = ["empty_device_dtype(", "empty_device::<", "empty_device(", "empty_tensor(", "empty_tensors("];
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for (i, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if padded.iter().any(|p| code.contains(p)) {
                found.push(format!("{}:{}: {}", path.display(), i + 1, line.trim()));
            }
        }
    }
    assert!(found.is_empty(), "outputs allocated with CubeCL's padded layout (use cube_util::empty_dense):\n{}", found.join("\n"));
}

#[test]
fn an_upload_keeps_each_value_at_its_place() {
    use burn::backend::flex::FlexDevice;
    use burn::backend::Flex;
    let values: Vec<f32> = (0..24).map(|v| v as f32).collect();
    let t = sca_kernels::upload::<Flex, 4>(values, [2, 3, 2, 2], &FlexDevice);
    assert_eq!(t.dims(), [2, 3, 2, 2]);
    // Row-major: [1, 2, 1, 0] is value 1·12 + 2·4 + 1·2 + 0.
    let at = t.slice([1..2, 2..3, 1..2, 0..1]).into_scalar();
    assert_eq!(at, 22.0);
}

#[test]
#[should_panic(expected = "upload: 5 values for shape [2, 3]")]
fn an_upload_of_the_wrong_length_names_both() {
    use burn::backend::flex::FlexDevice;
    use burn::backend::Flex;
    sca_kernels::upload::<Flex, 2>(vec![0.0; 5], [2, 3], &FlexDevice);
}
