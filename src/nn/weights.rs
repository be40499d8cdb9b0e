//! The weight loader: tensors of one or more safetensors files looked up by
//! their public names under a prefix (`down_blocks.0.resnets.1`), converted to
//! the compute dtype on the compute device, with every name a model asks for
//! recorded so that the tensors it never asked for can be reported.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::device::{DType, Device};
use crate::error::{Error, Result};
use crate::tensor::safetensors::SafetensorsFile;
use crate::tensor::Tensor;

struct Shared {
    files: Vec<SafetensorsFile>,
    /// Tensors held in memory (a model being trained), named as in a checkpoint.
    memory: BTreeMap<String, Tensor>,
    /// What error messages call an in-memory checkpoint.
    memory_label: PathBuf,
    dtype: DType,
    device: Device,
    used: Mutex<BTreeSet<String>>,
    /// When recording: the names and shapes a model asked for (see [`Weights::recording`]).
    recorded: Option<Mutex<BTreeMap<String, Vec<usize>>>>,
}

/// A view of a checkpoint under a name prefix; clones share the checkpoint.
#[derive(Clone)]
pub struct Weights {
    shared: Arc<Shared>,
    prefix: String,
}

impl Weights {
    /// The tensors of `paths` (the shards of one checkpoint), to be loaded as
    /// `dtype` on `device`. A name present in two shards is an error.
    pub fn open(paths: &[PathBuf], dtype: DType, device: &Device) -> Result<Weights> {
        if paths.is_empty() {
            return Err(Error::Usage("a checkpoint needs at least one safetensors file".into()));
        }
        let files = paths.iter().map(SafetensorsFile::open).collect::<Result<Vec<_>>>()?;
        let mut seen = BTreeSet::new();
        for file in &files {
            for name in file.names() {
                if !seen.insert(name.clone()) {
                    return Err(file_error(file.path(), format!("tensor '{name}' is also in another shard")));
                }
            }
        }
        let shared = Shared {
            files,
            memory: BTreeMap::new(),
            memory_label: PathBuf::new(),
            dtype,
            device: device.clone(),
            used: Mutex::new(BTreeSet::new()),
            recorded: None,
        };
        Ok(Weights { shared: Arc::new(shared), prefix: String::new() })
    }

    /// Tensors already in memory, by checkpoint name (the parameters of a model
    /// being trained: tracked tensors stay tracked, so the model built from them
    /// is differentiable). `label` names them in error messages.
    pub fn from_tensors(label: &str, tensors: BTreeMap<String, Tensor>, dtype: DType, device: &Device) -> Weights {
        let shared = Shared {
            files: vec![],
            memory: tensors,
            memory_label: PathBuf::from(label),
            dtype,
            device: device.clone(),
            used: Mutex::new(BTreeSet::new()),
            recorded: None,
        };
        Weights { shared: Arc::new(shared), prefix: String::new() }
    }

    /// A loader with no tensors that records what a model asks for: each tensor
    /// requested with a shape is given as f32 zeros on the CPU and its name and
    /// shape remembered, so building a model from a config lists its parameters
    /// (which a new model's initialisation then fills, see `nn::init`).
    pub fn recording() -> Weights {
        let shared = Shared {
            files: vec![],
            memory: BTreeMap::new(),
            memory_label: PathBuf::from("a new model"),
            dtype: DType::F32,
            device: Device::Cpu,
            used: Mutex::new(BTreeSet::new()),
            recorded: Some(Mutex::new(BTreeMap::new())),
        };
        Weights { shared: Arc::new(shared), prefix: String::new() }
    }

    /// The names and shapes asked for since [`Weights::recording`] (empty for a
    /// loader of stored tensors).
    pub fn recorded(&self) -> BTreeMap<String, Vec<usize>> {
        self.shared.recorded.as_ref().map(|r| r.lock().unwrap_or_else(|p| p.into_inner()).clone()).unwrap_or_default()
    }

