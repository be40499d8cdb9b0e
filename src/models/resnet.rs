//! torchvision's ResNet (v1.5: a bottleneck strides in its 3×3 convolution),
//! loaded from a state dict saved as safetensors under torchvision's names
//! (conv1, bn1, layer1..4.N.{conv1, bn1, ...}, fc). The architecture fixes the
//! block type and counts; every width and the class count come from the
//! weights' shapes, so narrow variants load too. For inference BatchNorm is
//! folded into the convolution before it; for training it stays a layer of its
//! own (batch statistics in training mode, running statistics in eval mode).

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use crate::device::{DType, Device};
use crate::error::{shape_err, Error, Result};
use crate::nn::{BatchNorm2d, Conv2d, Linear, Mode, RunningStats, TrainableBatchNorm2d, Weights};
use crate::tensor::{Rng, Tensor};

/// BatchNorm2d's default epsilon, which torchvision's ResNets use.
const BN_EPS: f32 = 1e-5;

/// torchvision's ImageNet normalisation, per RGB channel.
const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResNetArch {
    ResNet18,
    ResNet34,
    ResNet50,
    ResNet101,
}

impl ResNetArch {
    /// Whether the blocks are bottlenecks (1×1, 3×3, 1×1) rather than basic (3×3, 3×3).
    fn bottleneck(self) -> bool {
        matches!(self, ResNetArch::ResNet50 | ResNetArch::ResNet101)
    }

    /// Blocks in each of the four stages.
    fn blocks(self) -> [usize; 4] {
        match self {
            ResNetArch::ResNet18 => [2, 2, 2, 2],
            ResNetArch::ResNet34 | ResNetArch::ResNet50 => [3, 4, 6, 3],
            ResNetArch::ResNet101 => [3, 4, 23, 3],
        }
    }
}

/// The first layer. torchvision's, for ImageNet-sized images: a 7×7 stride-2
/// convolution, then a 3×3 stride-2 max-pool. Or the small-image stem of the
/// CIFAR ResNets: a 3×3 stride-1 convolution and no pool, which keeps the detail
/// of a 32×32 image (the ImageNet stem leaves it 8×8 before the first stage).
/// A checkpoint says which by its conv1 kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stem {
    ImageNet,
    Small,
}

impl Stem {
    fn kernel(self) -> usize {
        match self {
            Stem::ImageNet => 7,
            Stem::Small => 3,
        }
    }
}

impl FromStr for Stem {
    type Err = Error;

    fn from_str(s: &str) -> Result<Stem> {
        match s {
            "imagenet" => Ok(Stem::ImageNet),
            "small" => Ok(Stem::Small),
            other => Err(Error::Usage(format!("unknown stem '{other}' (imagenet or small)"))),
        }
    }
}

impl FromStr for ResNetArch {
    type Err = Error;

    fn from_str(s: &str) -> Result<ResNetArch> {
        match s {
            "resnet18" => Ok(ResNetArch::ResNet18),
            "resnet34" => Ok(ResNetArch::ResNet34),
            "resnet50" => Ok(ResNetArch::ResNet50),
            "resnet101" => Ok(ResNetArch::ResNet101),
            other => Err(Error::Usage(format!(
                "unknown ResNet architecture '{other}' (resnet18, resnet34, resnet50 or resnet101)"
            ))),
        }
    }
}

impl fmt::Display for ResNetArch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ResNetArch::ResNet18 => "resnet18",
            ResNetArch::ResNet34 => "resnet34",
            ResNetArch::ResNet50 => "resnet50",
            ResNetArch::ResNet101 => "resnet101",
        })
    }
}

/// A convolution (no bias, square kernel) and the BatchNorm after it.
enum ConvBn {
    /// BatchNorm folded in, for inference.
    Folded(Conv2d),
    /// BatchNorm kept, for training.
    Separate(Conv2d, Box<TrainableBatchNorm2d>),
}

impl ConvBn {
    /// conv `conv` with `in_ch` inputs, any output count, and BatchNorm `bn`.
    fn load(
        w: &Weights,
        conv: &str,
        bn: &str,
        in_ch: usize,
        kernel: usize,
        stride: usize,
        fold: bool,
    ) -> Result<ConvBn> {
        let wc = w.pp(conv);
        let out_ch = wc.shape("weight")?.first().copied().unwrap_or(0);
        let conv = Conv2d::load_checked(&wc, in_ch, out_ch, kernel, stride, kernel / 2, false)?;
        Ok(if fold {
            ConvBn::Folded(conv.fold_batch_norm(&BatchNorm2d::load(&w.pp(bn), out_ch, BN_EPS)?)?)
        } else {
            ConvBn::Separate(conv, Box::new(TrainableBatchNorm2d::load(&w.pp(bn), out_ch, BN_EPS)?))
        })
    }

    fn out_channels(&self) -> usize {
        match self {
            ConvBn::Folded(c) | ConvBn::Separate(c, _) => c.out_channels(),
        }
    }

