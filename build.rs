//! Compiles kernels/*.cu to PTX for sm_80 and sm_90 when nvcc is found, and
//! always embeds the sources (with their kernels/*.cuh headers inlined) so the CUDA backend can
//! compile them with NVRTC at run time when no PTX was built. A broken nvcc is a
//! build error; a missing one is not.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The architectures PTX is built for: sm_80 runs on Ampere and Ada, sm_90 on Hopper.
const ARCHS: [&str; 2] = ["sm_80", "sm_90"];

fn main() {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let kernels = root.join("kernels");
    println!("cargo:rerun-if-changed=kernels");
    for var in ["NVCC", "CUDA_HOME", "FOIL_NVRTC_ONLY", "PATH"] {
        println!("cargo:rerun-if-env-changed={var}");
    }

    let mut sources: Vec<PathBuf> = fs::read_dir(&kernels)
        .expect("kernels/ exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .collect();
    sources.sort();

    // FOIL_NVRTC_ONLY=1 skips nvcc, to exercise the run-time compile path.
    let nvcc = if env::var_os("FOIL_NVRTC_ONLY").is_some() { None } else { find_nvcc(&root) };
    let compiler = nvcc.as_ref().map(|n| nvcc_version(n));

    let mut table = String::from("pub const FAMILIES: &[KernelFamily] = &[\n");
    for src in &sources {
        let name = src.file_stem().unwrap().to_str().unwrap().to_string();
        let mut seen = Vec::new();
        let inlined = inline_includes(&kernels, src, &mut seen);
        let inlined_path = out.join(format!("{name}.nvrtc.cu"));
        fs::write(&inlined_path, inlined).unwrap();
        let mut ptx = String::new();
        if let Some(nvcc) = &nvcc {
            for arch in ARCHS {
                let path = out.join(format!("{name}.{arch}.ptx"));
                compile_ptx(nvcc, &kernels, src, arch, &path);
                writeln!(ptx, "(\"{arch}\", include_str!({:?})),", path.display().to_string()).unwrap();
            }
        }
        writeln!(
            table,
            "KernelFamily {{ name: {name:?}, source: include_str!({:?}), ptx: &[{ptx}] }},",
            inlined_path.display().to_string()
        )
        .unwrap();
    }
    table.push_str("];\n");
    writeln!(table, "pub const PTX_COMPILER: Option<&str> = {compiler:?};").unwrap();
    fs::write(out.join("kernels.rs"), table).unwrap();
}

/// nvcc from NVCC, CUDA_HOME, PATH, or the project's own toolchain folder.
fn find_nvcc(root: &Path) -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(n) = env::var_os("NVCC") {
        candidates.push(PathBuf::from(n));
    }
    if let Some(home) = env::var_os("CUDA_HOME") {
        candidates.push(PathBuf::from(home).join("bin/nvcc"));
    }
    if let Some(path) = env::var_os("PATH") {
        candidates.extend(env::split_paths(&path).map(|d| d.join("nvcc")));
    }
    candidates.push(root.join(".cuda-toolchain/nvidia/cu13/bin/nvcc"));
    candidates.into_iter().find(|c| c.is_file())
}

fn nvcc_version(nvcc: &Path) -> String {
    let out = Command::new(nvcc).arg("--version").output();
    let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    let release = text.lines().find(|l| l.contains("release")).unwrap_or("unknown version").trim();
    format!("nvcc ({release})")
}

/// The text of `file` with every `#include "x.cuh"` of kernels/ replaced by that
/// header's own inlined text, each header once (they are all `#pragma once`):
/// NVRTC gets one self-contained source and needs no include path.
fn inline_includes(dir: &Path, file: &Path, seen: &mut Vec<PathBuf>) -> String {
    let text = fs::read_to_string(file).unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let header = line.trim().strip_prefix("#include \"").and_then(|rest| rest.strip_suffix('"'));
        match header {
            Some(name) => {
                let path = dir.join(name);
                if !seen.contains(&path) {
                    seen.push(path.clone());
                    out.push_str(&inline_includes(dir, &path, seen));
                }
            }
            None if line.trim() == "#pragma once" => {}
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

fn compile_ptx(nvcc: &Path, include: &Path, src: &Path, arch: &str, out: &Path) {
    let status = Command::new(nvcc)
        .args(["-ptx", "-O3", "--std=c++17", "-lineinfo", &format!("-arch={arch}"), "-I"])
        .arg(include)
        .arg(src)
        .arg("-o")
        .arg(out)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", nvcc.display()));
    if !status.status.success() {
        panic!(
            "nvcc failed on {} for {arch}:\n{}{}",
            src.display(),
            String::from_utf8_lossy(&status.stdout),
            String::from_utf8_lossy(&status.stderr)
        );
    }
}
