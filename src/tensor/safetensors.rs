//! safetensors files: read by memory map (checkpoints are gigabytes; nothing is
//! copied before the tensor is asked for) and written atomically (a temporary
//! file renamed into place, so an interrupted write never leaves a broken file).
//!
//! Every offset comes from the `safetensors` crate's header validation, which
//! checks that the tensors tile the data section exactly and that the section
//! ends at the file's end, so no read goes past the end whatever the header says.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use memmap2::Mmap;
use rayon::prelude::*;
use safetensors::tensor::{Metadata, TensorInfo};
use safetensors::{Dtype, SafeTensors};

use super::atomic_file::write_atomically;
use super::Tensor;
use crate::device::{DType, Device, HostData};
use crate::error::{file_err, Error, Result};

/// An open safetensors file: the validated header and the mapped bytes.
pub struct SafetensorsFile {
    path: PathBuf,
    mmap: Mmap,
    data_start: usize,
    metadata: Metadata,
}

impl SafetensorsFile {
    pub fn open(path: impl AsRef<Path>) -> Result<SafetensorsFile> {
        let path = path.as_ref().to_path_buf();
        let file =
            File::open(&path).map_err(|e| Error::File { file: path.display().to_string(), detail: e.to_string() })?;
        // SAFETY: the map is read-only; a file changed underneath us by another process
        // can give wrong numbers but not unsafety in this process's own memory.
        let mmap = unsafe { Mmap::map(&file) }
            .map_err(|e| Error::File { file: path.display().to_string(), detail: format!("cannot map: {e}") })?;
        let (header_len, metadata) = match SafeTensors::read_metadata(&mmap) {
            Ok(parsed) => parsed,
            Err(e) => return file_err(&path, format!("not a valid safetensors file ({} bytes): {e}", mmap.len())),
        };
        Ok(SafetensorsFile { path, mmap, data_start: 8 + header_len, metadata })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The names of every tensor, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.metadata.tensors().into_keys().collect();
        names.sort();
        names
    }

    pub fn contains(&self, name: &str) -> bool {
        self.metadata.info(name).is_some()
    }

    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.metadata.info(name).map(|i| i.shape.as_slice())
    }

    pub fn stored_dtype(&self, name: &str) -> Option<Dtype> {
        self.metadata.info(name).map(|i| i.dtype)
    }

    /// The tensor `name` converted to `dtype` on `device`. Floating-point data
    /// (f64, f32, f16, bf16) converts to any float dtype; integer data to u32
    /// when every value fits.
    pub fn load(&self, name: &str, dtype: DType, device: &Device) -> Result<Tensor> {
        let Some(info) = self.metadata.info(name) else {
            return file_err(&self.path, format!("no tensor named '{name}'"));
        };
        let host = self.host_data(name, info, dtype)?;
        Tensor::from_host(host, info.shape.clone(), device)
    }

    fn host_data(&self, name: &str, info: &TensorInfo, dtype: DType) -> Result<HostData> {
        let (start, end) = info.data_offsets;
        let bytes = &self.mmap[self.data_start + start..self.data_start + end];
        let bad = |detail: String| file_err(&self.path, format!("tensor '{name}': {detail}"));
        if dtype == DType::U32 {
            let values: Vec<i64> = match info.dtype {
                Dtype::I64 => le_chunks::<8>(bytes).map(i64::from_le_bytes).collect(),
                Dtype::I32 => le_chunks::<4>(bytes).map(|b| i32::from_le_bytes(b) as i64).collect(),
                Dtype::U32 => le_chunks::<4>(bytes).map(|b| u32::from_le_bytes(b) as i64).collect(),
                other => return bad(format!("stored as {other:?}, cannot be read as integer ids")),
            };
            if let Some(v) = values.iter().find(|&&v| !(0..=u32::MAX as i64).contains(&v)) {
                return bad(format!("value {v} does not fit u32"));
            }
            return Ok(HostData::U32(values.into_iter().map(|v| v as u32).collect()));
        }
        // Same-dtype half data is taken bit for bit rather than through f32.
        match (dtype, info.dtype) {
            (DType::F16, Dtype::F16) => return Ok(HostData::F16(par_convert::<2, _>(bytes, f16::from_le_bytes))),
            (DType::BF16, Dtype::BF16) => return Ok(HostData::BF16(par_convert::<2, _>(bytes, bf16::from_le_bytes))),
            _ => {}
        }
        let values = match info.dtype {
            Dtype::F32 => par_convert::<4, _>(bytes, f32::from_le_bytes),
            Dtype::F64 => par_convert::<8, _>(bytes, |b| f64::from_le_bytes(b) as f32),
            Dtype::F16 => par_convert::<2, _>(bytes, |b| f16::from_le_bytes(b).to_f32()),
            Dtype::BF16 => par_convert::<2, _>(bytes, |b| bf16::from_le_bytes(b).to_f32()),
            other => return bad(format!("stored as {other:?}; only F64, F32, F16 and BF16 weights are supported")),
        };
        let host = match dtype {
            DType::F16 => HostData::F16(values.into_par_iter().map(f16::from_f32).collect()),
            DType::BF16 => HostData::BF16(values.into_par_iter().map(bf16::from_f32).collect()),
            _ => HostData::F32(values),
        };
        Ok(host)
    }
}

