//! k-means at ImageNet-50-like scale on the Flex CPU backend:
//! `cargo run --release -p sca-cluster --example kmeans_bench [N d C iterations]`
//! (defaults 100000 128 1000 10). Prints the bank fill, k-means++ and Lloyd timings.

use std::time::Instant;

use burn::backend::Flex;
use burn::tensor::{backend::Backend, Distribution, Tensor};
use sca_cluster::{cluster_stats, kmeans, KMeansConfig, KMeansInit, MemoryBank};

type B = Flex;

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("integer argument"))
        .collect();
    let get = |i: usize, default: usize| args.get(i).copied().unwrap_or(default);
    let (n, d, c, iterations) = (get(0, 100_000), get(1, 128), get(2, 1000), get(3, 10));
    let device = Default::default();
    B::seed(&device, 0);

    // Fill the bank as the epoch-start pass does: batches of 256 rows in order.
    let t = Instant::now();
    let mut bank = MemoryBank::<B>::new(n, d, &device);
    let mut start = 0;
    while start < n {
        let rows = 256.min(n - start);
        bank.write(
            start,
            Tensor::random([rows, d], Distribution::Normal(0.0, 1.0), &device),
        )
        .unwrap();
        start += rows;
    }
    let z = bank.into_tensor();
    let _ = z.clone().slice(n - 1..n).into_data(); // wait for the device
    println!(
        "bank fill   N={n} d={d}: {:.2} s",
        t.elapsed().as_secs_f64()
    );

    for init in [KMeansInit::Random, KMeansInit::PlusPlus] {
        let t = Instant::now();
        kmeans(&z, &KMeansConfig::new(c).with_iterations(0).with_init(init)).unwrap();
        let seeding = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let r = kmeans(
            &z,
            &KMeansConfig::new(c)
                .with_iterations(iterations)
                .with_init(init),
        )
        .unwrap();
        let s = cluster_stats(&r.sizes);
        println!(
            "k-means {init:?} N={n} d={d} C={c}: {:.2} s for {} iterations (init + first pass {seeding:.2} s); \
             inertia {:.1}; sizes min {} max {} empty {}",
            t.elapsed().as_secs_f64(),
            r.iterations_run,
            r.inertia,
            s.min,
            s.max,
            s.empty
        );
    }
}