    fn forward(&self, x: &Tensor, mode: Mode, stats: &mut RunningStats) -> Result<Tensor> {
        match self {
            ConvBn::Folded(c) => c.forward(x),
            ConvBn::Separate(c, bn) => bn.forward(&c.forward(x)?, mode, stats),
        }
    }
}

/// A residual block: its convolutions (each but the last followed by ReLU) plus
/// the shortcut, then ReLU.
struct Block {
    convs: Vec<ConvBn>,
    /// The 1×1 projection when the block changes the width or the resolution.
    downsample: Option<ConvBn>,
}

impl Block {
    fn load(w: &Weights, bottleneck: bool, in_ch: usize, stride: usize, fold: bool) -> Result<Block> {
        let mut convs = Vec::with_capacity(3);
        let mut ch = in_ch;
        let layout: &[(usize, usize)] =
            if bottleneck { &[(1, 1), (3, stride), (1, 1)] } else { &[(3, stride), (3, 1)] };
        for (i, &(kernel, s)) in layout.iter().enumerate() {
            let conv = ConvBn::load(w, &format!("conv{}", i + 1), &format!("bn{}", i + 1), ch, kernel, s, fold)?;
            ch = conv.out_channels();
            convs.push(conv);
        }
        let downsample = if stride != 1 || ch != in_ch {
            Some(ConvBn::load(w, "downsample.0", "downsample.1", in_ch, 1, stride, fold)?)
        } else {
            None
        };
        Ok(Block { convs, downsample })
    }

    fn out_channels(&self) -> usize {
        self.convs.last().map_or(0, ConvBn::out_channels)
    }

    fn forward(&self, x: &Tensor, mode: Mode, stats: &mut RunningStats) -> Result<Tensor> {
        let mut h = x.clone();
        for (i, conv) in self.convs.iter().enumerate() {
            h = conv.forward(&h, mode, stats)?;
            if i + 1 < self.convs.len() {
                h = h.relu()?;
            }
        }
        let shortcut = match &self.downsample {
            Some(d) => d.forward(x, mode, stats)?,
            None => x.clone(),
        };
        h.add(&shortcut)?.relu()
    }
}

pub struct ResNet {
    arch: ResNetArch,
    stem_kind: Stem,
    /// conv1 and bn1.
    stem: ConvBn,
    blocks: Vec<Block>,
    fc: Linear,
}

impl ResNet {
    /// The torchvision state dict in `file` as `arch`, converted to `dtype` on
    /// `device`, for inference (BatchNorm folded). Every tensor of the file must
    /// be used: a checkpoint of another architecture fails with the first tensor
    /// that does not fit.
    pub fn load(file: &Path, arch: ResNetArch, dtype: DType, device: &Device) -> Result<ResNet> {
        ResNet::for_inference(&Weights::open(&[file.to_path_buf()], dtype, device)?, arch)
    }

    /// `arch` from torchvision-named weights, for inference (BatchNorm folded).
    pub fn for_inference(w: &Weights, arch: ResNetArch) -> Result<ResNet> {
        ResNet::from_weights(w, arch, true)
    }

    /// `arch` from torchvision-named weights with BatchNorm kept as a layer, for
    /// training: tracked weights give a differentiable model; see [`ResNet::forward_train`].
    pub fn for_training(w: &Weights, arch: ResNetArch) -> Result<ResNet> {
        ResNet::from_weights(w, arch, false)
    }

    fn from_weights(w: &Weights, arch: ResNetArch, fold: bool) -> Result<ResNet> {
        let stem_kind = match w.pp("conv1").shape("weight")?.get(2) {
            Some(3) => Stem::Small,
            _ => Stem::ImageNet,
        };
        let stride = if stem_kind == Stem::Small { 1 } else { 2 };
        let stem = ConvBn::load(w, "conv1", "bn1", 3, stem_kind.kernel(), stride, fold)?;
        let mut ch = stem.out_channels();
        let mut blocks = vec![];
        for (stage, &count) in arch.blocks().iter().enumerate() {
            for i in 0..count {
                let stride = if stage > 0 && i == 0 { 2 } else { 1 };
                let block =
                    Block::load(&w.pp(format!("layer{}", stage + 1)).pp(i), arch.bottleneck(), ch, stride, fold)?;
                ch = block.out_channels();
                blocks.push(block);
            }
        }
        let classes = w.pp("fc").shape("weight")?.first().copied().unwrap_or(0);
        let fc = Linear::load(&w.pp("fc"), ch, classes, true)?;
        w.check_all_used()?;
        Ok(ResNet { arch, stem_kind, stem, blocks, fc })
    }

    pub fn arch(&self) -> ResNetArch {
        self.arch
    }

    pub fn num_classes(&self) -> usize {
        self.fc.out_dim()
    }

