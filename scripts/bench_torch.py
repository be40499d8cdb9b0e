"""PyTorch + diffusers + torchvision at the shapes of `cargo bench --bench models`,
the yardstick for foil's figures: the same models (benches/models/*/config.json),
random weights, the same inputs, timed the same way.

    python scripts/bench_torch.py [--device cpu|cuda] [--dtype f32|f16|bf16] [names...]

CPU: f32, one warm-up call then one timed call (as the Rust benchmark does).
CUDA: CUDA events around enough calls to fill about 100 ms after two warm-ups,
channels_last for the convolutional models, PyTorch's own SDPA attention.
Prints one markdown row a model: time and GFLOP/s from benches/models/flops.json.
"""

import argparse
import json
import os
import time

import torch
import torchvision
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

MODELS = os.path.join(os.path.dirname(__file__), "..", "benches", "models")


def config(name):
    with open(os.path.join(MODELS, name, "config.json")) as f:
        return {k: v for k, v in json.load(f).items() if not k.startswith("_")}


def timed(fn, device):
    with torch.inference_mode():
        if device == "cpu":
            fn()
            t = time.perf_counter()
            fn()
            return time.perf_counter() - t
        fn()
        fn()
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        torch.cuda.synchronize()
        iters = max(3, min(1000, int(100 / max(start.elapsed_time(stop), 1e-3))))
        start.record()
        for _ in range(iters):
            fn()
        stop.record()
        torch.cuda.synchronize()
        return start.elapsed_time(stop) / 1e3 / iters


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="f32", choices=["f32", "f16", "bf16"])
    p.add_argument("names", nargs="*")
    a = p.parse_args()
    dtype = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[a.dtype]
    dev = torch.device(a.device)
    fmt = torch.channels_last if a.device != "cpu" else torch.contiguous_format
    with open(os.path.join(MODELS, "flops.json")) as f:
        flops = json.load(f)
    wanted = lambda n: not a.names or any(s in n for s in a.names)
    g = torch.Generator().manual_seed(0)
    rand = lambda *s: torch.randn(*s, generator=g).to(dev, dtype)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, {a.device} {a.dtype}")
    print("| model | input | device | time (ms) | GFLOP/s |")
    print("| --- | --- | --- | ---: | ---: |")

    def row(name, label, inp, s):
        print(f"| {label} | {inp} | torch {a.device} {a.dtype} | {s * 1e3:.1f} | {flops[name]['flops'] / s / 1e9:.1f} |")

    if wanted("sd15-unet"):
        unet = UNet2DConditionModel(**config("sd15-unet")).to(dev, dtype, memory_format=fmt).eval()
        x, ctx, t = rand(2, 4, 64, 64).to(memory_format=fmt), rand(2, 77, 768), torch.tensor([500.0], device=dev)
        row("sd15-unet", "sd15-unet step", "2x4x64x64 (512x512, CFG)", timed(lambda: unet(x, t, ctx), a.device))
        del unet
    if wanted("sd15-text-encoder"):
        text = CLIPTextModel(CLIPTextConfig(**config("sd15-text-encoder"))).to(dev, dtype).eval()
        ids = (torch.arange(2 * 77).reshape(2, 77) * 7919 % 49408).to(dev)
        row("sd15-text-encoder", "sd15-text-encoder", "2x77 tokens", timed(lambda: text(ids), a.device))
        del text
    if wanted("sd15-vae"):
        vae = AutoencoderKL(**config("sd15-vae")).to(dev, dtype, memory_format=fmt).eval()
        z = rand(1, 4, 64, 64).to(memory_format=fmt)
        row("sd15-vae", "sd15-vae decode", "1x4x64x64 -> 512x512", timed(lambda: vae.decode(z), a.device))
        del vae
    if wanted("resnet50"):
        net = torchvision.models.resnet50().to(dev, dtype, memory_format=fmt).eval()
        x = rand(64, 3, 224, 224).to(memory_format=fmt)
        row("resnet50", "resnet50 forward", "64x3x224x224", timed(lambda: net(x), a.device))


if __name__ == "__main__":
    main()
