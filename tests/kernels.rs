//! The kernel build without a GPU: every family of kernels/README.md exists,
//! its prebuilt PTX (when nvcc was found) and its NVRTC compile (when libnvrtc
//! loads) both export every entry point the launchers call.

use std::io::Write;

use foil::device::cuda::kernels::{compile_nvrtc, nvrtc_available, FAMILIES, PTX_COMPILER};

const FLOATS: [&str; 3] = ["f32", "f16", "bf16"];
const WIDTHS: [&str; 2] = ["b16", "b32"];

/// Bytes of each kernel parameter: a device pointer, a u32/i32/f32 scalar, and
/// the by-value structs of kernels/common.cuh (their Rust mirrors in
/// src/device/cuda/args.rs assert the same sizes).
const PTR: usize = 8;
const U32: usize = 4;
const BROADCAST_ARGS: usize = 76;
const STRIDED_ARGS: usize = 52;
const CONV2D_ARGS: usize = 68;
const ATTENTION_ARGS: usize = 48;
const SCHEDULER_STEP_ARGS: usize = 64;

/// An entry point and the byte size of each of its parameters, in order.
type Entry = (String, Vec<usize>);

/// The entry points of each family with their parameters, as kernels/README.md
/// lists them and the launchers in src/device/cuda/storage.rs pass them.
fn expected() -> Vec<(&'static str, Vec<Entry>)> {
    let per = |ops: &[(&str, &[usize])], suffixes: &[&str]| -> Vec<Entry> {
        ops.iter().flat_map(|(op, p)| suffixes.iter().map(move |s| (format!("{op}_{s}"), p.to_vec()))).collect()
    };
    let all = ["f32", "f16", "bf16", "u32"];
    let casts = all
        .iter()
        .flat_map(|s| all.iter().filter(move |d| *d != s).map(move |d| (format!("cast_{s}_{d}"), vec![PTR, PTR, U32])));
    let attention = FLOATS.iter().flat_map(|t| {
        let params = vec![PTR, PTR, PTR, PTR, PTR, ATTENTION_ARGS];
        ["d64", "d128", "d256"].into_iter().map(move |d| (format!("attention_{t}_{d}"), params.clone()))
    });
    let elementwise = [
        ("unary", &[PTR, PTR, U32, U32][..]),
        ("scale", &[PTR, PTR, U32, U32]),
        ("clamp", &[PTR, PTR, U32, U32, U32]),
        ("geglu", &[PTR, PTR, U32, U32]),
        ("binary", &[PTR, PTR, PTR, U32, U32, BROADCAST_ARGS]),
    ];
    let reduce = [
        ("reduce", &[PTR, PTR, U32, U32, U32, U32][..]),
        ("argmax", &[PTR, PTR, U32, U32, U32]),
        ("softmax", &[PTR, PTR, U32, U32, U32]),
    ];
    let norm = [
        ("layer_norm", &[PTR, PTR, PTR, PTR, U32, U32, U32][..]),
        ("group_norm", &[PTR, PTR, PTR, PTR, U32, U32, U32, U32, U32]),
    ];
    let layout = [
        ("copy_strided", &[PTR, PTR, U32, STRIDED_ARGS][..]),
        ("copy2d", &[PTR, PTR, U32, U32, U32, U32, U32, U32]),
        ("upsample_nearest2x", &[PTR, PTR, U32, U32, U32]),
        ("embedding", &[PTR, PTR, PTR, U32, U32, U32]),
    ];
    let window = [PTR, PTR, U32, U32, U32, U32, U32, U32, U32, U32];
    let pool = [
        ("max_pool2d", &window[..]),
        ("max_pool2d_backward", &[PTR, PTR, PTR, U32, U32, U32, U32, U32, U32, U32, U32]),
        ("avg_pool2d", &window),
        ("avg_pool2d_backward", &window),
        ("adaptive_avg_pool2d", &[PTR, PTR, U32, U32, U32, U32, U32]),
        ("adaptive_avg_pool2d_backward", &[PTR, PTR, U32, U32, U32, U32, U32]),
    ];
    let conv_grad = [
        ("conv2d_input_grad", &[PTR, PTR, PTR, CONV2D_ARGS][..]),
        ("conv2d_weight_grad", &[PTR, PTR, PTR, PTR, CONV2D_ARGS, U32, U32]),
        ("conv2d_weight_grad_reduce", &[PTR, PTR, U32, U32]),
    ];
    vec![
        ("elementwise", per(&elementwise, &FLOATS).into_iter().chain(casts).collect()),
        ("reduce", per(&reduce, &FLOATS)),
        ("norm", per(&norm, &FLOATS)),
        ("layout", per(&layout, &WIDTHS)),
        ("gemm", per(&[("matmul", &[PTR, PTR, PTR, U32, U32, U32, U32, U32, U32, U32])], &FLOATS)),
        ("conv", per(&[("conv2d", &[PTR, PTR, PTR, PTR, CONV2D_ARGS])], &FLOATS)),
        ("attention", attention.collect()),
        ("pool", per(&pool, &FLOATS)),
        ("conv_grad", per(&conv_grad, &FLOATS)),
        ("scheduler", per(&[("scheduler_step", &[PTR, PTR, PTR, PTR, PTR, PTR, U32, SCHEDULER_STEP_ARGS])], &FLOATS)),
        // optim: AdamWArgs is 32 bytes, SgdArgs 28 (src/device/cuda/args.rs asserts both).
        (
            "optim",
            per(
                &[("adamw_step", &[PTR, PTR, PTR, PTR, U32, 32][..]), ("sgd_step", &[PTR, PTR, PTR, U32, 28])],
                &["f32"],
            )
            .into_iter()
            .chain(per(&[("sum_squares", &[PTR, PTR, U32])], &FLOATS))
            .collect(),
        ),
        (
            "attention_grad",
            FLOATS
                .iter()
                .flat_map(|t| {
                    ["d64", "d96", "d160"].into_iter().flat_map(move |d| {
                        [("stats", 7), ("dq", 8), ("dkdv", 9)].into_iter().map(move |(kernel, pointers)| {
                            let params = [vec![PTR; pointers], vec![ATTENTION_ARGS]].concat();
                            (format!("attention_bwd_{kernel}_{t}_{d}"), params)
                        })
                    })
                })
                .collect(),
        ),
        (
            "elementwise_grad",
            per(
                &[
                    ("activation_backward", &[PTR, PTR, PTR, U32, U32][..]),
                    ("clamp_backward", &[PTR, PTR, PTR, U32, U32, U32]),
                    ("geglu_backward", &[PTR, PTR, PTR, U32, U32]),
                ],
                &FLOATS,
            ),
        ),
        (
            "embedding_grad",
            per(&[("embedding_grad_sum", &[PTR, PTR, PTR, PTR, U32, U32, U32][..])], &FLOATS)
                .into_iter()
                .chain([("embedding_grad_rank".to_string(), vec![PTR, PTR, U32, U32])])
                .collect(),
        ),
        (
            "norm_grad",
            per(
                &[
                    ("layer_norm_backward", &[PTR, PTR, PTR, PTR, PTR, U32, U32, U32][..]),
                    ("layer_norm_param_partials", &[PTR, PTR, PTR, PTR, U32, U32, U32]),
                    ("group_norm_backward", &[PTR, PTR, PTR, PTR, PTR, U32, U32, U32, U32, U32]),
                    ("norm_param_grads", &[PTR, PTR, PTR, PTR, U32, U32, U32]),
                    ("batch_norm_stats_partials", &[PTR, PTR, U32, U32, U32, U32]),
                    ("batch_norm_apply", &[PTR, PTR, PTR, PTR, PTR, PTR, U32, U32, U32, U32, U32]),
                    ("batch_norm_grad_partials", &[PTR, PTR, PTR, PTR, PTR, U32, U32, U32, U32, U32]),
                    ("batch_norm_backward_dx", &[PTR, PTR, PTR, PTR, PTR, PTR, PTR, U32, U32, U32, U32, U32]),
                ],
                &FLOATS,
            )
            .into_iter()
            .chain([("batch_norm_stats_merge".to_string(), vec![PTR, PTR, PTR, U32, U32])])
            .collect(),
        ),
        (
            "loss",
            per(
                &[
                    ("softmax_backward", &[PTR, PTR, PTR, U32, U32, U32][..]),
                    ("cross_entropy", &[PTR, PTR, PTR, U32, U32, U32]),
                    ("cross_entropy_backward", &[PTR, PTR, PTR, PTR, U32, U32, U32]),
                ],
                &FLOATS,
            ),
        ),
    ]
}

/// The byte sizes of the parameters of `.entry name(...)` in `ptx`, or None
/// when the entry is missing.
fn ptx_params(ptx: &str, name: &str) -> Option<Vec<usize>> {
    let start = ptx.find(&format!(".entry {name}("))?;
    let list = &ptx[start..start + ptx[start..].find(')')?];
    let sizes = list
        .lines()
        .filter_map(|l| l.trim().strip_prefix(".param "))
        .map(|p| match p.split_once('[') {
            Some((_, n)) => n.trim_end_matches([']', ',']).parse().expect("array size"),
            None if p.starts_with(".u64") || p.starts_with(".b64") || p.starts_with(".s64") => 8,
            None => 4,
        })
        .collect();
    Some(sizes)
}

fn skip(test: &str, reason: &str) {
    let line = format!("SKIPPED kernels::{test}: {reason}\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

fn assert_entries(family: &str, origin: &str, ptx: &str, entries: &[Entry]) {
    for (name, params) in entries {
        let got = ptx_params(ptx, name).unwrap_or_else(|| panic!("{family} ({origin}) does not export {name}"));
        assert_eq!(&got, params, "{family} ({origin}): parameter sizes of {name} differ from the ABI");
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
