//! The kernel build without a GPU: every family of kernels/README.md exists,
//! its prebuilt PTX (when nvcc was found) and its NVRTC compile (when libnvrtc
//! loads) both export every entry point the launchers call.

use std::io::Write;

use foil::device::cuda::kernels::{compile_nvrtc, nvrtc_available, FAMILIES, PTX_COMPILER};

const FLOATS: [&str; 3] = ["f32", "f16", "bf16"];
const WIDTHS: [&str; 2] = ["b16", "b32"];

/// The entry points of each family, as kernels/README.md lists them.
fn expected() -> Vec<(&'static str, Vec<String>)> {
    let per = |ops: &[&str], suffixes: &[&str]| -> Vec<String> {
        ops.iter().flat_map(|op| suffixes.iter().map(move |s| format!("{op}_{s}"))).collect()
    };
    let all = ["f32", "f16", "bf16", "u32"];
    let casts = all.iter().flat_map(|s| all.iter().filter(move |d| *d != s).map(move |d| format!("cast_{s}_{d}")));
    let attention =
        FLOATS.iter().flat_map(|t| ["d64", "d128", "d256"].into_iter().map(move |d| format!("attention_{t}_{d}")));
    vec![
        ("elementwise", per(&["unary", "scale", "binary"], &FLOATS).into_iter().chain(casts).collect()),
        ("reduce", per(&["reduce", "argmax", "softmax"], &FLOATS)),
        ("norm", per(&["layer_norm", "group_norm"], &FLOATS)),
        ("layout", per(&["copy_strided", "copy2d", "upsample_nearest2x", "embedding"], &WIDTHS)),
        ("gemm", per(&["matmul"], &FLOATS)),
        ("conv", per(&["conv2d"], &FLOATS)),
        ("attention", attention.collect()),
    ]
}

fn skip(test: &str, reason: &str) {
    let line = format!("SKIPPED kernels::{test}: {reason}\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

fn assert_entries(family: &str, origin: &str, ptx: &str, names: &[String]) {
    for name in names {
        assert!(ptx.contains(&format!(".entry {name}(")), "{family} ({origin}) does not export {name}");
    }
}

#[test]
fn every_family_is_built() {
    let built: Vec<&str> = FAMILIES.iter().map(|f| f.name).collect();
    for (family, _) in expected() {
        assert!(built.contains(&family), "kernels/{family}.cu is missing from the build ({built:?})");
    }
    for f in FAMILIES {
        assert!(!f.source.contains("#include"), "{}: NVRTC source must have its headers inlined", f.name);
    }
}

#[test]
fn prebuilt_ptx_exports_every_entry_point() {
    let Some(compiler) = PTX_COMPILER else {
        return skip("prebuilt_ptx_exports_every_entry_point", "no nvcc at build time, so no prebuilt PTX");
    };
    for (family, names) in expected() {
        let f = FAMILIES.iter().find(|f| f.name == family).expect("family built");
        for arch in ["sm_80", "sm_90"] {
            let ptx = f.ptx.iter().find(|(a, _)| *a == arch).map(|(_, p)| *p);
            let ptx = ptx.unwrap_or_else(|| panic!("{family}: no {arch} PTX from {compiler}"));
            assert_entries(family, arch, ptx, &names);
        }
    }
}

#[test]
fn nvrtc_compiles_every_family() {
    if !nvrtc_available() {
        return skip("nvrtc_compiles_every_family", "libnvrtc not found (set LD_LIBRARY_PATH, see .ci/run)");
    }
    for (family, names) in expected() {
        let f = FAMILIES.iter().find(|f| f.name == family).expect("family built");
        for arch in ["sm_80", "sm_90"] {
            let ptx = compile_nvrtc(f, arch).unwrap_or_else(|e| panic!("{e}"));
            assert_entries(family, &format!("NVRTC {arch}"), &ptx.to_src(), &names);
        }
    }
}
