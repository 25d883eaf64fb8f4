//! SwAV head, prototypes and queue (Caron et al. 2020; `src/resnet50.py` and `main_swav.py`
//! of facebookresearch/swav).
//!
//! Per training step, as SwAV:
//! 1. `head = head.normalize_prototypes()` (prototype vectors to unit norm, no gradient);
//! 2. `(z, scores) = head.forward(features_of_all_crops)`, split per crop with `chunk`;
//! 3. if a queue is in use and full: `queue.scores(head.prototype_matrix())` goes to
//!    `swav_loss` as `queue_scores`; *then* `queue.push(i, z_of_assignment_crop_i)`;
//! 4. backward, `GradientsParams::from_grads`, and while `iteration < freeze_iters`
//!    `head.freeze_prototypes(&mut grads)` before the optimiser step.

use burn::config::Config;
use burn::module::{Module, ParamId};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig};
use burn::optim::GradientsParams;
use burn::tensor::activation::relu;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use sca_kernels::{gemm_linear, gemm_matmul};
use serde::{Deserialize, Serialize};

use crate::l2_normalize;

/// Configuration of [`SwavHead`]. Defaults are SwAV's ResNet-50 ones except `in_dim`.
#[derive(Config, Debug)]
pub struct SwavHeadConfig {
    /// Pooled backbone feature size (2048 for ResNet-50, 512 for ResNet-18/34).
    pub in_dim: usize,
    /// Hidden width of the projection MLP; 0 gives a single linear layer (SwAV `hidden_mlp=0`).
    #[config(default = 2048)]
    pub hidden_dim: usize,
    /// Output (embedding) size d.
    #[config(default = 128)]
    pub out_dim: usize,
    /// Number of prototypes K.
    #[config(default = 3000)]
    pub n_prototypes: usize,
}

impl SwavHeadConfig {
    /// Linear layers with Burn's default init (uniform ±1/√fan_in, as PyTorch's `nn.Linear`);
    /// BN γ = 1, β = 0.
    pub fn init<B: Backend>(&self, device: &B::Device) -> SwavHead<B> {
        let (fc1, bn1, fc2) = if self.hidden_dim == 0 {
            (
                LinearConfig::new(self.in_dim, self.out_dim).init(device),
                None,
                None,
            )
        } else {
            (
                LinearConfig::new(self.in_dim, self.hidden_dim).init(device),
                Some(BatchNormConfig::new(self.hidden_dim).init(device)),
                Some(LinearConfig::new(self.hidden_dim, self.out_dim).init(device)),
            )
        };
        SwavHead {
            fc1,
            bn1,
            fc2,
            prototypes: LinearConfig::new(self.out_dim, self.n_prototypes)
                .with_bias(false)
                .init(device),
        }
    }
}

/// Projection head `in → hidden (BN, ReLU) → out`, L2-normalised, then the prototypes.
#[derive(Module, Debug)]
pub struct SwavHead<B: Backend> {
    /// First projection layer (`in → hidden`, or `in → out` without a hidden layer).
    pub fc1: Linear<B>,
    /// BatchNorm1d after `fc1` (absent without a hidden layer).
    pub bn1: Option<BatchNorm<B>>,
    /// Second projection layer `hidden → out` (absent without a hidden layer).
    pub fc2: Option<Linear<B>>,
    /// Prototypes: bias-free `Linear(out, K)`. Burn stores the weight as `[out, K]`, so the
    /// K prototype vectors are its **columns** (PyTorch's rows).
    pub prototypes: Linear<B>,
}

