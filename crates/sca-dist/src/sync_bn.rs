//! Synchronised batch norm: which sum over replicas training-mode batch norm layers on this
//! thread use. The training loop installs it per replica thread; the layers (backbone and
//! projection heads) ask for it with [`get`].

use std::any::Any;
use std::cell::RefCell;
use std::rc::Rc;

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// Sums a per-channel statistic (`[1, C]`) over all replicas, inside the autodiff graph.
pub type StatSum<B> = Rc<dyn Fn(Tensor<B, 2>) -> Tensor<B, 2>>;

thread_local! {
    static SYNC: RefCell<Option<(usize, Box<dyn Any>)>> = const { RefCell::new(None) };
}

/// Makes training-mode batch norm on this thread use the statistics of the global batch
/// until the returned guard is dropped: `replicas` replicas with equally large batches, whose
/// per-channel sums `sum` adds up. Every replica must run the same layers in the same order.
#[must_use = "synchronisation ends when the guard is dropped"]
pub fn install<B: Backend>(replicas: usize, sum: StatSum<B>) -> Installed {
    SYNC.with(|s| *s.borrow_mut() = Some((replicas, Box::new(sum) as Box<dyn Any>)));
    Installed(())
}

/// Switches synchronised batch norm on this thread off when dropped (error paths included).
pub struct Installed(());

impl Drop for Installed {
    fn drop(&mut self) {
        SYNC.with(|s| *s.borrow_mut() = None);
    }
}

/// The synchronisation installed on this thread for backend `B`, if any.
pub fn get<B: Backend>() -> Option<(usize, StatSum<B>)> {
    SYNC.with(|s| s.borrow().as_ref().and_then(|(n, f)| f.downcast_ref::<StatSum<B>>().map(|f| (*n, f.clone()))))
}

/// Mean and biased variance per channel of `x` (`[N, C]`) over the global batch of
/// `replicas` replicas, as two passes (sums, then centred squares), each summed by `sum`.
pub fn global_stats<B: Backend>(x: Tensor<B, 2>, replicas: usize, sum: &StatSum<B>) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let count = (x.dims()[0] * replicas) as f64;
    let mean = sum(x.clone().sum_dim(0)).div_scalar(count);
    let var = sum((x - mean.clone()).square().sum_dim(0)).div_scalar(count);
    (mean, var)
}
