//! `foil world render`: images of the synthetic world with their captions and
//! every factor, in the layout `foil train classifier --data` reads (one folder
//! per class) plus a metadata CSV.

use std::fmt::Write as _;
use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

use foil::diffusion::pipeline::StableDiffusion;
use foil::models::resnet::ResNetArch;
use foil::probe::stats::wilson;
use foil::tensor::image::write_png;
use foil::world::measure::{measure as measure_generator, EditRates, MeasureConfig};
use foil::world::oracle::Oracle;
use foil::world::{Split, World, WorldConfig, FACTORS};
use foil::{DType, Device, Error, Result, Tensor};

use super::progress::StageProgress;

#[derive(Subcommand)]
pub enum WorldCommand {
    /// Render N scenes of a split as PNGs, with metadata.csv (file, caption, label, every factor).
    Render(RenderArgs),
    /// Measure a world generator with the oracle: fidelity to captions, counterfactual edits, image-to-image.
    Measure(MeasureArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum SplitArg {
    Train,
    Validation,
    Test,
}

#[derive(Args)]
#[command(after_help = "Examples:
  foil world render --split train --n 2000 --out world-train/
  foil world render --config tied-colour.json --split test --n 400 --seed 1 --out world-test/")]
pub struct RenderArgs {
    /// A world config (JSON); default: the shipped world (background tied to shape at 0.95).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// train (the tied factor follows the label), validation or test (balanced over label × tied factor).
    #[arg(long, value_enum)]
    split: SplitArg,
    #[arg(long, value_name = "N")]
    n: usize,
    #[arg(long, value_name = "S", default_value_t = 0)]
    seed: u64,
    /// Output folder: <label>/<index>.png and metadata.csv.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

pub fn run(command: WorldCommand, device: &Device) -> Result<()> {
    match command {
        WorldCommand::Render(args) => render(args),
        WorldCommand::Measure(args) => measure(args, device),
    }
}

/// The world of `--config FILE`, or the shipped world.
pub(super) fn world_of(config: &Option<PathBuf>) -> Result<World> {
    Ok(World::new(match config {
        Some(file) => WorldConfig::from_file(file)?,
        None => WorldConfig::default(),
    }))
}

/// "shape 97.3%, colour 100.0%, ...": a rate for each factor.
pub(super) fn factor_rates(rates: &[f32; FACTORS.len()]) -> String {
    FACTORS.iter().zip(rates).map(|(f, r)| format!("{f} {:.1}%", 100.0 * r)).collect::<Vec<_>>().join(", ")
}

fn render(args: RenderArgs) -> Result<()> {
    let world = world_of(&args.config)?;
    let split = match args.split {
        SplitArg::Train => Split::Train,
        SplitArg::Validation => Split::Validation,
        SplitArg::Test => Split::Test,
    };
    let size = world.config().size;
    let label = world.config().label;
    let mut csv = format!("file,caption,label,{}\n", FACTORS.join(","));
    let scenes = world.sample(split, args.n, args.seed);
    let mut progress = StageProgress::new("rendering", "images", scenes.len());
    for (i, scene) in scenes.iter().enumerate() {
        let class = &world.values(label)[scene.values[label]];
        let file = format!("{class}/{i:06}.png");
        let dir = args.out.join(class);
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::File { file: dir.display().to_string(), detail: e.to_string() })?;
        let image = Tensor::from_f32(world.render(scene), [1, 3, size, size], &Device::Cpu)?;
        write_png(args.out.join(&file), &image, 0)?;
        let values: Vec<&str> = (0..FACTORS.len()).map(|f| world.values(f)[scene.values[f]].as_str()).collect();
        let _ = writeln!(csv, "{file},\"{}\",{class},{}", world.caption(scene), values.join(","));
        progress.update(i + 1, "");
    }
    progress.finish("");
    let path = args.out.join("metadata.csv");
    foil::tensor::write_text_atomically(&path, &csv)?;
    println!("wrote {} images and {}", args.n, path.display());
    Ok(())
}

#[derive(Args)]
#[command(after_help = "Examples:
  foil world measure --model weights/world-sd --oracle weights/world-oracle.safetensors
  foil world measure --model weights/world-sd --oracle weights/world-oracle.safetensors --scenes 100 --guidance 3")]
pub struct MeasureArgs {
    /// The world generator (a diffusers pipeline folder).
    #[arg(long, value_name = "DIR")]
    model: PathBuf,
    /// The world's oracle (from foil train oracle).
    #[arg(long, value_name = "FILE")]
    oracle: PathBuf,
    #[arg(long, value_enum, default_value = "resnet18")]
    oracle_arch: ResNetArch,
    /// A world config (JSON); default: the shipped world.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Captions measured; each also makes one counterfactual pair (the factor changed cycles through all).
    #[arg(long, value_name = "N", default_value_t = MeasureConfig::default().scenes)]
    scenes: usize,
    #[arg(long, value_name = "N", default_value_t = MeasureConfig::default().steps)]
    steps: usize,
    #[arg(long, value_name = "G", default_value_t = MeasureConfig::default().guidance)]
    guidance: f32,
    /// Image-to-image strengths, comma-separated.
    #[arg(long, value_name = "S,S,...", value_delimiter = ',', default_values_t = MeasureConfig::default().strengths)]
    strengths: Vec<f32>,
    #[arg(long, value_name = "N", default_value_t = MeasureConfig::default().batch)]
    batch: usize,
    #[arg(long, value_name = "S", default_value_t = 0)]
    seed: u64,
}

fn measure(args: MeasureArgs, device: &Device) -> Result<()> {
    if args.scenes == 0 || args.batch == 0 {
        return Err(Error::Usage("--scenes and --batch must be at least 1".into()));
    }
    let world = world_of(&args.config)?;
    let sd = StableDiffusion::load(&args.model, DType::F32, device)?;
    let oracle = Oracle::load(&args.oracle, args.oracle_arch, &world, device)?;
    let config = MeasureConfig {
        scenes: args.scenes,
        steps: args.steps,
        guidance: args.guidance,
        strengths: args.strengths.clone(),
        batch: args.batch,
        seed: args.seed,
    };
    let m = measure_generator(&sd, &oracle, &world, &config, device)?;
    println!(
        "{}: {} captions, {} steps, guidance {}; {} images in {:.0} s on {device}",
        args.model.display(),
        args.scenes,
        args.steps,
        args.guidance,
        m.images,
        m.seconds
    );
    println!(
        "fidelity (oracle reads the caption's value): {}; every factor {:.1}%",
        factor_rates(&m.fidelity),
        100.0 * m.fidelity_all
    );
    for (f, counts) in m.confusion.iter().enumerate().filter(|&(f, _)| m.fidelity[f] < 1.0) {
        println!("{} as the oracle reads it (rows: the caption's value):", FACTORS[f]);
        print_confusion(world.values(f), counts);
    }
    let rate = |share: f32, hits: usize, pairs: usize| {
        let [lo, hi] = wilson(hits, pairs);
        format!("{:>5.1}% [{:>5.1}, {:>5.1}]", 100.0 * share, 100.0 * lo, 100.0 * hi)
    };
    let table = |rows: &[EditRates]| {
        for r in rows {
            println!(
                "  {:<11} {:>4} pairs  edit success {}  preservation {}",
                r.factor,
                r.pairs,
                rate(r.success(), r.succeeded, r.pairs),
                rate(r.preservation(), r.preserved, r.pairs)
            );
        }
    };
    println!("counterfactual pairs (same noise, one phrase changed; 95% Wilson intervals):");
    table(&m.pairs);
    for (strength, rows) in &m.img2img {
        println!("image-to-image from the render at strength {strength} (preservation against the scene):");
        table(rows);
    }
    Ok(())
}

fn print_confusion(values: &[String], counts: &[Vec<usize>]) {
    let width = values.iter().map(String::len).max().unwrap_or(0).max(5);
    let header: String = values.iter().map(|v| format!(" {v:>width$}")).collect();
    println!("  {:<width$}{header}", "");
    for (value, row) in values.iter().zip(counts) {
        let cells: String = row.iter().map(|c| format!(" {c:>width$}")).collect();
        println!("  {value:<width$}{cells}");
    }
}
