//! `sca`: the command-line front end. The only place that reads files, parses configs
//! and chooses a device; everything else lives in the library crates.

mod cmd;
mod curves;
mod datasets;
mod device;
mod files;
mod gpu_cache;
mod run_dir;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "sca", version, about = "Spatial cross-attention self-supervised learning (SwAV / SimSiam + add-on)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Where the CUDA backend keeps its autotune results and compiled kernels, so later runs
    /// start warm (unused on the CPU).
    #[arg(long, global = true, default_value = gpu_cache::DEFAULT_CACHE_DIR)]
    gpu_cache: std::path::PathBuf,
    /// How hard the CUDA backend autotunes kernels (default: CubeCL's, `balanced`).
    #[arg(long, global = true, value_enum)]
    autotune: Option<gpu_cache::Autotune>,
    /// Which implicit-GEMM kernel each convolution pass runs on CUDA (a JSON plan from
    /// `sca bench convs`; default: `conv-plan.json` in the GPU cache if there is one).
    #[arg(long, global = true)]
    conv_plan: Option<std::path::PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Print a backbone's parameter count and stage output shapes.
    Info(cmd::info::Args),
    /// Create, load and save backbone weights (torchvision-compatible safetensors).
    Weights(cmd::weights::Args),
    /// Inspect datasets, preview augmentations, build subsets.
    #[command(subcommand)]
    Data(cmd::data::DataCommand),
    /// Pretrain a backbone (SwAV or SimSiam, with or without the add-on).
    Pretrain(cmd::pretrain::Args),
    /// Weighted KNN accuracy of a backbone (k=200, T=0.1).
    EvalKnn(cmd::eval::KnnArgs),
    /// Linear probe on frozen backbone features.
    EvalLinear(cmd::eval::LinearArgs),
    /// CAM Average Drop / Average Increase (and localisation where boxes exist).
    CamMetrics(cmd::eval::CamArgs),
    /// Export a backbone for torchvision and Detectron2.
    Export(cmd::export::Args),
    /// Train a few steps on the GPU and on the CPU from one start and compare them.
    CheckDevice(cmd::check::Args),
    /// Throughput benchmarks (training step, add-on share, k-means, the GPU set, convolution kernels).
    #[command(subcommand)]
    Bench(cmd::bench::BenchCommand),
}

fn main() {
    let cli = Cli::parse();
    // Applied when a command picks CUDA (device.rs), so CPU runs create no cache directory.
    gpu_cache::request(gpu_cache::Requested { cache: cli.gpu_cache, level: cli.autotune, plan: cli.conv_plan });
    let result = match cli.command {
        Command::Info(args) => cmd::info::run(args),
        Command::Weights(args) => cmd::weights::run(args),
        Command::Data(args) => cmd::data::run(args),
        Command::Pretrain(args) => cmd::pretrain::run(args),
        Command::EvalKnn(args) => cmd::eval::run_knn(args),
        Command::EvalLinear(args) => cmd::eval::run_linear(args),
        Command::CamMetrics(args) => cmd::eval::run_cam(args),
        Command::Export(args) => cmd::export::run(args),
        Command::Bench(args) => cmd::bench::run(args),
        Command::CheckDevice(args) => cmd::check::run(args),
    };
    if let Err(err) = result {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}
