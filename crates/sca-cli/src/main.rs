//! `sca`: the command-line front end. The only place that reads files, parses configs
//! and chooses a device; everything else lives in the library crates.

mod cmd;
mod device;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "sca", version, about = "Spatial cross-attention self-supervised learning (SwAV / SimSiam + add-on)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
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
    /// Export a backbone for torchvision and Detectron2.
    Export(cmd::export::Args),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info(args) => cmd::info::run(args),
        Command::Weights(args) => cmd::weights::run(args),
        Command::Data(args) => cmd::data::run(args),
        Command::Export(args) => cmd::export::run(args),
    };
    if let Err(err) = result {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}
