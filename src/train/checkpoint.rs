//! Training checkpoints: the model's tensors under `model.`, the optimizer's
//! state under `optimizer.`, and the step count, in one safetensors file written
//! to a temporary name and renamed, so a crash leaves the previous checkpoint whole.

use std::collections::BTreeMap;
use std::path::Path;

use safetensors::Dtype;

use crate::device::{DType, Device};
use crate::error::{file_err, Result};
use crate::tensor::safetensors::{save, SafetensorsFile};
use crate::tensor::Tensor;

pub struct Checkpoint {
    pub model: BTreeMap<String, Tensor>,
    pub optimizer: Vec<(String, Tensor)>,
    pub step: usize,
}

pub fn write(file: &Path, model: &[(String, Tensor)], optimizer: &[(String, Tensor)], step: usize) -> Result<()> {
    let step = Tensor::from_u32(vec![step as u32], [1], &Device::Cpu)?;
    let mut named: Vec<(String, &Tensor)> = vec![("step".into(), &step)];
    named.extend(model.iter().map(|(n, t)| (format!("model.{n}"), t)));
    named.extend(optimizer.iter().map(|(n, t)| (format!("optimizer.{n}"), t)));
    let refs: Vec<(&str, &Tensor)> = named.iter().map(|(n, t)| (n.as_str(), *t)).collect();
    save(file, &refs)
}

pub fn read(file: &Path, device: &Device) -> Result<Checkpoint> {
    let mut all = read_tensors(file, device)?;
    let Some(step) = all.remove("step") else {
        return file_err(file, "not a foil training checkpoint (no 'step' tensor)");
    };
    let step = step.to_vec_u32()?.first().copied().unwrap_or(0) as usize;
    let mut model = BTreeMap::new();
    let mut optimizer = vec![];
    for (name, t) in all {
        if let Some(n) = name.strip_prefix("model.") {
            model.insert(n.to_string(), t);
        } else if let Some(n) = name.strip_prefix("optimizer.") {
            optimizer.push((n.to_string(), t));
        } else {
            return file_err(file, format!("unexpected tensor '{name}' in a training checkpoint"));
        }
    }
    Ok(Checkpoint { model, optimizer, step })
}

/// Every tensor of `file`: floating point as f32, integers as u32 (a torchvision
/// state dict's int64 `num_batches_tracked`).
pub fn read_tensors(file: &Path, device: &Device) -> Result<BTreeMap<String, Tensor>> {
    let f = SafetensorsFile::open(file)?;
    f.names()
        .into_iter()
        .map(|name| {
            let integer = matches!(f.stored_dtype(&name), Some(Dtype::I64 | Dtype::I32 | Dtype::U32));
            let t = f.load(&name, if integer { DType::U32 } else { DType::F32 }, device)?;
            Ok((name, t))
        })
        .collect()
}
