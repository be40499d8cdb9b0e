//! The library's error type: every failure is a value that reads as one line.

use crate::device::DType;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op}: shape mismatch: {detail}")]
    Shape { op: &'static str, detail: String },
    #[error("{op}: unsupported dtype {dtype}")]
    DType { op: &'static str, dtype: DType },
    #[error("{op}: operands are on different devices ({lhs} and {rhs})")]
    DeviceMismatch { op: &'static str, lhs: String, rhs: String },
    #[error("CUDA: {0}")]
    Cuda(String),
    #[error("GPU out of memory: {0}")]
    OutOfMemory(String),
    #[error("compiling CUDA kernels '{family}' for {arch} failed: {log}")]
    KernelCompile { family: String, arch: String, log: String },
    /// A request that makes no sense, e.g. an unknown device name.
    #[error("{0}")]
    Usage(String),
    /// A file that cannot be used (a checkpoint, a config, an image): names the
    /// file and what is wrong with it (the tensor, the key, the byte offset).
    #[error("{file}: {detail}")]
    File { file: String, detail: String },
    /// A gradient foil cannot compute, or a training run that cannot go on
    /// (a non-finite loss).
    #[error("{0}")]
    Training(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn file_err<T>(file: &std::path::Path, detail: impl Into<String>) -> Result<T> {
    Err(Error::File { file: file.display().to_string(), detail: detail.into() })
}

pub(crate) fn shape_err<T>(op: &'static str, detail: impl Into<String>) -> Result<T> {
    Err(Error::Shape { op, detail: detail.into() })
}