    /// Zeros of the recorded shape of `full`, recording `dims` first when given.
    fn record(&self, full: &str, dims: Option<&[usize]>) -> Option<Result<Tensor>> {
        let mut recorded = self.shared.recorded.as_ref()?.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(dims) = dims {
            recorded.entry(full.to_string()).or_insert_with(|| dims.to_vec());
        }
        let dims = recorded.get(full)?.clone();
        Some(Tensor::zeros(dims, DType::F32, &Device::Cpu))
    }

    /// The weights of a diffusers or transformers component folder: its
    /// `*.safetensors` files (one, or the shards of a sharded checkpoint).
    pub fn open_dir(dir: &Path, dtype: DType, device: &Device) -> Result<Weights> {
        let listing = std::fs::read_dir(dir).map_err(|e| file_error(dir, e.to_string()))?;
        let mut paths: Vec<PathBuf> = listing
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        if paths.is_empty() {
            return Err(file_error(dir, "no .safetensors file in this folder".into()));
        }
        paths.sort();
        // A folder may hold the same weights twice (f32 and a `.fp16` variant); take the plain one.
        if paths.len() > 1 {
            let plain: Vec<PathBuf> = paths.iter().filter(|p| !is_variant(p)).cloned().collect();
            if !plain.is_empty() {
                paths = plain;
            }
        }
        Weights::open(&paths, dtype, device)
    }

    pub fn dtype(&self) -> DType {
        self.shared.dtype
    }

    pub fn device(&self) -> &Device {
        &self.shared.device
    }

    /// The view under `self.prefix + "." + name`.
    pub fn pp(&self, name: impl Display) -> Weights {
        Weights { shared: self.shared.clone(), prefix: self.full(&name.to_string()) }
    }

    /// The checkpoint name of `name` under this view's prefix.
    pub fn name(&self, name: &str) -> String {
        self.full(name)
    }

    fn full(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    fn find(&self, full: &str) -> Option<Stored<'_>> {
        if let Some(t) = self.shared.memory.get(full) {
            return Some(Stored::Memory(t));
        }
        self.shared.files.iter().find(|f| f.contains(full)).map(Stored::File)
    }

    fn first_file(&self) -> &Path {
        self.shared.files.first().map_or(&self.shared.memory_label, |f| f.path())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.find(&self.full(name)).is_some()
    }

    /// The stored shape of `name`, for sizes a model reads from its weights.
    pub fn shape(&self, name: &str) -> Result<Vec<usize>> {
        let full = self.full(name);
        match self.find(&full) {
            Some(f) => Ok(f.shape(&full)),
            None => Err(file_error(self.first_file(), format!("missing tensor '{full}'"))),
        }
    }

    /// The tensor `name`, which must have shape `dims`.
    pub fn get(&self, name: &str, dims: &[usize]) -> Result<Tensor> {
        let full = self.full(name);
        let Some(found) = self.find(&full) else {
            if let Some(zeros) = self.record(&full, Some(dims)) {
                return zeros;
            }
            return Err(file_error(self.first_file(), format!("missing tensor '{full}' (expected shape {dims:?})")));
        };
        let stored = found.shape(&full);
        if stored != dims {
            let path = found.path().unwrap_or(self.first_file());
            return Err(file_error(path, format!("tensor '{full}' has shape {stored:?}, expected {dims:?}")));
        }
        self.load(found, &full)
    }

    /// The tensor `name` at whatever shape it is stored.
    pub fn get_any(&self, name: &str) -> Result<Tensor> {
        let full = self.full(name);
        match self.find(&full) {
            Some(file) => self.load(file, &full),
            None => match self.record(&full, None) {
                Some(zeros) => zeros,
                None => Err(file_error(self.first_file(), format!("missing tensor '{full}'"))),
            },
        }
    }

    fn load(&self, found: Stored<'_>, full: &str) -> Result<Tensor> {
        let t = match found {
            Stored::File(file) => file.load(full, self.shared.dtype, &self.shared.device)?,
            Stored::Memory(t) => t.to_device(&self.shared.device)?.to_dtype(self.shared.dtype)?,
        };
        self.mark_used(full);
        Ok(t)
    }

