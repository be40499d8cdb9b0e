//! The cli layer: argument parsing and the subcommands. Errors from the layers
//! below arrive as values and are printed as one line.

mod classify;
mod generate;
mod info;
mod probe;
mod progress;
mod train;
mod world;
mod world_models;

use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::{Parser, Subcommand, ValueEnum};

use foil::{DType, Device, Error, Result};

#[derive(Parser)]
#[command(name = "foil", version, about = "GPU compute framework and counterfactual probe-then-reinforce tool")]
struct Cli {
    /// Where to run: auto (the first GPU when one is usable, else the CPU), cpu, or cuda[:N].
    #[arg(long, global = true, default_value = "auto")]
    device: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the version, the backend chosen, and the GPU and its kernels when there is one.
    Info,
    /// Make images from a prompt with a diffusers Stable Diffusion folder (text-to-image, image-to-image).
    Generate(generate::GenerateArgs),
    /// Classify images with a torchvision ResNet saved as safetensors.
    Classify(classify::ClassifyArgs),
    /// Train models with foil's own autograd.
    #[command(subcommand)]
    Train(train::TrainCommand),
    /// The synthetic world: scenes with known causes, rendered with captions.
    #[command(subcommand)]
    World(world::WorldCommand),
    /// The whole loop on the shipped world and models (or yours): probe, reinforce, report.
    Run(probe::RunArgs),
    /// Find the attributes whose change flips a classifier, from counterfactual image pairs.
    Probe(probe::ProbeArgs),
    /// Fine-tune a classifier on counterfactuals of the weaknesses a probe found, and evaluate it.
    Reinforce(probe::ReinforceArgs),
}

/// The `--dtype` flag of the model commands.
#[derive(Clone, Copy, ValueEnum)]
enum DTypeArg {
    Auto,
    F32,
    F16,
    Bf16,
}

/// f16 weights and activations on a GPU (f32 accumulation inside the kernels), f32 on the CPU.
fn compute_dtype(arg: DTypeArg, device: &Device) -> DType {
    dtype_or(arg, device, DType::F16)
}

/// The `--dtype` flag's choice, `auto` being `on_gpu` on a GPU and f32 on the CPU.
fn dtype_or(arg: DTypeArg, device: &Device, on_gpu: DType) -> DType {
    match arg {
        DTypeArg::Auto if device.is_cuda() => on_gpu,
        DTypeArg::Auto | DTypeArg::F32 => DType::F32,
        DTypeArg::F16 => DType::F16,
        DTypeArg::Bf16 => DType::BF16,
    }
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            // Help with an after_help section (the examples) ends without a newline.
            let text = e.to_string();
            println!("{}", text.trim_end());
            return ExitCode::SUCCESS;
        }
        Err(e) if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            // clap would print the whole help; its first line is the about text, not an error.
            eprintln!("foil: error: no command given (see `foil --help`)");
            return ExitCode::from(2);
        }
        Err(e) => {
            // clap's own message spans several lines (tips, usage); keep its first, and
            // the indented list a first line ending in ':' introduces (the missing arguments).
            let text = e.to_string();
            let mut lines = text.lines();
            let mut first = lines.next().unwrap_or("invalid arguments").trim_start_matches("error: ").to_string();
            if first.ends_with(':') {
                let listed: Vec<&str> = lines.take_while(|l| l.starts_with("  ")).map(str::trim).collect();
                first = format!("{} {}", first, listed.join(", "));
            }
            eprintln!("foil: error: {first} (see `foil --help`)");
            return ExitCode::from(2);
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("foil: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let (device, fallback) = select_device(&cli.device)?;
    if let (Some(reason), false) = (&fallback, matches!(cli.command, Command::Info | Command::World(_))) {
        eprintln!("foil: no usable GPU ({reason}); running on the CPU");
    }
    match cli.command {
        Command::Info => info::run(&device, fallback.as_deref()),
        Command::Generate(args) => generate::run(args, &device),
        Command::Classify(args) => classify::run(args, &device),
        Command::Train(command) => train::run(command, &device),
        Command::World(command) => world::run(command, &device),
        Command::Run(args) => probe::run(args, &device),
        Command::Probe(args) => probe::probe_command(args, &device),
        Command::Reinforce(args) => probe::reinforce_command(args, &device),
    }
}

/// The device named by `--device`, and for `auto` on the CPU the reason there is no GPU.
fn select_device(spec: &str) -> Result<(Device, Option<String>)> {
    match spec {
        "auto" => Ok(Device::best()),
        "cpu" => Ok((Device::Cpu, None)),
        "cuda" => Ok((Device::cuda(0)?, None)),
        _ => match spec.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(ordinal)) => Ok((Device::cuda(ordinal)?, None)),
            _ => Err(Error::Usage(format!("unknown device '{spec}' (expected auto, cpu, cuda or cuda:N)"))),
        },
    }
}
