//! Memory bank, k-means on the device, pseudo-labels and positive sampling
//! (SPEC §4 items 1-2, paper §2.3 and supplementary 1.1).
//!
//! Pure tensor code: no file I/O, no device choice. Everything is generic over
//! `B: Backend`; use a non-autodiff backend (or `B::InnerBackend`) for the bank and
//! k-means, they never need gradients.
//!
//! # Design choices
//! - **Bank** ([`MemoryBank`]): `N×d` on the device, rows L2-normalised on write (like
//!   `F.normalize`, eps 1e-12). Writes (in order, [`MemoryBank::write`], or scattered,
//!   [`MemoryBank::write_rows`]) are kept as pieces and merged into the bank by one
//!   concatenation and one row gather when it is read: time linear in N, peak memory
//!   about twice the bank while merging. Updating one `N×d` tensor with `slice_assign`
//!   per batch is not linear on Flex 0.21 (it copies the whole destination each time).
//! - **k-means** ([`kmeans()`]): Lloyd iterations on the device. Each pass walks the rows
//!   in chunks whose score matrix `rows×C` stays under [`DEFAULT_CHUNK_ELEMS`]; the
//!   assignment is a matmul plus an argmax, and the per-cluster sums of the same pass
//!   are a scatter-add of the chunk's rows (`select_assign(.., Add)`): Flex and CubeCL
//!   both add the rows of one column in index order, so the sums are deterministic, and
//!   it cost 0.02 s per 100k×128 pass (C = 1000) on the CPU, a one-hot matmul about 2 s.
//!   Counts, costs and labels come back to the host once per pass
//!   (N numbers). `Cosine` is spherical k-means (centroids re-normalised, rows assumed
//!   unit-norm as the bank stores them); `Euclidean` uses means and exact squared
//!   distances. Every returned assignment is the nearest of the returned centroids (a
//!   final assignment pass follows the last update).
//! - **Empty clusters** are re-seeded after each assignment pass, in cluster order,
//!   with the points farthest from their own centroid (ties: lower index), taken only
//!   from clusters that keep at least one member; the point's contribution moves from
//!   its old cluster's sums to the new one, as scikit-learn does.
//! - **Init**: k-means++ (plain, one candidate per step) or a uniform sample of distinct
//!   points, both driven by a ChaCha8 RNG seeded from the config, never by the
//!   backend's global RNG. k-means++ runs on the device with two small read-backs per
//!   centre (block sums of D², then the block the draw lands in); for N above [`KMeansConfig::plus_plus_candidates`] it seeds from a seeded
//!   uniform subset of that many points, which bounds its cost (C passes over the
//!   subset) at ImageNet scale.
//! - **Stopping**: a fixed iteration budget (SPEC), cut short when no assignment changes
//!   (a fixed point: further passes cannot move anything) or, if `tolerance` is set,
//!   when the total squared centroid shift falls to or below it.
//! - **Positives** ([`PositiveSampler`]): members of the source's cluster, the source
//!   itself excluded when the cluster has others; without replacement when the cluster
//!   has at least P others; otherwise with replacement, balanced (each other member
//!   appears ⌊P/m⌋ or ⌈P/m⌉ times, shuffled) so a small cluster is still covered;
//!   a cluster of one yields the source P times. Deterministic in
//!   (labels, source, P, key): ChaCha8 seeded by the key, stream = source index.
//! - **NMI** ([`nmi`]): arithmetic-mean normalisation, scikit-learn's default and edge
//!   cases (two single-cluster labelings give 1, zero mutual information gives 0).

pub mod bank;
pub mod kmeans;
pub mod positives;
pub mod stats;

pub use bank::{l2_normalize, BankError, MemoryBank};
pub use kmeans::{
    assign, kmeans, kmeans_from, Assignment, KMeansConfig, KMeansError, KMeansInit, KMeansResult,
    Metric, DEFAULT_CHUNK_ELEMS,
};
pub use positives::PositiveSampler;
pub use stats::{cluster_sizes, cluster_stats, nmi, ClusterStats};