    /// Records tensors a model reads on purpose without loading (buffers such
    /// as BatchNorm's `num_batches_tracked` or CLIP's `position_ids`).
    pub fn ignore(&self, name: &str) {
        let full = self.full(name);
        self.mark_used(&full);
    }

    fn mark_used(&self, full: &str) {
        self.shared.used.lock().unwrap_or_else(|p| p.into_inner()).insert(full.to_string());
    }

    /// An error naming the tensors under this view's prefix that no layer used:
    /// a checkpoint for another architecture or another configuration.
    pub fn check_all_used(&self) -> Result<()> {
        let used = self.shared.used.lock().unwrap_or_else(|p| p.into_inner());
        let memory = (&self.shared.memory_label, self.shared.memory.keys().cloned().collect::<Vec<_>>());
        let files = self.shared.files.iter().map(|f| (f.path(), f.names()));
        for (path, names) in files.chain((!memory.1.is_empty()).then_some((memory.0.as_path(), memory.1))) {
            let unused: Vec<String> = names
                .into_iter()
                .filter(|n| self.prefix.is_empty() || n.starts_with(&format!("{}.", self.prefix)))
                .filter(|n| !used.contains(n))
                .collect();
            if let Some(first) = unused.first() {
                let more = if unused.len() > 1 { format!(" and {} more", unused.len() - 1) } else { String::new() };
                return Err(file_error(path, format!("unexpected tensor '{first}'{more} (not used by the model)")));
            }
        }
        Ok(())
    }
}

/// Where a named tensor is: in a safetensors file, or in memory.
#[derive(Clone, Copy)]
enum Stored<'a> {
    File(&'a SafetensorsFile),
    Memory(&'a Tensor),
}

impl Stored<'_> {
    fn shape(&self, full: &str) -> Vec<usize> {
        match self {
            Stored::File(f) => f.shape(full).unwrap_or_default().to_vec(),
            Stored::Memory(t) => t.dims().to_vec(),
        }
    }

    fn path(&self) -> Option<&Path> {
        match self {
            Stored::File(f) => Some(f.path()),
            Stored::Memory(_) => None,
        }
    }
}

fn is_variant(path: &Path) -> bool {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    [".fp16", ".bf16", ".fp32", ".non_ema", ".ema"].iter().any(|v| stem.ends_with(v))
}

fn file_error(path: &Path, detail: String) -> Error {
    Error::File { file: path.display().to_string(), detail }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::safetensors::save;

    #[test]
    fn prefixes_shapes_and_unused_tensors() {
        let dev = Device::Cpu;
        let dir = std::env::temp_dir().join(format!("foil-weights-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.safetensors");
        let w = Tensor::from_f32(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [2, 3], &dev).unwrap();
        let b = Tensor::from_f32(vec![0.5, -0.5], [2], &dev).unwrap();
        save(&path, &[("block.0.proj.weight", &w), ("block.0.proj.bias", &b), ("extra", &b)]).unwrap();
        let ws = Weights::open_dir(&dir, DType::F32, &dev).unwrap();
        let proj = ws.pp("block").pp(0).pp("proj");
        assert_eq!(proj.shape("weight").unwrap(), [2, 3]);
        let e = proj.get("weight", &[3, 2]).unwrap_err().to_string();
        assert!(e.contains("block.0.proj.weight") && e.contains("[2, 3]") && e.contains("m.safetensors"), "{e}");
        assert!(proj.get("gamma", &[2]).unwrap_err().to_string().contains("missing tensor 'block.0.proj.gamma'"));
        proj.get("weight", &[2, 3]).unwrap();
        proj.get("bias", &[2]).unwrap();
        ws.pp("block").check_all_used().unwrap();
        let e = ws.check_all_used().unwrap_err().to_string();
        assert!(e.contains("unexpected tensor 'extra'"), "{e}");
        ws.ignore("extra");
        ws.check_all_used().unwrap();
    }
}
