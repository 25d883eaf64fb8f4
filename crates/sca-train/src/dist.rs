//! Data parallelism for the loop: gradients averaged over replicas in one bucket, and the
//! weights of replica 0 handed to every replica at the start.
//!
//! Parameters are walked in the module's structural order, which is the same on every
//! replica (parameter ids are random per process and cannot be used to pair tensors up).

use burn::module::{AutodiffModule, Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;
use sca_dist::Replica;

use crate::trainer::TrainError;

/// Replicas train on equal shares of the global batch (so that their mean losses and
/// gradients average to the global ones).
pub fn check_batch_split(batch_size: usize, world: usize) -> Result<(), TrainError> {
    match batch_size % world {
        0 => Ok(()),
        _ => Err(TrainError::Other(format!(
            "batch_size {batch_size} does not split evenly over {world} replicas; use a multiple of {world}"
        ))),
    }
}

/// Replaces `grads` (of `module`'s parameters) by their mean over all replicas: one
/// all-reduce of every gradient laid end to end. A parameter without a gradient here takes
/// part as zeros and stays without one.
pub fn average_gradients<B: AutodiffBackend, M: AutodiffModule<B>>(replica: &Replica, module: &M, grads: GradientsParams) -> GradientsParams {
    if replica.is_single() {
        return grads;
    }
    let mut take = Take::<B> { grads, flat: Vec::new(), present: Vec::new() };
    module.visit(&mut take);
    let Take { mut grads, flat, present, .. } = take;
    if flat.is_empty() {
        return grads;
    }
    let summed = replica.sum(Tensor::cat(flat.to_vec(), 0)).div_scalar(replica.world() as f64);
    let mut offset = 0;
    let mut pieces = Vec::with_capacity(flat.len());
    for t in &flat {
        let n = t.dims()[0];
        pieces.push(summed.clone().narrow(0, offset, n));
        offset += n;
    }
    let mut put = Put::<B> { grads: &mut grads, pieces: pieces.into_iter(), present: present.into_iter() };
    module.visit(&mut put);
    grads
}

type Inner<B> = <B as AutodiffBackend>::InnerBackend;

struct Take<B: AutodiffBackend> {
    grads: GradientsParams,
    /// Flattened gradient (or zeros) of every float parameter, in visiting order.
    flat: Vec<Tensor<Inner<B>, 1>>,
    present: Vec<bool>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Take<B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let shape = param.shape();
        let grad = self.grads.remove::<Inner<B>, D>(param.id);
        self.present.push(grad.is_some());
        let flat = match grad {
            Some(g) => g.reshape([shape.num_elements()]),
            None => Tensor::zeros([shape.num_elements()], &param.val().inner().device()),
        };
        self.flat.push(flat);
    }
}

struct Put<'a, B: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    pieces: std::vec::IntoIter<Tensor<Inner<B>, 1>>,
    present: std::vec::IntoIter<bool>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Put<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let piece = self.pieces.next().expect("one piece per parameter");
        if self.present.next().expect("one flag per parameter") {
            self.grads.register::<Inner<B>, D>(param.id, piece.reshape(param.shape()));
        }
    }
}

/// Every float tensor of `module` (parameters and running statistics) replaced by replica
/// 0's: all replicas start from the same weights whatever their own initialisation.
pub fn broadcast_from_root<B: Backend, M: Module<B>>(replica: &Replica, module: M) -> M {
    if replica.is_single() {
        return module;
    }
    module.map(&mut FromRoot { replica })
}

struct FromRoot<'a> {
    replica: &'a Replica,
}

impl<B: Backend> ModuleMapper<B> for FromRoot<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let root = self.replica.is_root();
        let replica = self.replica.clone();
        param.map(move |t| {
            // A new leaf with the same gradient setting (`map` would take the sum's).
            let require_grad = t.is_require_grad();
            replica.sum(if root { t.detach() } else { t.zeros_like() }).set_require_grad(require_grad)
        })
    }
}
