//! Mixed precision trains like f32: the same run (same start, same batches) in f32, bf16
//! and f16 on the built-in scenes gives loss curves that track each other, the master
//! weights stay f32, and f16's loss scale is used, kept in checkpoints and restored.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use burn::backend::flex::FlexDevice;
use burn::backend::{Autodiff, Flex};
use burn::module::{AutodiffModule, Module, ModuleVisitor, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};
use sca_data::scenes::{Scenes, Split};
use sca_data::Dataset;
use sca_train::{Observer, RunEnd, StepMetrics, TrainConfig, Trainer};

type B = Autodiff<Flex>;

const DEFAULT: &str = include_str!("../../../configs/default.json");

fn config(precision: &str) -> TrainConfig {
    let o: Vec<String> = [
        "epochs=3", "batch_size=16", "model.small_stem=true", "data.image_size=32", "data.train_size=48",
        "data.augment.crops=[{\"count\":2,\"size\":32,\"min_scale\":0.3,\"max_scale\":1.0}]",
        "addon.clusters=4", "addon.kmeans_iterations=3", "eval.knn_every=0", "engine.freeze_prototypes_steps=1",
        &format!("precision={precision}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    sca_train::config::parse(DEFAULT, "default.json", &o).unwrap()
}

fn data() -> Arc<dyn Dataset> {
    Arc::new(Scenes::new(32, 4, 48, 0, Split::Train).unwrap())
}

#[derive(Default)]
struct Log {
    steps: Vec<StepMetrics>,
    last_checkpoint: Vec<u8>,
}

impl Observer for Log {
    fn step(&mut self, m: &StepMetrics) {
        self.steps.push(m.clone());
    }
    fn checkpoint(&mut self, bytes: Vec<u8>, _: Option<usize>) -> Result<(), String> {
        self.last_checkpoint = bytes;
        Ok(())
    }
}

/// Every float tensor's dtype.
struct DTypes(Vec<DType>);
impl<BB: Backend> ModuleVisitor<BB> for DTypes {
    fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<BB, D>>) {
        self.0.push(p.val().dtype());
    }
}

/// A whole run from the same initial weights (one f32 checkpoint restored into each), with
/// the phases of every step timed.
fn train(precision: &str, start: &[u8]) -> (Log, Trainer<B>) {
    let mut t = Trainer::<B>::new(config(precision), data(), None, FlexDevice);
    t.restore(start).unwrap();
    let phases = Rc::new(RefCell::new(Vec::new()));
    let sink = phases.clone();
    t.time_phases(Some(Box::new(move |phase, s| sink.borrow_mut().push((phase.to_string(), s)))));
    let mut log = Log::default();
    assert_eq!(t.run(&mut log).unwrap(), RunEnd::Finished);
    // Every step reports its phases (and the host's share of two), in order, as they end.
    let phases = phases.borrow();
    let order = ["upload", "forward_host", "forward", "backward_host", "backward", "optimiser"];
    assert_eq!(phases.len(), order.len() * log.steps.len(), "{precision}: {phases:?}");
    for (i, (phase, s)) in phases.iter().enumerate() {
        assert_eq!(phase, order[i % order.len()]);
        assert!(*s > 0.0 && *s < 600.0, "{phase}: {s} s");
    }
    (log, t)
}

#[test]
fn bf16_and_f16_train_like_f32_on_the_builtin_scenes() {
    B::seed(&FlexDevice, 11);
    let start = Trainer::<B>::new(config("f32"), data(), None, FlexDevice).checkpoint_bytes();
    let (f32_log, _) = train("f32", &start);
    assert_eq!(f32_log.steps.len(), 9, "3 epochs of 48 images in batches of 16");
    assert!(f32_log.steps.iter().all(|m| m.loss_scale.is_none() && !m.skipped));
    for precision in ["bf16", "f16"] {
        let (log, trainer) = train(precision, &start);
        assert_eq!(log.steps.len(), f32_log.steps.len());
        let mut largest = 0f64;
        for (m, want) in log.steps.iter().zip(&f32_log.steps) {
            for (term, got, want) in [("total", m.loss, want.loss), ("ssl", m.loss_ssl, want.loss_ssl)] {
                let rel = (got - want).abs() / want.abs();
                // Measured: bf16 within 2.5e-4 of f32 over the 9 steps; 1 % leaves room for
                // the drift of longer runs while a wrong cast or a lost gradient is far off.
                assert!(rel < 0.01, "{precision}, step {}: {term} loss {got} vs f32 {want}", m.step);
                largest = largest.max(rel);
            }
        }
        let curve = |l: &Log| l.steps.iter().map(|m| format!("{:.4}", m.loss)).collect::<Vec<_>>().join(" ");
        eprintln!("{precision}: total loss per step {}\n f32: {}\n largest relative difference {largest:.2e}", curve(&log), curve(&f32_log));
        // The setting does something: the curves are close, not identical.
        assert!(largest > 1e-6, "{precision}: losses identical to f32, were the convolutions cast?");
        let mut d = DTypes(Vec::new());
        trainer.model.valid().visit(&mut d);
        assert!(d.0.iter().all(|t| *t == DType::F32), "{precision}: master weights must stay f32, got {:?}", d.0);
        if precision == "f16" {
            assert!(log.steps.iter().all(|m| m.loss_scale == Some(sca_train::loss_scale::INITIAL_SCALE) && !m.skipped));
            // The scale and its clean-step count travel with the checkpoint.
            let mut resumed = Trainer::<B>::new(config("f16"), data(), None, FlexDevice);
            resumed.restore(&log.last_checkpoint).unwrap();
            let meta = sca_train::checkpoint::Container::decode(&resumed.checkpoint_bytes()).unwrap().meta;
            assert_eq!(meta["loss_scale"], serde_json::json!(sca_train::loss_scale::INITIAL_SCALE));
            assert_eq!(meta["loss_scale_good_steps"], serde_json::json!(9));
        } else {
            assert!(log.steps.iter().all(|m| m.loss_scale.is_none()), "bf16 needs no loss scaling");
        }
    }
}
