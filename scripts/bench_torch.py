"""PyTorch + diffusers + torchvision at the shapes of `cargo bench --bench models`,
the yardstick for foil's figures: the same models (benches/models/*/config.json),
random weights, the same inputs, timed the same way.

    python scripts/bench_torch.py [--device cpu|cuda] [--dtype f32|f16|bf16] [names...]
    python scripts/bench_torch.py --train [--device cpu|cuda] [--dtype f32|bf16]
                                  [--warmup W] [--iters N] [names...]

CPU: f32, one warm-up call then one timed call (as the Rust benchmark does).
CUDA: CUDA events around enough calls to fill about 100 ms after two warm-ups,
channels_last for the convolutional models, PyTorch's own SDPA attention.
Prints one markdown row a model: time and GFLOP/s from benches/models/flops.json.

--train times whole training steps (zero the gradients, forward, loss, backward,
optimizer step), the median of N steps after W warm-up steps:
  resnet50   torchvision ResNet-50 in train mode, batch 64 at 224x224, cross-entropy
             over 1000 classes, SGD(lr 0.05, momentum 0.9, nesterov, weight decay 1e-4);
  tiny-unet  the UNet of tests/fixtures/training/unet (config.json), batch 2 of 4x8x8
             latents with a 7x12 context, MSE against a random target,
             clip_grad_norm_(1.0) then AdamW(lr 1e-3, weight decay 0.01).
Weights stay f32; on CUDA the default is AMP (autocast) bf16 with channels_last,
--dtype f32 turns autocast off. GFLOP/s counts forward and backward
(torch.utils.flop_counter on the meta device; the optimizer's elementwise work is
left out). A ResNet-50 step takes about a minute on two CPU cores: use --iters 1.
"""

import argparse
import contextlib
import json
import os
import statistics
import time

import torch
import torch.nn.functional as F
import torchvision
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

MODELS = os.path.join(os.path.dirname(__file__), "..", "benches", "models")
TRAINING_FIXTURES = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "training")


def config(name, root=MODELS):
    with open(os.path.join(root, name, "config.json")) as f:
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


def timed_steps(step, device, warmup, iters):
    """Median seconds of `iters` calls of `step` after `warmup` calls."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(iters):
        if device == "cpu":
            t = time.perf_counter()
            step()
            times.append(time.perf_counter() - t)
            continue
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        stop.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(stop) / 1e3)
    return statistics.median(times)


def training_flops(make_model, inputs, loss):
    """FLOPs of one forward and backward, counted on the meta device (nothing is computed)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = make_model().train()
        xs = [x.to("meta") for x in inputs]
    with FlopCounterMode(display=False) as counter:
        loss(model, *xs).backward()
    return counter.get_total_flops()


def train_step(model, opt, inputs, loss, amp, device_type, clip=None):
    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type, dtype=amp) if amp else contextlib.nullcontext():
            value = loss(model, *inputs)
        value.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()

    return step


def main_train(a):
    if a.dtype == "f16":
        raise SystemExit("--train supports f32 and bf16 (f16 would need a gradient scaler)")
    amp = torch.bfloat16 if a.dtype == "bf16" else None
    dev = torch.device(a.device)
    fmt = torch.channels_last if a.device != "cpu" else torch.contiguous_format
    torch.backends.cudnn.benchmark = True  # pick the fastest convolution algorithms during warm-up
    warmup = a.warmup if a.warmup is not None else (1 if a.device == "cpu" else 3)
    iters = a.iters if a.iters is not None else (3 if a.device == "cpu" else 20)
    wanted = lambda n: not a.names or any(s in n for s in a.names)
    g = torch.Generator().manual_seed(0)
    rand = lambda *s: torch.randn(*s, generator=g).to(dev)
    label = f"torch {a.device} " + ("bf16 AMP" if amp else "f32")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, {label}, "
          f"training steps: median of {iters} after {warmup} warm-up")
    print("| model | input | device | time (ms) | GFLOP/s |")
    print("| --- | --- | --- | ---: | ---: |")

    def row(name, inp, s, flops):
        rate = flops / s / 1e9
        print(f"| {name} | {inp} | {label} | {s * 1e3:.1f} | {rate:.1f} |" if rate >= 1 else
              f"| {name} | {inp} | {label} | {s * 1e3:.1f} | {rate:.3f} |")

    if wanted("resnet50"):
        make = lambda: torchvision.models.resnet50()
        net = make().to(dev, memory_format=fmt).train()
        x, y = rand(64, 3, 224, 224).to(memory_format=fmt), torch.randint(0, 1000, (64,), generator=g).to(dev)
        ce = lambda m, x, y: F.cross_entropy(m(x), y)
        opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4)
        s = timed_steps(train_step(net, opt, (x, y), ce, amp, dev.type), a.device, warmup, iters)
        row("resnet50 train step (CE, SGD)", "64x3x224x224", s, training_flops(make, (x, y), ce))
        del net, opt
    if wanted("tiny-unet"):
        make = lambda: UNet2DConditionModel(**config("unet", TRAINING_FIXTURES))
        unet = make().to(dev, memory_format=fmt).train()
        ctx_dim = unet.config.cross_attention_dim
        x, t = rand(2, 4, 8, 8).to(memory_format=fmt), torch.tensor([37.0, 811.5], device=dev)
        ctx, target = rand(2, 7, ctx_dim), rand(2, 4, 8, 8)
        mse = lambda m, x, t, ctx, target: F.mse_loss(m(x, t, ctx).sample, target)
        opt = torch.optim.AdamW(unet.parameters(), lr=1e-3, weight_decay=0.01)
        inputs = (x, t, ctx, target)
        s = timed_steps(train_step(unet, opt, inputs, mse, amp, dev.type, clip=1.0), a.device, warmup, iters)
        row("tiny-unet train step (MSE, AdamW)", "2x4x8x8, 7x12 context", s, training_flops(make, inputs, mse))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["f32", "f16", "bf16"], help="default f32; with --train on CUDA, bf16 (AMP)")
    p.add_argument("--train", action="store_true", help="time training steps (see the module docstring)")
    p.add_argument("--warmup", type=int, help="--train: warm-up steps (default 1 on CPU, 3 on CUDA)")
    p.add_argument("--iters", type=int, help="--train: timed steps, median reported (default 3 on CPU, 20 on CUDA)")
    p.add_argument("names", nargs="*")
    a = p.parse_args()
    if a.dtype is None:
        a.dtype = "bf16" if a.train and a.device != "cpu" else "f32"
    if a.train:
        return main_train(a)
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
