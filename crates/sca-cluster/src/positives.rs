//! Positive sampling: P images sharing the source's pseudo-label.

use rand::{seq::index, seq::SliceRandom, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Members of every cluster, stored flat (CSR) so 1.28M labels cost two arrays.
#[derive(Debug, Clone)]
pub struct PositiveSampler {
    labels: Vec<u32>,
    /// Cluster `c` owns `members[offsets[c]..offsets[c + 1]]`, indices ascending.
    offsets: Vec<usize>,
    members: Vec<usize>,
}

impl PositiveSampler {
    pub fn new(labels: &[u32]) -> Self {
        let clusters = labels.iter().map(|&l| l as usize + 1).max().unwrap_or(0);
        let mut offsets = vec![0usize; clusters + 1];
        for &l in labels {
            offsets[l as usize + 1] += 1;
        }
        for c in 0..clusters {
            offsets[c + 1] += offsets[c];
        }
        let mut next = offsets.clone();
        let mut members = vec![0; labels.len()];
        for (i, &l) in labels.iter().enumerate() {
            members[next[l as usize]] = i;
            next[l as usize] += 1;
        }
        Self {
            labels: labels.to_vec(),
            offsets,
            members,
        }
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// 1 + the largest label.
    pub fn num_clusters(&self) -> usize {
        self.offsets.len() - 1
    }

    pub fn label(&self, image: usize) -> u32 {
        self.labels[image]
    }

    pub fn labels(&self) -> &[u32] {
        &self.labels
    }

    /// Images of `cluster`, ascending.
    pub fn members(&self, cluster: u32) -> &[usize] {
        let c = cluster as usize;
        &self.members[self.offsets[c]..self.offsets[c + 1]]
    }

    /// `p` images with the same label as `source`: the source is excluded when its
    /// cluster has other members; drawn without replacement when at least `p` others
    /// exist, otherwise with replacement, balanced (each other member ⌊p/m⌋ or ⌈p/m⌉
    /// times, shuffled); a cluster of one yields `source` `p` times.
    /// Deterministic in (labels, source, p, rng_key).
    pub fn sample(&self, source: usize, p: usize, rng_key: u64) -> Vec<usize> {
        let members = self.members(self.labels[source]);
        if members.len() == 1 {
            return vec![source; p];
        }
        let me = members
            .binary_search(&source)
            .expect("source is a member of its cluster");
        let m = members.len() - 1;
        // The k-th other member, skipping the source.
        let other = |k: usize| members[if k < me { k } else { k + 1 }];
        let mut rng = ChaCha8Rng::seed_from_u64(rng_key);
        rng.set_stream(source as u64);
        if m >= p {
            return index::sample(&mut rng, m, p)
                .into_iter()
                .map(other)
                .collect();
        }
        let mut out: Vec<usize> = (0..p / m).flat_map(|_| (0..m).map(other)).collect();
        out.extend(index::sample(&mut rng, m, p % m).into_iter().map(other));
        out.shuffle(&mut rng);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LABELS: [u32; 12] = [0, 1, 0, 2, 1, 0, 3, 0, 1, 0, 4, 4];

    fn counts(v: &[usize]) -> std::collections::BTreeMap<usize, usize> {
        let mut m = std::collections::BTreeMap::new();
        for &x in v {
            *m.entry(x).or_default() += 1;
        }
        m
    }

    /// Sample for every key in 0..50 and check the multiset shape: which images may
    /// appear, how often each appears at most / at least.
    fn check(source: usize, p: usize, allowed: &[usize], min_each: usize, max_each: usize) {
        let s = PositiveSampler::new(&LABELS);
        for key in 0..50 {
            let got = s.sample(source, p, key);
            assert_eq!(got.len(), p);
            assert!(got.iter().all(|g| allowed.contains(g)), "{source}: {got:?}");
            assert!(got.iter().all(|&g| LABELS[g] == LABELS[source]));
            let c = counts(&got);
            assert!(
                c.values().all(|&n| n <= max_each),
                "{source} p={p}: {got:?}"
            );
            if min_each > 0 {
                assert!(
                    allowed
                        .iter()
                        .all(|a| c.get(a).copied().unwrap_or(0) >= min_each),
                    "{got:?}"
                );
            }
        }
        assert_eq!(s.sample(source, p, 7), s.sample(source, p, 7));
    }

    #[test]
    #[rustfmt::skip]
    fn positives_share_the_label_and_follow_replacement_rules() {
        // cluster 0 = {0, 2, 5, 7, 9}; 1 = {1, 4, 8}; 2 = {3}; 3 = {6}; 4 = {10, 11}
        check(0, 4, &[2, 5, 7, 9], 1, 1); // exactly the 4 others
        check(5, 2, &[0, 2, 7, 9], 0, 1); // without replacement
        check(1, 2, &[4, 8], 1, 1);
        check(4, 5, &[1, 8], 2, 3); // 2 others, 5 draws: balanced 2+3
        check(10, 3, &[11], 3, 3); // one other: it, 3 times
        check(3, 3, &[3], 3, 3); // alone: the source itself
        check(6, 1, &[6], 1, 1);
        check(9, 0, &[], 0, 0);
    }

    #[test]
    fn members_and_keys() {
        let s = PositiveSampler::new(&LABELS);
        assert_eq!(s.num_clusters(), 5);
        assert_eq!(s.members(0), &[0, 2, 5, 7, 9]);
        assert_eq!(s.members(4), &[10, 11]);
        // Different keys (and sources) give different draws somewhere.
        let draws: std::collections::BTreeSet<Vec<usize>> =
            (0..20).map(|k| s.sample(0, 2, k)).collect();
        assert!(draws.len() > 5, "{draws:?}");
        assert_ne!(
            (0..20).map(|k| s.sample(0, 2, k)).collect::<Vec<_>>(),
            (0..20).map(|k| s.sample(2, 2, k)).collect::<Vec<_>>()
        );
        // Without replacement covers every other member uniformly over many keys.
        let mut hits = counts(
            &(0..4000)
                .flat_map(|k| s.sample(9, 1, k))
                .collect::<Vec<_>>(),
        );
        let total: usize = hits.values().sum();
        assert_eq!(total, 4000);
        assert!(hits.values().all(|&n| (850..1150).contains(&n)), "{hits:?}");
        assert_eq!(hits.remove(&9), None);
    }
}
