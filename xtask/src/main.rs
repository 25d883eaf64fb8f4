//! `cargo xtask`: the orchestrator. It has no Burn dependency; it builds the `sca` binary
//! in release mode and chains its stages, one module per task.

mod ablation;
mod pipeline;
mod sca;
mod test;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "Project tasks: build, test, train, evaluate, benchmark")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Run exactly what CI runs: the whole workspace test suite.
    Test,
    /// Pretrain (SwAV + add-on on the built-in dataset by default). Extra arguments go to `sca pretrain`.
    Pretrain(sca::StageArgs),
    /// Linear probe on a pretrained run. Extra arguments go to `sca eval-linear`.
    EvalLinear(sca::StageArgs),
    /// CAM Average Drop / Average Increase. Extra arguments go to `sca cam-metrics`.
    CamMetrics(sca::StageArgs),
    /// Pretrain, evaluate (KNN, linear, CAM) and export into one run directory.
    Pipeline(pipeline::Args),
    /// SwAV / SimSiam with and without the add-on, same budget and seeds; table to docs/RESULTS.md.
    Ablation(ablation::Args),
    /// Benchmarks (`bench data`, `bench pretrain`, `bench kmeans`, `bench addon`, `bench gpu`, `bench convs`, `bench distributed`, `bench launches`).
    Bench(sca::StageArgs),
}

fn main() -> anyhow::Result<()> {
    let sh = xshell::Shell::new()?;
    sh.change_dir(project_root());
    match Cli::parse().task {
        Task::Test => test::run(&sh),
        Task::Pretrain(a) => sca::stage(&sh, "pretrain", a),
        Task::EvalLinear(a) => sca::stage(&sh, "eval-linear", a),
        Task::CamMetrics(a) => sca::stage(&sh, "cam-metrics", a),
        Task::Bench(a) => sca::bench(&sh, a),
        Task::Pipeline(a) => pipeline::run(&sh, a),
        Task::Ablation(a) => ablation::run(&sh, a),
    }
}

fn project_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}