impl<B: Backend> SwavHead<B> {
    /// `features [N, in] → (z [N, out] unit rows, scores [N, K] = z·C)`.
    pub fn forward(&self, features: Tensor<B, 2>) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let mut x = gemm_linear(&self.fc1, features);
        if let (Some(bn), Some(fc2)) = (&self.bn1, &self.fc2) {
            x = gemm_linear(fc2, relu(crate::norm::batch_norm_1d(bn, x)));
        }
        let z = l2_normalize(x);
        let scores = gemm_linear(&self.prototypes, z.clone());
        (z, scores)
    }

    /// Re-normalise every prototype vector to unit L2 norm, as SwAV does (under `no_grad`)
    /// before every step: `w = F.normalize(w, dim=1)` in PyTorch's `[K, d]` layout, i.e.
    /// per **column** of Burn's `[d, K]` weight. The parameter keeps its id (so optimiser
    /// state stays attached) and its `require_grad` flag; the rescaling itself is not
    /// differentiated through.
    pub fn normalize_prototypes(mut self) -> Self {
        self.prototypes.weight = self.prototypes.weight.map(|w| {
            let require_grad = w.is_require_grad();
            // A fresh untracked tensor: Burn's `detach` keeps the require-grad flag, and a
            // tensor computed from a tracked one cannot be made a leaf again.
            let w = w.set_require_grad(false);
            let norm = w.clone().square().sum_dim(0).sqrt().clamp_min(1e-12); // [1, K]
            w.div(norm).set_require_grad(require_grad)
        });
        self
    }

    /// Id of the prototype weight, e.g. to drop it from a `GradientsParams`.
    pub fn prototype_param_id(&self) -> ParamId {
        self.prototypes.weight.id
    }

    /// The prototype matrix `[out, K]` (columns are prototypes), detached: scores of queued
    /// embeddings are `queue · matrix`.
    pub fn prototype_matrix(&self) -> Tensor<B, 2> {
        self.prototypes
            .weight
            .val()
            .detach()
            .set_require_grad(false)
    }

    /// Number of prototypes K.
    pub fn n_prototypes(&self) -> usize {
        self.prototypes.weight.dims()[1]
    }
}

impl<B: AutodiffBackend> SwavHead<B> {
    /// Freeze the prototypes for this step: removes their gradient from `grads`, so the
    /// optimiser skips the parameter entirely (no update, no weight decay, no momentum
    /// change), exactly like SwAV's `p.grad = None` for the first `freeze_prototypes_niters`
    /// (313) iterations. Call it after `GradientsParams::from_grads`/`from_module` and before
    /// `optim.step`. Returns whether a gradient was there.
    pub fn freeze_prototypes(&self, grads: &mut GradientsParams) -> bool {
        grads
            .remove::<B::InnerBackend, 2>(self.prototype_param_id())
            .is_some()
    }
}

/// SwAV's feature queue: one FIFO of `L` embeddings per assignment crop, newest rows first
/// (`queue[i, bs:] = queue[i, :-bs]; queue[i, :bs] = z`). Rows are detached.
///
/// SwAV uses a queue once it is full (its last row non-zero). Score it with the current
/// prototypes *before* pushing the current batch.
#[derive(Clone, Debug)]
pub struct SwavQueue<B: Backend> {
    queues: Vec<Tensor<B, 2>>,
    filled: Vec<usize>,
}

/// Plain data of a [`SwavQueue`] for checkpoints (row-major `[L, dim]` per queue).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SwavQueueData {
    /// Queue length L.
    pub length: usize,
    /// Embedding size.
    pub dim: usize,
    /// Rows written so far per queue (at most L).
    pub filled: Vec<usize>,
    /// `[L·dim]` values per queue.
    pub values: Vec<Vec<f32>>,
}

impl<B: Backend> SwavQueue<B> {
    /// `n_queues` empty (zero) queues of `length × dim`.
    pub fn new(n_queues: usize, length: usize, dim: usize, device: &B::Device) -> Self {
        Self {
            queues: (0..n_queues)
                .map(|_| Tensor::zeros([length, dim], device))
                .collect(),
            filled: vec![0; n_queues],
        }
    }

    /// Queue length L.
    pub fn length(&self) -> usize {
        self.queues.first().map_or(0, |q| q.dims()[0])
    }

    /// Number of queues (one per assignment crop).
    pub fn n_queues(&self) -> usize {
        self.queues.len()
    }

    /// Whether every queue holds L real rows (SwAV's condition to start using it).
    pub fn is_full(&self) -> bool {
        let l = self.length();
        self.filled.iter().all(|&f| f >= l)
    }

