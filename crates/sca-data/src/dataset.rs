//! The `Dataset` trait every source implements, its sample type, and `Subset`.

use std::sync::Arc;

use rand::seq::index::sample;
use serde::{Deserialize, Serialize};

use crate::rng::{self, domain};
use crate::DataError;

/// An axis-aligned box in pixels of the image it belongs to: `x0 <= x < x1`, `y0 <= y < y1`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
pub struct BBox {
    pub x0: f32,
    pub y0: f32,
    pub x1: f32,
    pub y1: f32,
}

impl BBox {
    pub fn width(&self) -> f32 {
        (self.x1 - self.x0).max(0.0)
    }
    pub fn height(&self) -> f32 {
        (self.y1 - self.y0).max(0.0)
    }
    pub fn area(&self) -> f32 {
        self.width() * self.height()
    }
}

/// One decoded image with its label (and object box where the dataset knows it).
#[derive(Clone, Debug)]
pub struct Sample {
    /// RGB, 8 bits; grey sources are replicated to three channels.
    pub image: image::RgbImage,
    pub label: usize,
    pub bbox: Option<BBox>,
}

/// A labelled image collection. Implementations are cheap to share across threads.
pub trait Dataset: Send + Sync {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn num_classes(&self) -> usize;
    fn class_names(&self) -> Vec<String>;
    /// Label of a sample without decoding it.
    fn label(&self, index: usize) -> usize;
    /// Decode (or generate) a sample.
    fn load(&self, index: usize) -> Result<Sample, DataError>;
    /// Object box, where known without decoding.
    fn bbox(&self, _index: usize) -> Option<BBox> {
        None
    }
    /// Whether the loader may replace a sample whose image turns out corrupt
    /// ([`DataError::is_bad_image`]) by the next loadable index instead of failing.
    fn skip_bad_images(&self) -> bool {
        false
    }
    /// Files found unreadable so far (at open time or while loading), for summaries.
    fn bad_files(&self) -> Vec<String> {
        Vec::new()
    }
}

/// Callback invoked once per item processed (for progress bars).
pub type Progress = Arc<dyn Fn() + Send + Sync>;

/// Size and box of one sample, as found by [`scan`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SampleInfo {
    pub width: u32,
    pub height: u32,
    pub bbox: Option<BBox>,
}

/// Load every sample (in parallel) and return its size and box, in index order; the first
/// error stops the scan.
pub fn scan(ds: &dyn Dataset, progress: Option<Progress>) -> Result<Vec<SampleInfo>, DataError> {
    use rayon::prelude::*;
    (0..ds.len())
        .into_par_iter()
        .map(|i| {
            let s = ds.load(i)?;
            if let Some(p) = &progress {
                p();
            }
            Ok(SampleInfo { width: s.image.width(), height: s.image.height(), bbox: s.bbox })
        })
        .collect()
}

/// Labels of every sample, in index order.
pub fn labels(ds: &dyn Dataset) -> Vec<usize> {
    (0..ds.len()).map(|i| ds.label(i)).collect()
}

/// Number of samples per class.
pub fn class_counts(ds: &dyn Dataset) -> Vec<usize> {
    let mut counts = vec![0; ds.num_classes()];
    for i in 0..ds.len() {
        counts[ds.label(i)] += 1;
    }
    counts
}

/// A reproducible subsample of another dataset (indices kept in increasing order).
pub struct Subset {
    inner: Arc<dyn Dataset>,
    indices: Vec<usize>,
}

impl Subset {
    /// `n` distinct indices drawn from `seed`; all of them when `n >= inner.len()`.
    pub fn new(inner: Arc<dyn Dataset>, n: usize, seed: u64) -> Subset {
        let len = inner.len();
        let indices = if n >= len {
            (0..len).collect()
        } else {
            let mut rng = rng::rng_from_key(rng::key(&[domain::SUBSET, seed, len as u64, n as u64]));
            let mut v = sample(&mut rng, len, n).into_vec();
            v.sort_unstable();
            v
        };
        Subset { inner, indices }
    }

    pub fn from_indices(inner: Arc<dyn Dataset>, indices: Vec<usize>) -> Result<Subset, DataError> {
        if let Some(&bad) = indices.iter().find(|&&i| i >= inner.len()) {
            return Err(DataError::Index { index: bad, len: inner.len() });
        }
        Ok(Subset { inner, indices })
    }

    /// Index in the wrapped dataset of this subset's sample `i`.
    pub fn parent_index(&self, i: usize) -> usize {
        self.indices[i]
    }

    pub fn indices(&self) -> &[usize] {
        &self.indices
    }
}

impl Dataset for Subset {
    fn len(&self) -> usize {
        self.indices.len()
    }
    fn num_classes(&self) -> usize {
        self.inner.num_classes()
    }
    fn class_names(&self) -> Vec<String> {
        self.inner.class_names()
    }
    fn label(&self, index: usize) -> usize {
        self.inner.label(self.indices[index])
    }
    fn load(&self, index: usize) -> Result<Sample, DataError> {
        let &i = self.indices.get(index).ok_or(DataError::Index { index, len: self.indices.len() })?;
        self.inner.load(i)
    }
    fn bbox(&self, index: usize) -> Option<BBox> {
        self.inner.bbox(self.indices[index])
    }
    fn skip_bad_images(&self) -> bool {
        self.inner.skip_bad_images()
    }
    fn bad_files(&self) -> Vec<String> {
        self.inner.bad_files()
    }
}
