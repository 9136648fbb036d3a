"""llmattr vs Captum on vision models, side by side: trained digits models and a 224x224 ViT.

Part 1, speed (issue 12: "occlusion/ablation on the trained CNN and ViT: never slower than
Captum"). Both libraries run in this one process on the same model, inputs (8 held-out digits),
targets (the model's predictions), baselines (zeros) and feature masks, at the same
``perturbations_per_eval`` (ppe). Models: :func:`llmattr.vision.digits.load_digits_cnn` on
``(8, 1, 8, 8)`` digits and :func:`llmattr.vision.digits.load_digits_vit` on
``digits_to_vit_pixels`` ``(8, 1, 16, 16)``, called through one shared ``logits`` wrapper.

* CNN: Occlusion, window 1x2x2, stride 1 (49 windows); FeatureAblation per pixel (64 features)
  and on a 4x4 grid (``grid_mask``, 16 cells of 2x2 pixels).
* ViT: FeatureAblation on the patch mask in the model's token order (``PatchLayout``, 16
  patches of 4x4 pixels); Occlusion with one patch as window, stride one patch (16 windows) and
  half a patch (49 windows).

The table is printed at 1 thread and at ``--threads`` (default 2); the ratio is captum / llmattr
(above 1: llmattr faster); then max |captum - llmattr| (both are deterministic) and the time of
the model's forwards alone (one llmattr call's forwards, recorded and replayed): on these small
models, at a large ppe, the forwards are most of the time, so the ratio stays near 1.

Part 2, memory (issue 12: "a 224x224 image with 196 patches and KernelShap at 500 samples must
run in bounded memory (chunked)"). A random-init ``ViTForImageClassification`` (224x224, patch
16: 196 patches, hidden 32, 1 layer) and KernelShap with ``n_samples=500`` on the 196-patch
mask. Each setting runs in a fresh subprocess, which reports its peak RSS during ``attribute()``
above its RSS just before (``resource.getrusage`` and ``/proc/self/status``; the model and one
warm-up forward come before the reading), for several ``perturbations_per_eval`` and two
``n_samples``: peak memory follows the chunk size, not the number of samples. (tracemalloc
would not see torch's tensors.)

Part 3, a vision-language model (issue 12: "image-region attribution on the tiny LLaVA against
Captum 0.9's exact mode"): :func:`run_vlm`. Captum scores each perturbed image in its own
forward(s); llmattr teacher-forces the target for several perturbed images per forward.

Usage::

    python benchmarks/vision.py              # about a minute or two on 2 idle cores
    python benchmarks/vision.py --quick      # fewer repetitions and memory settings
    python benchmarks/vision.py --filter ViT --skip-memory
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import resource
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from _common import (
    HEADER,
    ROOT,
    RULE,
    add_clock_arg,
    add_timing_args,
    apply_timing_args,
    import_libraries,
    max_diff,
    median_time,
    ms,
    row,
    time_case,
    versions,
)
from torch import Tensor, nn


class Logits(nn.Module):
    """``pixel_values -> model(pixel_values=...).logits``: a ``transformers`` classifier as a
    tensor-to-tensor function (the same wrapper for both libraries)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: Tensor) -> Tensor:
        return self.model(pixel_values=pixel_values).logits


# ----------------------------------------------------------------------- part 1: digits models
@dataclass
class Case:
    """One comparison: the same call through each library, and its forwards alone."""

    name: str
    captum: Callable[[], Any]
    llmattr: Callable[[], Any]
    forwards_only: Callable[[], Callable[[], None]]


