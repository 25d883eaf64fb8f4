//! Cluster-size statistics and normalised mutual information.

use std::collections::HashMap;

/// Summary of the cluster sizes, for the training log.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterStats {
    pub min: usize,
    pub max: usize,
    /// Mean over all C clusters (= N / C).
    pub mean: f64,
    pub empty: usize,
}

/// Members per cluster for labels in `0..clusters`.
pub fn cluster_sizes(labels: &[u32], clusters: usize) -> Vec<usize> {
    let mut sizes = vec![0; clusters];
    for &l in labels {
        sizes[l as usize] += 1;
    }
    sizes
}

pub fn cluster_stats(sizes: &[usize]) -> ClusterStats {
    let total: usize = sizes.iter().sum();
    ClusterStats {
        min: sizes.iter().copied().min().unwrap_or(0),
        max: sizes.iter().copied().max().unwrap_or(0),
        mean: if sizes.is_empty() {
            0.0
        } else {
            total as f64 / sizes.len() as f64
        },
        empty: sizes.iter().filter(|&&s| s == 0).count(),
    }
}

/// Normalised mutual information with arithmetic-mean normalisation,
/// `I(U;V) / ((H(U) + H(V)) / 2)`, natural logs; scikit-learn's
/// `normalized_mutual_info_score` default, including its edge cases.
pub fn nmi(pred: &[u32], truth: &[usize]) -> f64 {
    assert_eq!(
        pred.len(),
        truth.len(),
        "nmi: label lists of different lengths"
    );
    let n = pred.len() as f64;
    let mut joint: HashMap<(u32, usize), usize> = HashMap::new();
    let mut pc: HashMap<u32, usize> = HashMap::new();
    let mut tc: HashMap<usize, usize> = HashMap::new();
    for (&p, &t) in pred.iter().zip(truth) {
        *joint.entry((p, t)).or_default() += 1;
        *pc.entry(p).or_default() += 1;
        *tc.entry(t).or_default() += 1;
    }
    // Both labelings unsplit (or empty): a perfect match.
    if pc.len() == tc.len() && pc.len() <= 1 {
        return 1.0;
    }
    let mut mi = 0.0;
    for (&(p, t), &c) in &joint {
        let c = c as f64;
        mi += c / n * (c * n / (pc[&p] as f64 * tc[&t] as f64)).ln();
    }
    // Independence (up to round-off): no information either way.
    if mi <= 1e-15 {
        return 0.0;
    }
    let entropy = |counts: Vec<usize>| -> f64 {
        counts
            .into_iter()
            .map(|c| c as f64 / n)
            .map(|q| -q * q.ln())
            .sum()
    };
    let h = (entropy(pc.into_values().collect()) + entropy(tc.into_values().collect())) / 2.0;
    mi / h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[rustfmt::skip]
    fn nmi_hand_cases() {
        fn check(pred: &[u32], truth: &[usize], expected: f64) {
            let got = nmi(pred, truth);
            assert!((got - expected).abs() < 1e-12, "nmi({pred:?}, {truth:?}) = {got}, expected {expected}");
        }
        let ln = f64::ln;
        check(&[0, 0, 1, 1], &[0, 0, 1, 1], 1.0);
        check(&[5, 5, 2, 2, 9], &[0, 0, 1, 1, 2], 1.0); // relabelled
        check(&[0, 1, 0, 1], &[0, 0, 1, 1], 0.0); // independent
        check(&[0, 0, 0, 0], &[0, 0, 1, 1], 0.0); // one side unsplit
        check(&[3, 3, 3], &[1, 1, 1], 1.0);
        check(&[], &[], 1.0);
        // Contingency {(0,0): 2, (0,1): 1, (1,1): 1} of 4:
        // MI = ½ln(4/3) + ¼ln(2/3) + ¼ln2, H(pred) = −¾ln¾ − ¼ln¼, H(truth) = ln2.
        let mi = 0.5 * ln(4.0 / 3.0) + 0.25 * ln(2.0 / 3.0) + 0.25 * ln(2.0);
        let h = (-0.75 * ln(0.75) - 0.25 * ln(0.25) + ln(2.0)) / 2.0;
        check(&[0, 0, 0, 1], &[0, 0, 1, 1], mi / h);
        check(&[0, 0, 1, 1], &[0, 0, 0, 1], mi / h); // symmetric
        // All-singleton prediction: MI = H(truth) = −⅔ln⅔ − ⅓ln⅓, H(pred) = ln3.
        let ht = -(2.0 / 3.0) * ln(2.0 / 3.0) - (1.0 / 3.0) * ln(1.0 / 3.0);
        check(&[0, 1, 2], &[0, 0, 1], ht / ((ht + ln(3.0)) / 2.0));
    }

    #[test]
    #[rustfmt::skip]
    fn stats_of_sizes() {
        fn check(labels: &[u32], clusters: usize, sizes: &[usize], stats: ClusterStats) {
            let s = cluster_sizes(labels, clusters);
            assert_eq!(s, sizes);
            assert_eq!(cluster_stats(&s), stats);
        }
        check(&[0, 0, 2, 2, 2], 4, &[2, 0, 3, 0], ClusterStats { min: 0, max: 3, mean: 1.25, empty: 2 });
        check(&[1, 0], 2, &[1, 1], ClusterStats { min: 1, max: 1, mean: 1.0, empty: 0 });
        check(&[], 0, &[], ClusterStats { min: 0, max: 0, mean: 0.0, empty: 0 });
    }
}
