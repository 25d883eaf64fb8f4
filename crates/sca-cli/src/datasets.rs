//! Opening a configured dataset with the run's reproducible subsampling.

use std::sync::Arc;

use anyhow::Context;
use sca_data::{Dataset, DatasetSpec, Subset};

pub struct Opened {
    pub name: String,
    pub train: Arc<dyn Dataset>,
    pub test: Option<Arc<dyn Dataset>>,
}

fn subsample(ds: Arc<dyn Dataset>, size: Option<usize>, seed: u64) -> Arc<dyn Dataset> {
    match size {
        Some(n) if n < ds.len() => Arc::new(Subset::new(ds, n, seed)),
        _ => ds,
    }
}

/// Opens `spec`, keeping `train_size` / `test_size` images (a seeded subsample) when given.
pub fn open(spec: &DatasetSpec, train_size: Option<usize>, test_size: Option<usize>, seed: u64) -> anyhow::Result<Opened> {
    let name = match spec {
        DatasetSpec::Builtin { .. } => "the built-in cluttered scenes".to_string(),
        DatasetSpec::FashionMnist { root } => format!("Fashion-MNIST ({})", root.display()),
        DatasetSpec::ImageFolder { train, .. } => format!("image folder {}", train.display()),
    };
    let (train, test) = spec.open().with_context(|| format!("opening {name}"))?;
    Ok(Opened {
        name,
        train: subsample(train, train_size, seed),
        // A different stream for the test subset, so the two draws are independent.
        test: test.map(|t| subsample(t, test_size, seed ^ 0x5EED)),
    })
}
