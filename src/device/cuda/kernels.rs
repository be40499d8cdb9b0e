//! Where kernel PTX comes from: built by nvcc at compile time (see build.rs), or
//! compiled from the embedded sources by NVRTC at first use and cached on disk.

use std::path::PathBuf;

use cudarc::nvrtc::{self, CompileOptions, Ptx};

use crate::error::{Error, Result};

/// One kernels/*.cu file: its source (common.cuh inlined) and any prebuilt PTX.
pub struct KernelFamily {
    pub name: &'static str,
    pub source: &'static str,
    /// (arch, PTX) pairs, empty when nvcc was not found at build time.
    pub ptx: &'static [(&'static str, &'static str)],
}

include!(concat!(env!("OUT_DIR"), "/kernels.rs"));

/// How this build obtains kernels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelOrigin {
    /// PTX compiled by nvcc when foil was built; `arch` is the variant loaded.
    Prebuilt { compiler: &'static str, arch: &'static str },
    /// Compiled at run time by NVRTC for the device's own architecture.
    Nvrtc { arch: String, cache: Option<PathBuf> },
}

impl std::fmt::Display for KernelOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KernelOrigin::Prebuilt { compiler, arch } => write!(f, "prebuilt PTX ({arch}, {compiler})"),
            KernelOrigin::Nvrtc { arch, cache } => match cache {
                Some(dir) => write!(f, "NVRTC at run time ({arch}, cache {})", dir.display()),
                None => write!(f, "NVRTC at run time ({arch}, no disk cache)"),
            },
        }
    }
}

/// Chooses the origin for a device of compute capability (major, minor).
pub fn origin_for(cc: (i32, i32)) -> Result<KernelOrigin> {
    if cc.0 < 8 {
        return Err(Error::Cuda(format!(
            "compute capability {}.{} is older than sm_80, the oldest foil's kernels support",
            cc.0, cc.1
        )));
    }
    if let Some(compiler) = PTX_COMPILER {
        let arch = if cc.0 >= 9 { "sm_90" } else { "sm_80" };
        return Ok(KernelOrigin::Prebuilt { compiler, arch });
    }
    if !nvrtc_available() {
        return Err(Error::Cuda(
            "this build has no prebuilt PTX and the NVRTC library (libnvrtc.so) was not found".into(),
        ));
    }
    Ok(KernelOrigin::Nvrtc { arch: format!("sm_{}{}", cc.0, cc.1), cache: cache_dir() })
}

/// PTX of `family` for the given origin.
pub fn ptx(family: &KernelFamily, origin: &KernelOrigin) -> Result<Ptx> {
    match origin {
        KernelOrigin::Prebuilt { arch, .. } => family
            .ptx
            .iter()
            .find(|(a, _)| a == arch)
            .map(|(_, text)| Ptx::from_src(*text))
            .ok_or_else(|| Error::Cuda(format!("no prebuilt PTX of '{}' for {arch}", family.name))),
        KernelOrigin::Nvrtc { arch, cache } => compile_cached(family, arch, cache.as_ref()),
    }
}

pub fn family(name: &str) -> Result<&'static KernelFamily> {
    FAMILIES
        .iter()
        .find(|f| f.name == name)
        .ok_or_else(|| Error::Cuda(format!("no kernel family '{name}' in this build")))
}

/// $FOIL_CACHE_DIR, else $XDG_CACHE_HOME/foil, else ~/.cache/foil.
fn cache_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("FOIL_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("foil")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/foil")))?;
    std::fs::create_dir_all(&dir).ok()?;
    Some(dir)
}

/// FNV-1a: a stable content hash for cache keys (std's hasher is not stable across releases).
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for part in parts {
        for &b in *part {
            h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
    }
    h
}

fn nvrtc_version() -> String {
    let (mut major, mut minor) = (0, 0);
    // SAFETY: writes two ints; the library is present (checked in origin_for).
    unsafe { nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    format!("{major}.{minor}")
}

/// Whether libnvrtc can be loaded (cudarc panics on first use when it cannot).
pub fn nvrtc_available() -> bool {
    // SAFETY: only probes whether the shared library can be opened.
    unsafe { nvrtc::sys::is_culib_present() }
}

/// Compiles `family` with NVRTC for `arch` (e.g. "sm_90"), with no cache; CI
/// uses it to check the run-time path without a GPU.
pub fn compile_nvrtc(family: &KernelFamily, arch: &str) -> Result<Ptx> {
    if !nvrtc_available() {
        return Err(Error::Cuda("the NVRTC library (libnvrtc.so) was not found".into()));
    }
    let opts = CompileOptions {
        options: vec![format!("--gpu-architecture={arch}"), "-std=c++17".into(), "-lineinfo".into()],
        name: Some(format!("{}.cu", family.name)),
        ..Default::default()
    };
    nvrtc::compile_ptx_with_opts(family.source, opts).map_err(|e| Error::KernelCompile {
        family: family.name.into(),
        arch: arch.into(),
        log: match e {
            nvrtc::CompileError::CompileError { log, .. } => log.to_string_lossy().trim().replace('\n', " | "),
            other => format!("{other:?}"),
        },
    })
}

fn compile_cached(family: &KernelFamily, arch: &str, cache: Option<&PathBuf>) -> Result<Ptx> {
    let version = nvrtc_version();
    let key = fnv1a(&[family.source.as_bytes(), arch.as_bytes(), version.as_bytes()]);
    let path = cache.map(|d| d.join(format!("{}-{arch}-{key:016x}.ptx", family.name)));
    if let Some(text) = path.as_ref().and_then(|p| std::fs::read_to_string(p).ok()) {
        return Ok(Ptx::from_src(text));
    }
    let ptx = compile_nvrtc(family, arch)?;
    if let Some(path) = path {
        // Write then rename, so a concurrent reader never sees half a file; a
        // cache that cannot be written only costs a recompile next time.
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        if std::fs::write(&tmp, ptx.to_src()).is_ok() {
            let _ = std::fs::rename(&tmp, &path);
        }
    }
    Ok(ptx)
}