def build_cases(captum_attr: Any, llmattr: Any) -> list[Case]:
    """The cases on the trained CNN and ViT."""
    from llmattr.vision.digits import (
        digits_to_vit_pixels,
        load_digits_cnn,
        load_digits_data,
        load_digits_vit,
    )
    from llmattr.vision.layout import PatchLayout
    from llmattr.vision.masks import grid_mask

    data = load_digits_data()
    digits = data.images[data.test[:8]]
    cnn, vit = load_digits_cnn(), Logits(load_digits_vit()).eval()
    pixels = digits_to_vit_pixels(digits)
    with torch.no_grad():
        y_cnn, y_vit = cnn(digits).argmax(1), vit(pixels).argmax(1)
    cases: list[Case] = []

    def add(name: str, cls_name: str, model: nn.Module, **kwargs: Any) -> None:
        c, m = getattr(captum_attr, cls_name)(model), getattr(llmattr, cls_name)(model)
        own = {k: v.clone() if isinstance(v, Tensor) else v for k, v in kwargs.items()}

        def forwards_only() -> Callable[[], None]:
            """The forwards one llmattr call makes, recorded, replayed without attribution code."""
            calls: list[Tensor] = []

            def recording(x: Tensor) -> Tensor:
                calls.append(x.clone())
                return model(x)

            getattr(llmattr, cls_name)(recording).attribute(**own)

            def replay() -> None:
                with torch.no_grad():
                    for x in calls:
                        model(x)

            return replay

        cases.append(Case(name, lambda: c.attribute(**kwargs), lambda: m.attribute(**own),
                          forwards_only))  # fmt: skip

    cnn_args = dict(inputs=digits, target=y_cnn)
    for ppe in (1, 16, 49):
        add(f"Occlusion CNN b8 w1x2x2 s1 (49) ppe{ppe}", "Occlusion", cnn,
            sliding_window_shapes=(1, 2, 2), strides=1, perturbations_per_eval=ppe,
            **cnn_args)  # fmt: skip
    for ppe in (1, 64):
        add(f"FA CNN b8 per pixel (64) ppe{ppe}", "FeatureAblation", cnn,
            perturbations_per_eval=ppe, **cnn_args)  # fmt: skip
    grid = grid_mask(8, 8, 4, 4)[None, None]  # (1, 1, 8, 8), broadcast over the batch
    for ppe in (1, 16):
        add(f"FA CNN b8 grid 4x4 (16) ppe{ppe}", "FeatureAblation", cnn, feature_mask=grid,
            perturbations_per_eval=ppe, **cnn_args)  # fmt: skip

    vit_args = dict(inputs=pixels, target=y_vit)
    patches = PatchLayout.from_config(vit.model).pixel_mask()[None, None]  # (1, 1, 16, 16)
    for ppe in (1, 16):
        add(f"FA ViT b8 patches (16) ppe{ppe}", "FeatureAblation", vit, feature_mask=patches,
            perturbations_per_eval=ppe, **vit_args)  # fmt: skip
        add(f"Occlusion ViT b8 w1x4x4 s4 (16) ppe{ppe}", "Occlusion", vit,
            sliding_window_shapes=(1, 4, 4), strides=(1, 4, 4), perturbations_per_eval=ppe,
            **vit_args)  # fmt: skip
    for ppe in (1, 49):
        add(f"Occlusion ViT b8 w1x4x4 s2 (49) ppe{ppe}", "Occlusion", vit,
            sliding_window_shapes=(1, 4, 4), strides=(1, 2, 2), perturbations_per_eval=ppe,
            **vit_args)  # fmt: skip
    return cases


def run_speed(args: argparse.Namespace, repeat: int, warmup: int) -> None:
    captum_attr, llmattr = import_libraries()
    cases = build_cases(captum_attr, llmattr)
    for threads in dict.fromkeys((1, args.threads)):
        torch.set_num_threads(threads)
        print(f"{versions(llmattr, repeat, warmup)}; {args.clock} clock")
        print()
        print(HEADER + " forwards only (ms) |")
        print(RULE + "---:|")
        for case in cases:
            if args.filter and args.filter.lower() not in case.name.lower():
                continue
            t_c, t_m, out_c, out_m = time_case(case.captum, case.llmattr, warmup, repeat)
            diff = max_diff((out_c.detach(),), (out_m.detach(),))
            t_f = median_time(case.forwards_only(), repeat, warmup)[0]
            print(row(case.name, t_c, t_m, diff) + f" {ms(t_f)} |", flush=True)
        print()


