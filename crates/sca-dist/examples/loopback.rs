//! Two processes summing through the coordinator on 127.0.0.1, many times in a row:
//! `cargo run -p sca-dist --example loopback -- RANK PORT CALLS LEN` (start rank 0 and 1).

use sca_dist::{group, GroupSpec};

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let (rank, port, calls, len): (usize, u16, usize, usize) = (a[1].parse().unwrap(), a[2].parse().unwrap(), a[3].parse().unwrap(), a[4].parse().unwrap());
    let spec = GroupSpec { nodes: 2, node_rank: rank, coordinator: Some(format!("127.0.0.1:{port}")), ..GroupSpec::local(1) };
    if rank == 0 {
        group::start_coordinator(&spec).unwrap();
    }
    let r = sca_dist::join(&spec, 0).unwrap();
    let t0 = std::time::Instant::now();
    for i in 0..calls {
        let v = r.sum_vec(vec![(rank + i) as f32; len]);
        assert_eq!(v[0], (2 * i + 1) as f32, "call {i}");
    }
    println!("rank {rank}: {calls} sums of {len} floats in {:.3} s", t0.elapsed().as_secs_f64());
}
