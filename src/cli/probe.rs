//! `foil run`, `foil probe` and `foil reinforce`: the probe-then-reinforce
//! loop, whole or a stage at a time. Every file a stage writes is written whole
//! or not at all, so an interrupted run (Ctrl-C) leaves the finished stages'
//! files intact, and `foil reinforce --probe DIR` goes on from a finished probe.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Args;

use foil::diffusion::pipeline::StableDiffusion;
use foil::models::resnet::ResNetArch;
use foil::probe::folder::{probe_images, score, CaptionSource, ProbeImages, ProbeRecord};
use foil::probe::images::{Classifier, GenerationConfig};
use foil::reinforce::evaluate::GroundTruth;
use foil::reinforce::finetune::FinetuneConfig;
use foil::reinforce::report::{Baselines, EvaluationReport, Report};
use foil::reinforce::{arch_of, reinforce, ReinforceConfig};
use foil::tensor::{safetensors, write_text_atomically, Tensor};
use foil::train::checkpoint::read_tensors;
use foil::{DType, Device, Error, Result};

use super::progress::StageProgress;

/// Where the probe's captions come from, and how its images are made.
#[derive(Args, Clone)]
pub struct ProbeOptions {
    /// The classifier under test: a torchvision ResNet state dict (safetensors).
    #[arg(long, value_name = "FILE", default_value = "weights/world-biased.safetensors")]
    classifier: PathBuf,
    #[arg(long, value_enum, default_value = "resnet18")]
    arch: ResNetArch,
    /// The text-to-image model: a diffusers Stable Diffusion folder.
    #[arg(long, value_name = "DIR", default_value = "weights/world-sd")]
    model: PathBuf,
    /// A world config (JSON); default: the shipped world (background tied to shape at 0.95).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["captions", "lexicon"])]
    world: Option<PathBuf>,
    /// A metadata CSV of your data (image, label, caption columns) instead of a world.
    #[arg(long, value_name = "CSV", requires = "lexicon")]
    captions: Option<PathBuf>,
    /// With --captions: a JSON object of attribute -> its alternative phrases.
    #[arg(long, value_name = "JSON", requires = "captions")]
    lexicon: Option<PathBuf>,
    /// With --captions: the classifier's class names in its output order, when the CSV's labels are names
    /// (default: the names sorted, as torchvision's ImageFolder and `foil train classifier --data` order them).
    #[arg(long, value_name = "A,B,...", value_delimiter = ',', requires = "captions")]
    classes: Vec<String>,
    /// Captions probed (a world's; a CSV gives all its rows). Each makes one pair per other value of each attribute.
    #[arg(long, value_name = "N", default_value_t = 32)]
    subjects: usize,
    /// Denoising steps per image.
    #[arg(long, value_name = "N", default_value_t = GenerationConfig::default().steps)]
    sampling_steps: usize,
    #[arg(long, value_name = "G", default_value_t = GenerationConfig::default().guidance)]
    guidance: f32,
    /// Image-to-image from each caption's real image at this strength, instead of text-to-image.
    #[arg(long, value_name = "S")]
    strength: Option<f32>,
    /// Images per generator call.
    #[arg(long, value_name = "N", default_value_t = GenerationConfig::default().batch)]
    generate_batch: usize,
    #[arg(long, value_name = "S", default_value_t = 0)]
    seed: u64,
}

