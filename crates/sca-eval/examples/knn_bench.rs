//! Where the weighted KNN's time goes on the CPU backend: the similarity matmuls alone
//! against the whole search, on random unit vectors of Fashion-MNIST's shape.
//!
//! `cargo run --release -p sca-eval --example knn_bench [QUERIES BANK DIM]`

use std::time::Instant;

use burn::backend::Flex;
use burn::tensor::{Distribution, Tensor};
use sca_eval::knn::{l2_normalize, nearest, DEFAULT_CHUNK, DEFAULT_K};

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().expect("numbers")).collect();
    let (q, n, d) = match args[..] {
        [q, n, d] => (q, n, d),
        _ => (10_000, 60_000, 512),
    };
    let dev = Default::default();
    let unit = |rows| l2_normalize(Tensor::<Flex, 2>::random([rows, d], Distribution::Normal(0.0, 1.0), &dev));
    let (queries, bank) = (unit(q), unit(n));
    let c = DEFAULT_CHUNK;
    let t0 = Instant::now();
    for q0 in (0..q).step_by(c) {
        let qb = queries.clone().slice([q0..(q0 + c).min(q), 0..d]);
        for b0 in (0..n).step_by(c) {
            let bb = bank.clone().slice([b0..(b0 + c).min(n), 0..d]);
            let _ = qb.clone().matmul(bb.transpose()).into_data();
        }
    }
    let matmul = t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let (sims, _) = nearest(&bank, &queries, DEFAULT_K, c);
    let search = t0.elapsed().as_secs_f64();
    assert_eq!(sims.len(), q);
    println!("{q} queries x {n} bank x {d}-d, k={DEFAULT_K}, chunk {c}: similarity matmuls {matmul:.1} s, whole search {search:.1} s");
}