    /// Push `z [n, dim]` to the front of queue `i`, dropping the oldest `n` rows.
    pub fn push(&mut self, i: usize, z: Tensor<B, 2>) {
        let l = self.length();
        let n = z.dims()[0];
        let z = z.detach().set_require_grad(false);
        self.queues[i] = if n >= l {
            z.narrow(0, 0, l)
        } else {
            let old = self.queues[i].clone().narrow(0, 0, l - n);
            Tensor::cat(vec![z, old], 0)
        };
        self.filled[i] = (self.filled[i] + n).min(l);
    }

    /// The queue of crop `i` (`[L, dim]`, newest first).
    pub fn queue(&self, i: usize) -> Tensor<B, 2> {
        self.queues[i].clone()
    }

    /// Scores `[L, K]` of every queue against `prototypes` (`[dim, K]`, e.g.
    /// [`SwavHead::prototype_matrix`]); detached, ready for `swav_loss`'s `queue_scores`.
    pub fn scores(&self, prototypes: Tensor<B, 2>) -> Vec<Tensor<B, 2>> {
        let c = prototypes.detach().set_require_grad(false);
        self.queues
            .iter()
            .map(|q| gemm_matmul(q.clone(), c.clone()))
            .collect()
    }

    /// Copy out for a checkpoint.
    pub fn to_data(&self) -> SwavQueueData {
        let dim = self.queues.first().map_or(0, |q| q.dims()[1]);
        SwavQueueData {
            length: self.length(),
            dim,
            filled: self.filled.clone(),
            values: self
                .queues
                .iter()
                .map(|q| {
                    q.to_data()
                        .convert::<f32>()
                        .to_vec::<f32>()
                        .expect("f32 queue")
                })
                .collect(),
        }
    }