/// The reinforce stage's budget and fine-tuning.
#[derive(Args, Clone)]
pub struct ReinforceOptions {
    /// New images for each fine-tuning: the loop's, and each baseline's.
    #[arg(long, value_name = "N", default_value_t = 512)]
    images: usize,
    /// Fine-tuning steps at most (the step kept is chosen on held-out counterfactuals).
    /// 200 keeps `foil run` under 10 minutes on a 2-core CPU (BENCHMARKS.md).
    #[arg(long, value_name = "N", default_value_t = 200)]
    steps: usize,
    #[arg(long, value_name = "N", default_value_t = 64)]
    batch: usize,
    /// The fraction of each batch that is new images; the rest is original training data.
    #[arg(long, value_name = "F", default_value_t = 0.5)]
    mix: f32,
    /// SGD's peak learning rate; the default is the rate the biased classifier trained at.
    #[arg(long, value_name = "LR", default_value_t = 0.1)]
    lr: f32,
    /// Evaluate on the held-out counterfactuals every N steps.
    #[arg(long, value_name = "N", default_value_t = 25)]
    eval_every: usize,
    /// The fraction of the new images held out to choose the number of steps.
    #[arg(long, value_name = "F", default_value_t = 0.2)]
    held_out: f32,
    /// Train only parameters whose names start with these prefixes (e.g. layer4.,fc.); default: all.
    #[arg(long, value_name = "P,P,...", value_delimiter = ',')]
    trainable: Vec<String>,
    /// Original training images mixed in (a world's tied training split).
    #[arg(long, value_name = "N", default_value_t = 2000)]
    original: usize,
    /// Test images (a world's balanced test split).
    #[arg(long, value_name = "N", default_value_t = 800)]
    test_images: usize,
    /// With --captions: held-out real data with ground truth (image, label, group columns).
    #[arg(long, value_name = "CSV")]
    test: Option<PathBuf>,
}

#[derive(Args)]
#[command(after_help = "Examples:
  foil run
  foil run --world worlds/tied-colour.json --classifier colour-biased.safetensors --out run-colour
  foil run --images 256 --steps 100 --subjects 16 --out quick-run")]
pub struct RunArgs {
    #[command(flatten)]
    probe: ProbeOptions,
    #[command(flatten)]
    reinforce: ReinforceOptions,
    /// The output folder: report.md, report.json, grids, probe.json, reinforced.safetensors, command.txt.
    #[arg(long, value_name = "DIR", default_value = "foil-run")]
    out: PathBuf,
}

#[derive(Args)]
#[command(after_help = "Examples:
  foil probe --classifier weights/world-biased.safetensors --model weights/world-sd --out probe/
  foil probe --classifier mine.safetensors --model my-sd/ --captions train.csv --lexicon lexicon.json --out probe/")]
