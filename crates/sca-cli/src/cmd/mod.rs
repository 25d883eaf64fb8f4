//! One module per subcommand: its clap `Args` and a `run` function.
pub mod bench;
pub mod bench_convs;
pub mod check;
pub mod data;
pub mod eval;
pub mod export;
pub mod info;
pub mod pretrain;
pub mod weights;