    /// Logits (n, classes) of normalized images (n, 3, h, w) in the model's
    /// dtype (see [`imagenet_normalize`]), BatchNorm with running statistics.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_mode(x, Mode::Eval, &mut RunningStats::default())
    }

    /// Logits in training mode (BatchNorm with batch statistics), and the
    /// updated running statistics under their checkpoint names.
    pub fn forward_train(&self, x: &Tensor) -> Result<(Tensor, RunningStats)> {
        let mut stats = RunningStats::default();
        let logits = self.forward_mode(x, Mode::Train, &mut stats)?;
        Ok((logits, stats))
    }

    fn forward_mode(&self, x: &Tensor, mode: Mode, stats: &mut RunningStats) -> Result<Tensor> {
        if x.rank() != 4 || x.dims()[1] != 3 {
            return shape_err("resnet", format!("input {} is not (n, 3, h, w)", x.shape()));
        }
        let mut h = self.stem.forward(x, mode, stats)?.relu()?;
        if self.stem_kind == Stem::ImageNet {
            h = h.max_pool2d(3, 2, 1)?;
        }
        for block in &self.blocks {
            h = block.forward(&h, mode, stats)?;
        }
        let (n, c) = (h.dims()[0], h.dims()[1]);
        let pooled = h.reshape([n, c, usize::MAX])?.mean(2, false)?;
        self.fc.forward(&pooled)
    }
}

/// Fresh weights for `arch` under torchvision's names, initialised as
/// torchvision's ResNet.__init__ does: Kaiming-normal (fan_out, ReLU) convolutions,
/// BatchNorm weight 1 and bias 0 with running statistics 0 and 1, and nn.Linear's
/// uniform ±1/√fan_in for fc. `width` is the first stage's width (64 in
/// torchvision; the stages double it), so small models train quickly.
pub fn resnet_init(
    arch: ResNetArch,
    stem: Stem,
    width: usize,
    classes: usize,
    rng: &mut Rng,
) -> Result<BTreeMap<String, Tensor>> {
    let dev = Device::Cpu;
    let mut w = BTreeMap::new();
    let mut conv = |w: &mut BTreeMap<String, Tensor>, name: String, out: usize, inp: usize, k: usize| -> Result<()> {
        let std = (2.0 / (out * k * k) as f32).sqrt();
        w.insert(format!("{name}.weight"), Tensor::randn([out, inp, k, k], rng, &dev)?.scale(std)?);
        Ok(())
    };
    let bn = |w: &mut BTreeMap<String, Tensor>, name: String, c: usize| -> Result<()> {
        w.insert(format!("{name}.weight"), Tensor::from_f32(vec![1.0; c], [c], &dev)?);
        w.insert(format!("{name}.bias"), Tensor::from_f32(vec![0.0; c], [c], &dev)?);
        w.insert(format!("{name}.running_mean"), Tensor::from_f32(vec![0.0; c], [c], &dev)?);
        w.insert(format!("{name}.running_var"), Tensor::from_f32(vec![1.0; c], [c], &dev)?);
        w.insert(format!("{name}.num_batches_tracked"), Tensor::from_u32(vec![0], [], &dev)?);
        Ok(())
    };
    conv(&mut w, "conv1".into(), width, 3, stem.kernel())?;
    bn(&mut w, "bn1".into(), width)?;
    let expansion = if arch.bottleneck() { 4 } else { 1 };
    let mut in_ch = width;
    for (stage, &count) in arch.blocks().iter().enumerate() {
        let planes = width << stage;
        for i in 0..count {
            let p = format!("layer{}.{i}", stage + 1);
            let stride = if stage > 0 && i == 0 { 2 } else { 1 };
            let layout: &[(usize, usize)] = if arch.bottleneck() {
                &[(1, planes), (3, planes), (1, planes * expansion)]
            } else {
                &[(3, planes), (3, planes)]
            };
            let mut ch = in_ch;
            for (j, &(k, out)) in layout.iter().enumerate() {
                conv(&mut w, format!("{p}.conv{}", j + 1), out, ch, k)?;
                bn(&mut w, format!("{p}.bn{}", j + 1), out)?;
                ch = out;
            }
            if stride != 1 || ch != in_ch {
                conv(&mut w, format!("{p}.downsample.0"), ch, in_ch, 1)?;
                bn(&mut w, format!("{p}.downsample.1"), ch)?;
            }
            in_ch = ch;
        }
    }
    let bound = 1.0 / (in_ch as f32).sqrt();
    w.insert("fc.weight".into(), Tensor::rand_uniform([classes, in_ch], -bound, bound, rng, &dev)?);
    w.insert("fc.bias".into(), Tensor::rand_uniform([classes], -bound, bound, rng, &dev)?);
    Ok(w)
}

/// (images − mean) / std per RGB channel with torchvision's ImageNet mean and
/// std, for images (..., 3, h, w) with values in [0, 1].
pub fn imagenet_normalize(images: &Tensor) -> Result<Tensor> {
    let d = images.dims();
    if d.len() < 3 || d[d.len() - 3] != 3 {
        return shape_err("imagenet_normalize", format!("images {} are not (..., 3, h, w)", images.shape()));
    }
    let per_channel = |v: [f32; 3]| -> Result<Tensor> {
        Tensor::from_f32(v.to_vec(), [3, 1, 1], &images.device())?.to_dtype(images.dtype())
    };
    images.sub(&per_channel(IMAGENET_MEAN)?)?.div(&per_channel(IMAGENET_STD)?)
}