    /// Rebuild from a checkpoint.
    pub fn from_data(data: &SwavQueueData, device: &B::Device) -> Self {
        assert_eq!(
            data.values.len(),
            data.filled.len(),
            "one fill count per queue"
        );
        Self {
            queues: data
                .values
                .iter()
                .map(|v| {
                    Tensor::from_data(TensorData::new(v.clone(), [data.length, data.dim]), device)
                })
                .collect(),
            filled: data.filled.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::*;
    use burn::module::Param;
    use burn::optim::Optimizer;
    use sca_losses::swav_loss;
    use sca_optim::LarsConfig;

    fn small() -> SwavHeadConfig {
        SwavHeadConfig::new(8)
            .with_hidden_dim(16)
            .with_out_dim(4)
            .with_n_prototypes(5)
    }

    fn row_norms(x: Tensor<B, 2>) -> Vec<f32> {
        vals(x.square().sum_dim(1).sqrt())
    }

    #[test]
    fn shapes_and_unit_embeddings() {
        for hidden in [16, 0] {
            let head = small()
                .with_hidden_dim(hidden)
                .init::<B>(&dev())
                .normalize_prototypes();
            let (z, scores) = head.forward(features(6, 8, 1));
            assert_eq!(z.dims(), [6, 4]);
            assert_eq!(scores.dims(), [6, 5]);
            assert_close(&row_norms(z), &[1.0; 6], 1e-5);
            // unit z and unit prototypes: scores are cosines
            let max = vals(scores.abs().max())[0];
            assert!(max <= 1.0 + 1e-5, "score {max} is not a cosine");
        }
        assert_eq!(small().init::<B>(&dev()).n_prototypes(), 5);
        // 8·16+16 + 4·16 (BN γ, β and Burn also counts the running mean/var) + 16·4+4
        // + 4·5 (prototypes, no bias)
        assert_eq!(small().init::<B>(&dev()).num_params(), 144 + 64 + 68 + 20);
    }

    #[test]
    fn prototypes_are_normalised_per_column() {
        let mut head = SwavHeadConfig::new(3)
            .with_hidden_dim(0)
            .with_out_dim(2)
            .with_n_prototypes(3)
            .init::<AB>(&dev());
        // [d=2, K=3]: prototypes (3,4), (0,2), (1,0) are the columns.
        head.prototypes.weight =
            Param::from_tensor(t2::<AB>(&[&[3.0, 0.0, 1.0], &[4.0, 2.0, 0.0]]));
        let id = head.prototype_param_id();
        let head = head.normalize_prototypes();
        assert_close(
            &vals(head.prototype_matrix()),
            &[0.6, 0.0, 1.0, 0.8, 1.0, 0.0],
            1e-7,
        );
        assert_eq!(
            head.prototype_param_id(),
            id,
            "same parameter, optimiser state stays"
        );
        assert!(
            head.prototypes.weight.val().is_require_grad(),
            "still trainable"
        );
    }

    /// One SGD step on a SwAV loss; returns (prototypes before, after, fc1 before, after).
    fn one_step(freeze: bool) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
        let head = small().init::<AB>(&dev()).normalize_prototypes();
        let p0 = vals(head.prototype_matrix());
        let f0 = vals(head.fc1.weight.val());
        let (_, scores) = head.forward(Tensor::cat(vec![features(4, 8, 2), features(4, 8, 3)], 0));
        let crops = scores.chunk(2, 0);
        let loss = swav_loss(&crops, &[0, 1], 0.1, 0.05, 3, None, &sca_dist::Replica::single());
        let mut grads = GradientsParams::from_grads(loss.backward(), &head);
        if freeze {
            assert!(
                head.freeze_prototypes(&mut grads),
                "prototypes had a gradient"
            );
        }
        let mut optim = LarsConfig::sgd(0.9, 1e-4).init::<AB, SwavHead<AB>>();
        let head = optim.step(0.5, head, grads);
        (
            p0,
            vals(head.prototype_matrix()),
            f0,
            vals(head.fc1.weight.val()),
        )
    }

    fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn frozen_prototypes_are_not_updated() {
        let (p0, p1, f0, f1) = one_step(true);
        assert_eq!(p0, p1, "frozen prototypes moved");
        assert!(
            max_abs_diff(&f0, &f1) > 1e-6,
            "the projection must still learn"
        );
        // Control: without freezing the same step moves the prototypes.
        let (p0, p1, _, _) = one_step(false);
        assert!(
            max_abs_diff(&p0, &p1) > 1e-6,
            "unfrozen prototypes did not move"
        );
    }

    fn rows(q: &SwavQueue<B>, i: usize) -> Vec<f32> {
        vals(q.queue(i))
    }

    #[test]
    fn queue_is_fifo_newest_first() {
        let mut q = SwavQueue::<B>::new(2, 4, 2, &dev());
        q.push(0, t2(&[&[1.0, 1.0], &[2.0, 2.0]]));
        assert_eq!(rows(&q, 0), [1.0, 1.0, 2.0, 2.0, 0.0, 0.0, 0.0, 0.0]);
        assert!(!q.is_full());
        q.push(0, t2(&[&[3.0, 3.0], &[4.0, 4.0]]));
        assert_eq!(rows(&q, 0), [3.0, 3.0, 4.0, 4.0, 1.0, 1.0, 2.0, 2.0]);
        assert!(!q.is_full(), "queue 1 is still empty");
        q.push(1, t2(&[&[9.0, 0.0], &[8.0, 0.0], &[7.0, 0.0], &[6.0, 0.0]]));
        assert!(q.is_full());
        q.push(0, t2(&[&[5.0, 5.0], &[6.0, 6.0]]));
        assert_eq!(rows(&q, 0), [5.0, 5.0, 6.0, 6.0, 3.0, 3.0, 4.0, 4.0]);
        // A batch longer than the queue keeps its first L rows.
        let mut short = SwavQueue::<B>::new(1, 2, 1, &dev());
        short.push(0, t2(&[&[1.0], &[2.0], &[3.0]]));
        assert_eq!(rows(&short, 0), [1.0, 2.0]);

        // scores = queue · C, C = [[1, 0, 1], [0, 1, 1]] (prototypes are columns)
        let s = q.scores(t2(&[&[1.0, 0.0, 1.0], &[0.0, 1.0, 1.0]]));
        assert_eq!(
            vals(s[1].clone()),
            [9.0, 0.0, 9.0, 8.0, 0.0, 8.0, 7.0, 0.0, 7.0, 6.0, 0.0, 6.0]
        );

        // checkpoint round trip
        let data = q.to_data();
        assert_eq!(data.filled, vec![4, 4]);
        let back = SwavQueue::<B>::from_data(&data, &dev());
        assert_eq!(back.to_data(), data);
        assert!(back.is_full());
    }
}