# -------------------------------------------------------------- part 2: KernelShap memory, 224px
def _peak_rss_mb() -> float:
    """This process's peak resident set size so far, MB (``ru_maxrss`` is KB on Linux)."""
    scale = 1 / 1024 if sys.platform != "darwin" else 1 / 1024**2
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _rss_mb() -> float:
    """This process's current resident set size, MB (Linux; elsewhere the peak so far).

    The growth is measured from the current RSS, not the peak so far: memory freed before
    ``attribute()`` (import and model-building temporaries) would otherwise hide its chunks."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return _peak_rss_mb()


def memory_child(lib: str, ppe: int, n_samples: int) -> None:
    """Run one KernelShap on the 224x224 ViT; print JSON with the peak-RSS growth and time."""
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    captum_attr, llmattr = import_libraries()
    from transformers import ViTConfig, ViTForImageClassification

    from llmattr.vision.layout import PatchLayout

    torch.manual_seed(0)
    config = ViTConfig(image_size=224, patch_size=16, hidden_size=32, num_hidden_layers=1,
                       num_attention_heads=2, intermediate_size=64, num_labels=10)  # fmt: skip
    model = Logits(ViTForImageClassification(config)).eval()
    image = torch.rand(1, 3, 224, 224)
    mask = PatchLayout.from_config(config).pixel_mask()[None, None]  # (1, 1, 224, 224), 196 ids
    with torch.no_grad():
        target = int(model(image).argmax())
    if importlib.util.find_spec("sklearn") is not None:
        # Captum's KernelShap fits with scikit-learn, imported on first use (~80 MB of RSS):
        # import it before the reading, so that the column measures the attribution's data
        import sklearn.linear_model  # noqa: F401
    explainer = (captum_attr if lib == "captum" else llmattr).KernelShap(model)
    gc.collect()
    before = _rss_mb()
    start = time.perf_counter()
    torch.manual_seed(1)
    attr = explainer.attribute(image, target=target, feature_mask=mask, n_samples=n_samples,
                               perturbations_per_eval=ppe)  # fmt: skip
    seconds = time.perf_counter() - start
    ok = tuple(attr.shape) == (1, 3, 224, 224) and bool(torch.isfinite(attr).all())
    print(json.dumps({"growth_mb": _peak_rss_mb() - before, "s": seconds, "ok": ok}))


def run_memory(quick: bool) -> None:
    settings = [("llmattr", p, 500) for p in ((1, 64) if quick else (1, 16, 64, 500))]
    settings += [("llmattr", 64, 250)]
    settings += [("captum", p, 500) for p in ((64,) if quick else (1, 64))]
    print("KernelShap, random-init ViT 224x224 (196 patches, hidden 32, 1 layer), 1 image, "
          "1 thread; each row a fresh process")  # fmt: skip
    print()
    print("| library | n_samples | perturbations_per_eval | peak RSS above start (MB) | time (s) |")
    print("|---|---:|---:|---:|---:|")
    for lib, ppe, n in settings:
        cmd = [sys.executable, __file__, "--memory-child", lib, str(ppe), str(n)]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        lines = proc.stdout.strip().splitlines()
        if proc.returncode != 0 or not lines:
            print(f"| {lib} | {n} | {ppe} | FAILED: {proc.stderr.strip()[-200:]} | |")
            continue
        out = json.loads(lines[-1])
        flag = "" if out["ok"] else " (BAD OUTPUT)"
        print(f"| {lib} | {n} | {ppe} | {out['growth_mb']:.1f}{flag} | {out['s']:.2f} |",
              flush=True)  # fmt: skip
    print()
    print(("ppe 500 = all samples in one batch (unchunked), for scale. " if not quick else "")
          + "The growth tracks ppe (one chunk of perturbed images and its activations), "
          "not n_samples.")  # fmt: skip


# ---------------------------------------------------------- part 3: a VLM, image regions + words
def run_vlm(args: argparse.Namespace, repeat: int, warmup: int) -> None:
    """Image regions of a tiny LLaVA (CLIP tower 64x64, patch 8: 64 image tokens; Llama 2
    layers, hidden 64) explained with FeatureAblation over a 4x4 grid of regions and with
    ShapleyValueSampling, target "red cat on the grass" (5 tokens), against Captum 0.9's exact
    mode (``use_cached_outputs=False``: its default cached mode returns zeros on LLaVA), both
    its token-by-token forward and ``forward_in_tokens=False``."""
    captum_attr, llmattr = import_libraries()
    from PIL import Image

    from llmattr.vision import grid_mask
    from llmattr.vision.tiny_models import tiny_llava

    model, processor = tiny_llava(image_size=64, patch_size=8, hidden_size=64)
    pixels = torch.rand(64, 64, 3, generator=torch.Generator().manual_seed(0))
    image = Image.fromarray((pixels * 255).to(torch.uint8).numpy())
    prompt = "USER: <image> what colour is the cat ? ASSISTANT:"
    target, mask = "red cat on the grass", grid_mask(64, 64, 4, 4)

    def process(im: Any) -> Any:
        return processor(text=prompt, images=im, return_tensors="pt")

    def run(lib: Any, method: str, **kwargs: Any) -> Callable[[], Tensor]:
        inp = lib.ImageMaskInput(image, mask=mask, processor_fn=process)
        algo = getattr(lib, method)(model)
        attr = lib.LLMAttribution(algo, processor.tokenizer)
        extra = {"n_samples": 2} if method == "ShapleyValueSampling" else {}

        def call() -> Tensor:
            return attr.attribute(inp, target=target, **extra, **kwargs).seq_attr

        return call

    for threads in dict.fromkeys((1, args.threads)):
        torch.set_num_threads(threads)
        print(f"{versions(llmattr, repeat, warmup)}; {args.clock} clock; tiny LLaVA, 16 regions")
        print()
        print(HEADER)
        print(RULE)
        for method in ("FeatureAblation", "ShapleyValueSampling"):
            for mode, kwargs in (
                ("exact, token by token", {"use_cached_outputs": False}),
                ("exact, forward_in_tokens=False",
                 {"use_cached_outputs": False, "forward_in_tokens": False}),
            ):  # fmt: skip
                if args.filter and args.filter.lower() not in method.lower():
                    continue
                seed = 0 if method == "ShapleyValueSampling" else None
                t_c, t_m, out_c, out_m = time_case(
                    run(captum_attr, method, **kwargs), run(llmattr, method), warmup, repeat, seed
                )
                diff = max_diff((out_c.detach(),), (out_m.detach(),))
                print(row(f"{method} vs Captum {mode}", t_c, t_m, diff), flush=True)
        print()


def main(argv: list[str] | None = None) -> None:
    if argv is None and len(sys.argv) == 5 and sys.argv[1] == "--memory-child":
        memory_child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_timing_args(parser)
    add_clock_arg(parser)
    parser.add_argument("--skip-speed", action="store_true", help="skip part 1 (digits models)")
    parser.add_argument("--skip-memory", action="store_true", help="skip part 2 (KernelShap)")
    parser.add_argument("--skip-vlm", action="store_true", help="skip part 3 (tiny LLaVA)")
    args = parser.parse_args(argv)
    repeat, warmup = apply_timing_args(parser, args)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"captum\.")
    total = time.perf_counter()
    if not args.skip_speed:
        run_speed(args, repeat, warmup)
        print("ratio = captum / llmattr (>1: llmattr faster); rel = max|diff| / max|captum attr|;")
        print("forwards only = the model's forwards of one llmattr call replayed alone (both")
        print("libraries make the same forwards here): the floor no implementation can beat.")
        print()
    if not args.skip_memory:
        run_memory(args.quick)
    if not args.skip_vlm:
        run_vlm(args, repeat, warmup)
        print("Captum's default mode (use_cached_outputs=True) is left out: it returns all zeros")
        print("on LLaVA under transformers 5 (tests/test_captum_parity_vision.py).")
    print(f"Total {time.perf_counter() - total:.0f} s.")


if __name__ == "__main__":
    main()