fn le_chunks<const N: usize>(bytes: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
    bytes.chunks_exact(N).map(|c| c.try_into().expect("chunks_exact yields N bytes"))
}

fn par_convert<const N: usize, T: Send>(bytes: &[u8], f: impl Fn([u8; N]) -> T + Sync) -> Vec<T> {
    bytes.par_chunks_exact(N).map(|c| f(c.try_into().expect("chunks_exact yields N bytes"))).collect()
}

/// Every tensor of the file, by name, in `dtype` on `device`.
pub fn load_all(path: impl AsRef<Path>, dtype: DType, device: &Device) -> Result<HashMap<String, Tensor>> {
    let file = SafetensorsFile::open(path)?;
    file.names().into_iter().map(|n| Ok((n.clone(), file.load(&n, dtype, device)?))).collect()
}

/// Writes `tensors` (name, tensor) to `path` in their own dtypes, through a
/// temporary file in the same folder that is renamed over `path` at the end.
pub fn save(path: impl AsRef<Path>, tensors: &[(&str, &Tensor)]) -> Result<()> {
    let path = path.as_ref();
    let mut header = serde_json::Map::new();
    let mut blobs = Vec::with_capacity(tensors.len());
    let mut offset = 0usize;
    for (name, tensor) in tensors {
        let (dtype, bytes): (&str, Vec<u8>) = match tensor.to_host()? {
            HostData::F32(v) => ("F32", bytemuck::cast_slice(&v).to_vec()),
            HostData::F16(v) => ("F16", bytemuck::cast_slice(&v).to_vec()),
            HostData::BF16(v) => ("BF16", bytemuck::cast_slice(&v).to_vec()),
            HostData::U32(v) => ("U32", bytemuck::cast_slice(&v).to_vec()),
        };
        let entry =
            serde_json::json!({"dtype": dtype, "shape": tensor.dims(), "data_offsets": [offset, offset + bytes.len()]});
        header.insert(name.to_string(), entry);
        offset += bytes.len();
        blobs.push(bytes);
    }
    let mut header = serde_json::Value::Object(header).to_string().into_bytes();
    // The data section starts 8-byte aligned, as the reference writer leaves it.
    header.resize(header.len().next_multiple_of(8), b' ');

    write_atomically(path, "cannot write", |out| {
        out.write_all(&(header.len() as u64).to_le_bytes())?;
        out.write_all(&header)?;
        for blob in &blobs {
            out.write_all(blob)?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("foil-st-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    #[test]
    fn round_trip_every_dtype() {
        let dev = Device::Cpu;
        let a = Tensor::from_f32(vec![1.5, -2.25, 3.0, 0.125, 7.0, -0.5], [2, 3], &dev).unwrap();
        let h = a.to_dtype(DType::F16).unwrap();
        let ids = Tensor::from_u32(vec![3, 1, 4], [3], &dev).unwrap();
        let path = scratch("rt.safetensors");
        save(&path, &[("a", &a), ("h", &h), ("ids", &ids)]).unwrap();
        let f = SafetensorsFile::open(&path).unwrap();
        assert_eq!(f.names(), ["a", "h", "ids"]);
        assert_eq!(f.load("a", DType::F32, &dev).unwrap().to_vec_f32().unwrap(), a.to_vec_f32().unwrap());
        assert_eq!(f.load("h", DType::F32, &dev).unwrap().to_vec_f32().unwrap(), a.to_vec_f32().unwrap());
        assert_eq!(f.stored_dtype("h"), Some(Dtype::F16));
        assert_eq!(f.load("ids", DType::U32, &dev).unwrap().to_vec_u32().unwrap(), [3, 1, 4]);
        assert!(f.load("a", DType::U32, &dev).is_err());
        let missing = f.load("b", DType::F32, &dev).unwrap_err().to_string();
        assert!(missing.contains("'b'") && missing.contains("rt.safetensors"), "{missing}");
    }

    #[test]
    fn truncated_and_lying_headers_are_errors() {
        let dev = Device::Cpu;
        let a = Tensor::from_f32((0..64).map(|i| i as f32).collect(), [8, 8], &dev).unwrap();
        let path = scratch("whole.safetensors");
        save(&path, &[("a", &a)]).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        for cut in [0, 5, 8, 20, bytes.len() - 1] {
            let p = scratch("cut.safetensors");
            std::fs::write(&p, &bytes[..cut]).unwrap();
            let e = SafetensorsFile::open(&p).err().expect("a truncated file must not open").to_string();
            assert!(e.contains("cut.safetensors") && e.contains("not a valid safetensors"), "{e}");
        }
        // A header that claims more data than the file has.
        let header = br#"{"a":{"dtype":"F32","shape":[1000],"data_offsets":[0,4000]}}"#;
        let mut lying = (header.len() as u64).to_le_bytes().to_vec();
        lying.extend_from_slice(header);
        lying.extend_from_slice(&[0u8; 16]);
        let p = scratch("lying.safetensors");
        std::fs::write(&p, &lying).unwrap();
        assert!(SafetensorsFile::open(&p).is_err());
    }
}
