//! `foil world render`: images of the synthetic world with their captions and
//! every factor, in the layout `foil train classifier --data` reads (one folder
//! per class) plus a metadata CSV.

use std::fmt::Write as _;
use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

use foil::tensor::image::write_png;
use foil::world::{Split, World, WorldConfig, FACTORS};
use foil::{Device, Error, Result, Tensor};

#[derive(Subcommand)]
pub enum WorldCommand {
    /// Render N scenes of a split as PNGs, with metadata.csv (file, caption, label, every factor).
    Render(RenderArgs),
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

pub fn run(command: WorldCommand) -> Result<()> {
    match command {
        WorldCommand::Render(args) => render(args),
    }
}

fn render(args: RenderArgs) -> Result<()> {
    let config = match &args.config {
        Some(file) => WorldConfig::from_file(file)?,
        None => WorldConfig::default(),
    };
    let world = World::new(config);
    let split = match args.split {
        SplitArg::Train => Split::Train,
        SplitArg::Validation => Split::Validation,
        SplitArg::Test => Split::Test,
    };
    let size = world.config().size;
    let label = world.config().label;
    let mut csv = format!("file,caption,label,{}\n", FACTORS.join(","));
    for (i, scene) in world.sample(split, args.n, args.seed).iter().enumerate() {
        let class = &world.values(label)[scene.values[label]];
        let file = format!("{class}/{i:06}.png");
        let dir = args.out.join(class);
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::File { file: dir.display().to_string(), detail: e.to_string() })?;
        let image = Tensor::from_f32(world.render(scene), [1, 3, size, size], &Device::Cpu)?;
        write_png(args.out.join(&file), &image, 0)?;
        let values: Vec<&str> = (0..FACTORS.len()).map(|f| world.values(f)[scene.values[f]].as_str()).collect();
        let _ = writeln!(csv, "{file},\"{}\",{class},{}", world.caption(scene), values.join(","));
    }
    let path = args.out.join("metadata.csv");
    foil::tensor::write_text_atomically(&path, &csv)?;
    println!("wrote {} images and {}", args.n, path.display());
    Ok(())
}
