//! `foil train classifier`: train or fine-tune a torchvision-named ResNet on an
//! image folder or a generated task, writing safetensors `foil classify` loads.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

use foil::models::resnet::{resnet_init, ResNetArch, Stem};
use foil::nn::is_batch_norm_buffer;
use foil::train::checkpoint::read_tensors;
use foil::train::classifier::{ClassifierTrainer, OptimizerKind, Progress, TrainConfig};
use foil::train::data::Dataset;
use foil::world::groups::group_accuracy;
use foil::world::{Split, World, WorldConfig};
use foil::{DType, Device, Error, Result, Rng, Tensor};

use super::{dtype_or, DTypeArg};

#[derive(Subcommand)]
pub enum TrainCommand {
    /// Train or fine-tune a ResNet classifier (torchvision names) on labelled images.
    Classifier(Box<ClassifierArgs>),
    /// Train the world's miniature Stable Diffusion (tokenizer, text encoder, autoencoder, UNet) from scratch.
    WorldSd(super::world_models::WorldSdArgs),
    /// Train the world's oracle: a multi-head attribute classifier that measures generated images.
    Oracle(super::world_models::OracleArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum OptimizerArg {
    Sgd,
    Adamw,
}

#[derive(Args)]
#[command(after_help = "Examples:
  foil train classifier --generated 2000 --arch resnet18 --width 16 --steps 300 --out stripes.safetensors
  foil train classifier --data photos/ --image-size 224 --init resnet50.safetensors --arch resnet50 \\
      --trainable layer4. --trainable fc. --optimizer adamw --lr 1e-4 --steps 1000 --out tuned.safetensors
  foil train classifier --generated 2000 --steps 600 --resume run.ckpt.safetensors --out stripes.safetensors")]
pub struct ClassifierArgs {
    /// An image folder: one sub-folder of PNGs per class (class indices in sorted name order).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["generated", "world"],
          required_unless_present_any = ["generated", "world"])]
    data: Option<PathBuf>,
    /// Instead of --data, N images of a generated four-class task (stripe orientation).
    #[arg(long, value_name = "N", conflicts_with = "world")]
    generated: Option<usize>,
    /// Instead of --data, renders of a world config's training split (its tied factor follows the
    /// label); held out: its balanced validation split; at the end, accuracy by group on its test split.
    #[arg(long, value_name = "CONFIG")]
    world: Option<PathBuf>,
    /// With --world: training renders (validation: a tenth as many; test: a fifth).
    #[arg(long, value_name = "N", default_value_t = 4000)]
    world_images: usize,
    /// Images are resized to S×S (default: 224 for --data, 32 for --generated).
    #[arg(long, value_name = "S")]
    image_size: Option<usize>,
    /// The fraction of the images held out for evaluation.
    #[arg(long, value_name = "F", default_value_t = 0.1)]
    val_fraction: f64,
    /// resnet18, resnet34, resnet50 or resnet101.
    #[arg(long, value_name = "ARCH", default_value = "resnet18")]
    arch: ResNetArch,
    /// The first layer of a fresh model: imagenet (torchvision's 7×7 stride-2 conv and max-pool) or
    /// small (3×3 stride-1 conv, no pool: for images of 32×32 or so).
    #[arg(long, value_name = "STEM", default_value = "imagenet")]
    stem: Stem,
    /// Width of the first stage of a freshly initialised model (torchvision: 64; stages double it).
    #[arg(long, value_name = "W", default_value_t = 64)]
    width: usize,
    /// Start from these weights (a torchvision state dict as safetensors) instead of a fresh model.
    /// A classifier head of another class count is replaced by a fresh one.
    #[arg(long, value_name = "FILE", conflicts_with = "resume")]
    init: Option<PathBuf>,
    /// Resume from a checkpoint written by an earlier run (model, optimizer state, step).
    #[arg(long, value_name = "FILE")]
    resume: Option<PathBuf>,
    /// Train only parameters whose names start with this prefix (repeatable); default: all.
    #[arg(long, value_name = "PREFIX")]
    trainable: Vec<String>,
    #[arg(long, value_enum, default_value = "sgd")]
    optimizer: OptimizerArg,
    /// Peak learning rate (default: 0.1 for SGD, 1e-3 for AdamW).
    #[arg(long, value_name = "LR")]
    lr: Option<f32>,
    /// Learning rate at the end of the cosine decay.
    #[arg(long, value_name = "LR", default_value_t = 0.0)]
    min_lr: f32,
    /// Linear warm-up steps (default: 5% of --steps).
    #[arg(long, value_name = "N")]
    warmup: Option<usize>,
    #[arg(long, value_name = "N", default_value_t = 300)]
    steps: usize,
    #[arg(long, value_name = "N", default_value_t = 32)]
    batch: usize,
    /// SGD's momentum (Nesterov when > 0).
    #[arg(long, value_name = "M", default_value_t = 0.9)]
    momentum: f32,
    /// Weight decay (default: 5e-4 for SGD, 0.01 for AdamW).
    #[arg(long, value_name = "WD")]
    weight_decay: Option<f32>,
    #[arg(long, value_name = "EPS", default_value_t = 0.0)]
    label_smoothing: f32,
    /// Clip gradients to this global L2 norm.
    #[arg(long, value_name = "NORM")]
    clip_grad_norm: Option<f32>,
    /// Evaluate on the held-out images every N steps (and at the end).
    #[arg(long, value_name = "N", default_value_t = 100)]
    eval_every: usize,
    /// Print a progress line every N steps.
    #[arg(long, value_name = "N", default_value_t = 10)]
    log_every: usize,
    /// Checkpoint file (default: OUT with .ckpt.safetensors), written every --checkpoint-every steps and at the end.
    #[arg(long, value_name = "FILE")]
    checkpoint: Option<PathBuf>,
    #[arg(long, value_name = "N", default_value_t = 100)]
    checkpoint_every: usize,
    #[arg(long, value_name = "N", default_value_t = 0)]
    seed: u64,
    /// Compute dtype: auto (bf16 on a GPU, f32 on the CPU), f32, f16 or bf16; parameters stay f32.
    #[arg(long, value_enum, default_value = "auto")]
    dtype: DTypeArg,
    /// Where to write the trained weights (safetensors, torchvision names).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

pub fn run(command: TrainCommand, device: &Device) -> Result<()> {
    match command {
        TrainCommand::Classifier(args) => classifier(*args, device),
        TrainCommand::WorldSd(args) => super::world_models::world_sd(args, device),
        TrainCommand::Oracle(args) => super::world_models::oracle(args, device),
    }
}

fn classifier(args: ClassifierArgs, device: &Device) -> Result<()> {
    // Training computes in bf16 on a GPU: f16 would need loss scaling.
    let dtype = dtype_or(args.dtype, device, DType::BF16);
    if args.steps == 0 || args.batch == 0 {
        return Err(Error::Usage("--steps and --batch must be at least 1".into()));
    }
    if !(0.0..1.0).contains(&args.val_fraction) {
        return Err(Error::Usage(format!("--val-fraction {} must be in [0, 1)", args.val_fraction)));
    }
    let world = match &args.world {
        Some(file) => Some(World::new(WorldConfig::from_file(file)?)),
        None => None,
    };
    let (train, held_out) = match (&args.data, args.generated, &world) {
        (Some(dir), _, _) => {
            Dataset::from_folder(dir, args.image_size.unwrap_or(224))?.split(args.val_fraction, args.seed)
        }
        (None, Some(n), _) => {
            Dataset::stripes(n, args.image_size.unwrap_or(32), args.seed).split(args.val_fraction, args.seed)
        }
        (None, None, Some(world)) => (
            world.dataset(Split::Train, args.world_images, args.seed)?.0,
            world.dataset(Split::Validation, (args.world_images / 10).max(1), args.seed)?.0,
        ),
        (None, None, None) => return Err(Error::Usage("give --data DIR, --generated N or --world CONFIG".into())),
    };
    let classes = train.classes().to_vec();
    if train.is_empty() {
        return Err(Error::Usage("no training images left after the held-out split".into()));
    }
    let sgd = matches!(args.optimizer, OptimizerArg::Sgd);
    let config = TrainConfig {
        arch: args.arch,
        optimizer: if sgd { OptimizerKind::Sgd } else { OptimizerKind::AdamW },
        lr: args.lr.unwrap_or(if sgd { 0.1 } else { 1e-3 }),
        min_lr: args.min_lr,
        warmup_steps: args.warmup.unwrap_or(args.steps / 20),
        steps: args.steps,
        batch: args.batch,
        momentum: args.momentum,
        weight_decay: args.weight_decay.unwrap_or(if sgd { 5e-4 } else { 0.01 }),
        label_smoothing: args.label_smoothing,
        max_grad_norm: args.clip_grad_norm,
        trainable: args.trainable.clone(),
        eval_every: args.eval_every,
        checkpoint_every: args.checkpoint_every,
        seed: args.seed,
        dtype,
    };
    let checkpoint = args.checkpoint.clone().unwrap_or_else(|| args.out.with_extension("ckpt.safetensors"));
    let mut trainer = match &args.resume {
        Some(file) => ClassifierTrainer::resume(config, file, device)?,
        None => {
            let mut rng = Rng::new(args.seed);
            let tensors = match &args.init {
                Some(file) => with_head_for(read_tensors(file, &Device::Cpu)?, classes.len(), &mut rng)?,
                None => resnet_init(args.arch, args.stem, args.width, classes.len(), &mut rng)?,
            };
            ClassifierTrainer::new(config, tensors, device)?
        }
    };
    eprintln!(
        "training {} on {} ({} classes: {}; {} images, {} held out), {} of {} parameter tensors trainable, {dtype}",
        args.arch,
        device,
        classes.len(),
        classes.join(", "),
        train.len(),
        held_out.len(),
        trainer.trainable_names().len(),
        trainer.weights()?.iter().filter(|(n, _)| !is_batch_norm_buffer(n)).count(),
    );
    let log_every = args.log_every.max(1);
    let mut print = |p: &Progress| {
        if p.step.is_multiple_of(log_every) || p.accuracy.is_some() || p.step == p.steps {
            let acc = p.accuracy.map_or(String::new(), |a| format!("  held-out accuracy {:.1}%", 100.0 * a));
            eprintln!(
                "step {:>5}/{}  loss {:.4}  lr {:.3e}  grad-norm {:.3}  {:.1} s{acc}",
                p.step, p.steps, p.loss, p.lr, p.grad_norm, p.seconds
            );
        }
    };
    let outcome = trainer.run(&train, &held_out, Some(&checkpoint), &mut print).map_err(|e| match e {
        Error::Training(why) => {
            Error::Training(format!("training stopped: {why}; the last good checkpoint is {}", checkpoint.display()))
        }
        other => other,
    })?;
    let weights = trainer.weights()?;
    let refs: Vec<(&str, &Tensor)> = weights.iter().map(|(n, t)| (n.as_str(), t)).collect();
    foil::tensor::safetensors::save(&args.out, &refs)?;
    println!(
        "wrote {} ({} steps in {:.1} s; final loss {:.4}, held-out accuracy {:.1}%)",
        args.out.display(),
        trainer.step(),
        outcome.seconds,
        outcome.final_loss,
        100.0 * outcome.final_accuracy
    );
    if let Some(world) = &world {
        let (test, scenes) = world.dataset(Split::Test, (args.world_images / 5).max(1), args.seed)?;
        let groups = group_accuracy(world, &scenes, &trainer.predict(&test)?);
        println!(
            "balanced test split ({} images): average accuracy {:.1}%, worst-group accuracy {:.1}%",
            test.len(),
            100.0 * groups.average(),
            100.0 * groups.worst()
        );
        for g in &groups.groups {
            println!("  {:<24} {:>5.1}%  ({}/{})", g.name, 100.0 * g.accuracy(), g.correct, g.total);
        }
    }
    Ok(())
}

/// `init` with a fresh classifier head (nn.Linear's initialisation) when its
/// class count is not the data's (fine-tuning to a new label set); every other
/// layer is kept.
fn with_head_for(
    mut init: BTreeMap<String, Tensor>,
    classes: usize,
    rng: &mut Rng,
) -> Result<BTreeMap<String, Tensor>> {
    let Some(&[rows, features]) = init.get("fc.weight").map(Tensor::dims) else {
        return Err(Error::Usage("--init: the weights have no 2-D 'fc.weight' (not a torchvision ResNet)".into()));
    };
    if rows != classes {
        eprintln!("foil: --init has {rows} classes and the data {classes}: the fc layer starts fresh");
        let bound = 1.0 / (features as f32).sqrt();
        init.insert("fc.weight".into(), Tensor::rand_uniform([classes, features], -bound, bound, rng, &Device::Cpu)?);
        init.insert("fc.bias".into(), Tensor::rand_uniform([classes], -bound, bound, rng, &Device::Cpu)?);
    }
    Ok(init)
}