pub struct ProbeArgs {
    #[command(flatten)]
    probe: ProbeOptions,
    /// The output folder: probe.json, images.safetensors, grid-<attribute>.png.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

#[derive(Args)]
#[command(after_help = "Examples:
  foil reinforce --classifier weights/world-biased.safetensors --probe probe/ --out reinforced/")]
pub struct ReinforceArgs {
    /// The classifier the probe tested.
    #[arg(long, value_name = "FILE")]
    classifier: PathBuf,
    /// A folder `foil probe` wrote.
    #[arg(long, value_name = "DIR")]
    probe: PathBuf,
    #[command(flatten)]
    reinforce: ReinforceOptions,
    #[arg(long, value_name = "S", default_value_t = 0)]
    seed: u64,
    /// The output folder: report.md, report.json, reinforced.safetensors, command.txt.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

pub fn run(args: RunArgs, device: &Device) -> Result<()> {
    let started = Instant::now();
    let (record, images) = probe(&args.probe, &args.out, device)?;
    print_weaknesses(&record);
    let seed = args.probe.seed;
    let report = reinforce_stage(&args.probe.classifier, &record, &images, &args.reinforce, seed, &args.out, device)?;
    println!("\n{}", report.summary().trim_end());
    println!("report: {} ({:.0} s in all)", args.out.join("report.md").display(), started.elapsed().as_secs_f64());
    Ok(())
}

pub fn probe_command(args: ProbeArgs, device: &Device) -> Result<()> {
    let (record, _) = probe(&args.probe, &args.out, device)?;
    print_weaknesses(&record);
    println!("wrote {}", args.out.join("probe.json").display());
    Ok(())
}

pub fn reinforce_command(args: ReinforceArgs, device: &Device) -> Result<()> {
    let (record, images) = ProbeRecord::load(&args.probe)?;
    let report = reinforce_stage(&args.classifier, &record, &images, &args.reinforce, args.seed, &args.out, device)?;
    // report.md shows the probe's grids beside it.
    if args.out != args.probe {
        for w in &record.captions.attributes {
            let grid = args.probe.join(format!("grid-{}.png", w.name));
            if grid.is_file() {
                std::fs::copy(&grid, args.out.join(format!("grid-{}.png", w.name)))
                    .map_err(|e| file_error(&grid, e))?;
            }
        }
    }
    println!("{}", report.summary().trim_end());
    println!("report: {}", args.out.join("report.md").display());
    Ok(())
}

/// Creates `out` and records the exact command line in it (once the inputs have loaded).
fn prepare_out(out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| file_error(out, e))?;
    write_text_atomically(&out.join("command.txt"), &format!("{}\n", command_line()))
}

fn command_line() -> String {
    std::env::args()
        .map(|a| if a.contains(char::is_whitespace) { format!("'{a}'") } else { a })
        .collect::<Vec<_>>()
        .join(" ")
}

fn dtype(device: &Device) -> DType {
    if device.is_cuda() {
        DType::F16
    } else {
        DType::F32
    }
}

/// The probe stage: captions, images, scores; written to `out`.
fn probe(options: &ProbeOptions, out: &Path, device: &Device) -> Result<(ProbeRecord, ProbeImages)> {
    let started = Instant::now();
    if options.subjects == 0 || options.generate_batch == 0 || options.sampling_steps == 0 {
        return Err(Error::Usage("--subjects, --generate-batch and --sampling-steps must be at least 1".into()));
    }
    let source = match (&options.captions, &options.lexicon) {
        (Some(captions), Some(lexicon)) => CaptionSource::Csv {
            captions: captions.clone(),
            lexicon: lexicon.clone(),
            classes: options.classes.clone(),
        },
        _ => CaptionSource::World { config: options.world.clone() },
    };
    let world = source.world()?;
    let set = source.captions(options.subjects, options.seed)?;
    let classifier = Classifier::load(&options.classifier, options.arch, dtype(device), device)?;
    if classifier.classes() != set.classes.len() {
        return Err(Error::Usage(format!(
            "{} has {} classes, the captions {} ({})",
            options.classifier.display(),
            classifier.classes(),
            set.classes.len(),
            set.classes.join(", ")
        )));
    }
    let sd = StableDiffusion::load(&options.model, dtype(device), device)?;
    prepare_out(out)?;
    let generation = GenerationConfig {
        steps: options.sampling_steps,
        guidance: options.guidance,
        batch: options.generate_batch,
        strength: options.strength,
    };
    let pairs = set.pairs().count();
    eprintln!(
        "probing {} on {} captions x {} attributes: {} pairs, {} images",
        options.classifier.display(),
        set.subjects.len(),
        set.attributes.len(),
        pairs,
        pairs + set.subjects.len()
    );
    let mut bar = StageProgress::new("generating", "images", pairs + set.subjects.len());
    let images = probe_images(&sd, &set, world.as_ref(), &generation, options.seed, device, &mut |done, _| {
        bar.update(done, "")
    })?;
    bar.finish("");
    let (scores, weaknesses) = score(&classifier, &set, &images, options.seed)?;
    let record = ProbeRecord {
        generator: options.model.clone(),
        classifier: options.classifier.clone(),
        arch: options.arch.to_string(),
        source,
        generation,
        seed: options.seed,
        images: images.factual.len() + images.counterfactual.len(),
        captions: set,
        scores,
        weaknesses,
        seconds: 0.0,
    };
    record.save(out, &images, started)?;
    let (record, images) = ProbeRecord::load(out)?;
    Ok((record, images))
}

fn print_weaknesses(record: &ProbeRecord) {
    eprintln!("probe: attributes by flip rate (95% CI), worst first:");
    for w in &record.weaknesses {
        eprintln!(
            "  {:<12} {:>5.1}% [{:>5.1}, {:>5.1}]  accuracy factual {:>5.1}%, counterfactual {:>5.1}%",
            w.factor,
            100.0 * w.stats.flip_rate,
            100.0 * w.stats.ci95[0],
            100.0 * w.stats.ci95[1],
            100.0 * w.stats.accuracy_factual,
            100.0 * w.stats.accuracy_counterfactual
        );
    }
}

/// The reinforce stage: fine-tunings, evaluation, the probe again; writes
/// reinforced.safetensors, report.json and report.md into `out`.
fn reinforce_stage(
    classifier: &Path,
    record: &ProbeRecord,
    images: &ProbeImages,
    options: &ReinforceOptions,
    seed: u64,
    out: &Path,
    device: &Device,
) -> Result<Report> {
    let started = Instant::now();
    if options.images < 2 || options.steps == 0 || options.batch == 0 || !(0.0..=1.0).contains(&options.mix) {
        return Err(Error::Usage(
            "--images must be at least 2, --steps and --batch at least 1, --mix in [0, 1]".into(),
        ));
    }
    if !(0.0..1.0).contains(&options.held_out) || options.held_out <= 0.0 {
        return Err(Error::Usage(format!("--held-out {} must be in (0, 1)", options.held_out)));
    }
    let arch = arch_of(record)?;
    let initial: BTreeMap<String, Tensor> = read_tensors(classifier, device)?;
    let sd = StableDiffusion::load(&record.generator, dtype(device), device)?;
    let test = match &options.test {
        Some(csv) => Some(GroundTruth::from_csv(csv, &record.captions.classes)?),
        None => None,
    };
    prepare_out(out)?;
    let config = ReinforceConfig {
        images: options.images,
        held_out: options.held_out,
        original: options.original,
        test: options.test_images,
        finetune: FinetuneConfig {
            arch,
            steps: options.steps,
            batch: options.batch,
            mix: options.mix,
            lr: options.lr,
            eval_every: options.eval_every,
            trainable: options.trainable.clone(),
            seed,
            dtype: dtype(device),
        },
        generation: record.generation.clone(),
        seed,
    };
    let mut stage: Option<(String, StageProgress)> = None;
    let outcome = reinforce(record, images, &initial, &sd, test, &config, device, &mut |name, done, total, detail| {
        if stage.as_ref().is_none_or(|(current, _)| current != name) {
            if let Some((_, mut bar)) = stage.take() {
                bar.finish("");
            }
            stage = Some((
                name.to_string(),
                StageProgress::new(name, if name.starts_with("generating") { "images" } else { "steps" }, total),
            ));
        }
        if let Some((_, bar)) = stage.as_mut() {
            bar.update(done, detail);
        }
    })?;
    if let Some((_, mut bar)) = stage.take() {
        bar.finish("");
    }
    let weights: Vec<(&str, &Tensor)> = outcome.tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    safetensors::save(out.join("reinforced.safetensors"), &weights)?;
    let gap_closed = Report::gap_closed(
        &outcome.before,
        &outcome.after.evaluation,
        outcome.group_balanced.as_ref().map(|v| &v.evaluation),
    );
    let report = Report {
        command: command_line(),
        seed,
        device: device.to_string(),
        classifier: classifier.to_path_buf(),
        generator: record.generator.clone(),
        source: record.source.clone(),
        generation: record.generation.clone(),
        weaknesses: record.weaknesses.clone(),
        reinforced: outcome.reinforced,
        weaknesses_after: outcome.weaknesses_after,
        evaluation: EvaluationReport {
            before: outcome.before,
            after: outcome.after,
            baselines: Baselines {
                random_attributes: outcome.random_attributes,
                group_balanced: outcome.group_balanced,
            },
        },
        gap_closed,
        images_generated: record.images + outcome.generated,
        fine_tune_steps: options.steps,
        probe_seconds: record.seconds,
        reinforce_seconds: started.elapsed().as_secs_f64(),
    };
    let json = serde_json::to_string_pretty(&report).map_err(|e| Error::Usage(e.to_string()))?;
    write_text_atomically(&out.join("report.json"), &json)?;
    write_text_atomically(&out.join("report.md"), &report.markdown())?;
    Ok(report)
}

fn file_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::File { file: path.display().to_string(), detail: e.to_string() }
}
