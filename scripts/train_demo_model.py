"""Train the demo model that ships in ``llmattr/demo/model/``, deterministically, on the CPU.

    python scripts/train_demo_model.py            # a few minutes; writes into the package
    python scripts/train_demo_model.py --max-steps 50 --out /tmp/demo   # a quick try elsewhere

The corpus is generated here from :mod:`llmattr.demo.tasks` (key–value recall, copying,
comparisons: tasks whose decisive prompt words are known), the word-level tokenizer is trained on
it with ``tokenizers``, and a small Llama-architecture causal LM learns to answer. Held-out
evaluation prompts (never seen in training) go to ``llmattr/demo/eval_prompts.json`` with their
decisive words, for tests and ground-truth benchmarks.

Recipe (each choice was needed; see the functions' docstrings): 3 layers; recall alone until it
works on validation prompts, its facts restated for more recalls per sequence, then all three
tasks (recall twice as often) until they all work, then a short cool-down; untied input/output
embeddings; the answer's loss weighted 4×; 30% of sequences with 10–50% of their prompt words
blanked to ``<pad>``, the attributions' default baseline, so that the perturbed prompts the
attribution methods evaluate are prompts the model knows.
Every training text ends with ``<eos>`` right after the answer, so the model stops when it has
answered. The log shows validation accuracy per task as answer/complete (first word right /
whole generation right, stop included).

Determinism: the data come from seeded ``random.Random`` streams, the weights from
``torch.manual_seed``, and ``torch.use_deterministic_algorithms(True)`` is on; the same torch
build on the same machine with the same thread count gives bit-identical weights (other CPUs or
thread counts may differ in the last float bits, as their matrix kernels sum in another order).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

from llmattr.demo.tasks import TASKS, Example, make_example  # noqa: E402

PACKAGE_DIR = ROOT / "llmattr" / "demo"
SPECIALS = ["<pad>", "<unk>", "<bos>", "<eos>"]
EVAL_SEED, TRAIN_SEED = 1234, 0
MAX_STEPS = 8000
N_EVAL = 100  # held-out prompts per task
VAL_SEED, N_VAL = 99, 50  # validation prompts per task (phase switches)


def held_out(n_per_task: int = N_EVAL, seed: int = EVAL_SEED) -> list[Example]:
    """``n_per_task`` distinct prompts per task, drawn before training and excluded from it."""
    rng = random.Random(seed)
    out: list[Example] = []
    for task in TASKS:
        seen: set[str] = set()
        while len(seen) < n_per_task:
            ex = make_example(task, rng)
            if ex.prompt not in seen:
                seen.add(ex.prompt)
                out.append(ex)
    return out


def restate_facts(prompt: str, rng: random.Random) -> str:
    """A recall prompt with one to three facts restated before the question (``the key of box
    seven is red`` again, later): each restatement is one more recall for the loss to teach."""
    words = prompt.split()
    facts = [words[i : i + 8] for i in range(0, len(words) - 6, 8)]
    story = list(facts)
    for _ in range(rng.randint(1, 3)):
        fact = rng.choice(facts)
        story.insert(rng.randint(story.index(fact) + 1, len(story)), fact)
    return " ".join([w for fact in story for w in fact] + words[-6:])


def shares_held_out_prefix(text: str, held: set[str], lengths: set[int]) -> bool:
    """Whether a held-out prompt is a prefix of ``text`` (word-aligned): training on such a
    text would show the model that prompt and its answer."""
    return any(
        n <= len(text) and (n == len(text) or text[n] == " ") and text[:n] in held for n in lengths
    )


def train_tokenizer(corpus: list[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer trained on ``corpus``, BOS prepended, with pad/unk/bos/eos."""
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=SPECIALS))
    # the trainer orders words of equal frequency as a hash map iterates (differs between
    # runs): rebuild with the specials first and the words sorted, so ids are reproducible
    words = sorted(w for w in tok.get_vocab() if w not in SPECIALS)
    vocab = {w: i for i, w in enumerate([*SPECIALS, *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=128,
        clean_up_tokenization_spaces=False,
    )


def build_model(
    tokenizer: PreTrainedTokenizerFast, hidden: int, layers: int, heads: int
) -> LlamaForCausalLM:
    """A Llama-architecture causal LM (RoPE, RMSNorm, SwiGLU).

    Three layers, not two: recall (``... box seven is red ... box seven is``) needs the red to
    know the box two words back; with three layers, previous-token heads chained twice do it,
    which trains several times faster than learning a two-back head in two layers.

    Input and output embeddings are separate: while recall trains alone, every step pushes the
    output embeddings of the words it never uses (the copy task's nouns) away from the model's
    states; tied, that scrambles those words' inputs too, and copying was then learned several
    times slower (or not at all in 3000 steps).
    """
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=128,
        initializer_range=0.05,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


def batch(
    texts: list[tuple[str, str]], tok: PreTrainedTokenizerFast, rng: random.Random, blank: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(ids, labels, answer_at)`` for ``(prompt, continuation)`` pairs: ``<bos> prompt
    continuation <eos>`` rows, right-padded (labels -100), and each row's answer position.

    With probability ``blank`` a row has its prompt words replaced by ``<pad>`` (the attribution
    methods' default baseline), each with a probability drawn from 10–50%. The perturbed prompts
    of ablation, Shapley sampling, Lime and KernelShap are then prompts the model knows: a
    blanked word carries no information, and the model hedges when it was the decisive one.
    With only one to three words ever blanked, the sampling methods met half-blank prompts as
    unseen inputs and credited the first ``the`` of a recall prompt more than its answer.
    """
    rows, answer_at = [], []
    for prompt, continuation in texts:
        words = prompt.split()
        if rng.random() < blank:
            share = rng.uniform(0.1, 0.5)
            words = [tok.pad_token if rng.random() < share else w for w in words]
        start = len(tok(" ".join(words))["input_ids"])
        ids = tok(" ".join([*words, continuation]))["input_ids"] + [tok.eos_token_id]
        rows.append(ids)
        answer_at.append(start)
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        labels[i, : len(r)] = torch.tensor(r)
    # pads inside the prompt are inputs, never targets
    labels[labels == tok.pad_token_id] = -100
    return ids, labels, torch.tensor(answer_at)


@torch.no_grad()
def accuracy(
    model: Any, tok: PreTrainedTokenizerFast, examples: list[Example]
) -> dict[str, dict[str, float]]:
    """Greedy accuracy per task: ``answer``, the share of prompts whose first generated word is
    the answer; ``complete``, the share whose whole generation is right (the continuation, then
    ``<eos>``)."""
    was_training = model.training
    model.eval()
    answer: dict[str, list[bool]] = {t: [] for t in TASKS}
    complete: dict[str, list[bool]] = {t: [] for t in TASKS}
    for ex in examples:
        ids = tok(ex.prompt)["input_ids"]
        expected = [*ex.continuation.split(), tok.eos_token]
        generated = []
        for _ in expected:
            best = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
            generated.append(tok.convert_ids_to_tokens(best))
            ids.append(best)
            if generated[-1] != expected[len(generated) - 1]:
                break
        answer[ex.task].append(generated[0] == ex.answer)
        complete[ex.task].append(generated == expected)
    model.train(was_training)
    return {
        t: {
            "answer": sum(answer[t]) / len(answer[t]),
            "complete": sum(complete[t]) / len(answer[t]),
        }
        for t in TASKS
        if answer[t]
    }


def train(
    max_steps: int = MAX_STEPS,
    batch_size: int = 48,
    lr: float = 1e-3,
    seed: int = TRAIN_SEED,
    hidden: int = 64,
    layers: int = 3,
    heads: int = 4,
    blank: float = 0.3,
    answer_weight: float = 4.0,
    check_every: int = 100,
    cooldown: int = 500,
    threads: int = 1,
    log: bool = False,
    evaluate: bool = True,
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast, dict[str, Any]]:
    """Train the demo model; returns ``(model, tokenizer, report)``. Deterministic.

    Three phases, switched on the accuracy on validation prompts (drawn with their own seed,
    never trained on, distinct from the held-out evaluation prompts), so that the moment a
    circuit forms (which varies from run to run) does not decide whether training succeeds:

    1. recall alone, its facts restated, until validation recall reaches 95%. Trained together
       from the start, copying teaches an induction head (attend after the previous occurrence
       of the current word) that answers recall with *a* colour of the prompt, a plateau recall
       then hardly leaves;
    2. all three tasks (recall twice as often), the prompts the tasks' own (a restated fact is
       followed by ``.`` where an answer is followed by ``<eos>``: the model could not learn to
       stop), until every task is 98% right on validation, generation and stop included;
    3. ``cooldown`` steps more, the learning rate decaying linearly to 5%.

    Each phase is checked every ``check_every`` steps; phases 1 and 2 end in any case when
    cooldown must start to finish within ``max_steps`` (phase 1 by half of that).

    Args:
        max_steps: the most optimizer steps (AdamW; 100 warm-up steps).
        batch_size: sequences per step.
        lr: learning rate.
        seed: seed of the data and the initial weights.
        hidden, layers, heads: the model's width, depth and attention heads.
        blank: share of sequences with prompt words replaced by ``<pad>`` (see :func:`batch`).
        answer_weight: weight of the answer's loss relative to the other tokens'.
        check_every: steps between validation checks.
        cooldown: steps of the final phase.
        threads: torch CPU threads while training (restored afterwards).
        log: print the validation accuracy at every check.
        evaluate: compute the held-out accuracy of the final model for the report.

    Returns:
        The model (eval mode), the tokenizer, and ``{"steps", "phase_starts", "train_seconds",
        "parameters", "accuracy"}`` (accuracy per task on the held-out prompts, or None).
    """
    threads_before = torch.get_num_threads()
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        return _train(max_steps, batch_size, lr, seed, hidden, layers, heads, blank,
                      answer_weight, check_every, cooldown, log, evaluate)  # fmt: skip
    finally:
        torch.set_num_threads(threads_before)
        torch.use_deterministic_algorithms(deterministic_before)


def _train(
    max_steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    hidden: int,
    layers: int,
    heads: int,
    blank: float,
    answer_weight: float,
    check_every: int,
    cooldown: int,
    log: bool,
    evaluate: bool,
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast, dict[str, Any]]:
    torch.manual_seed(seed)
    rng = random.Random(seed)
    evals = held_out()
    held = {ex.prompt for ex in evals}
    val = [ex for ex in held_out(N_VAL, VAL_SEED) if ex.prompt not in held]
    held |= {ex.prompt for ex in val}
    lengths = {len(p) for p in held}
    mixed = [2.0 if t == "recall" else 1.0 for t in TASKS]
    phase = 1

    def draw(phase: int) -> tuple[str, str]:
        weights = [float(t == "recall") for t in TASKS] if phase == 1 else mixed
        while True:
            ex = make_example(rng.choices(TASKS, weights)[0], rng)
            pair = (restate_facts(ex.prompt, rng) if phase == 1 else ex.prompt), ex.continuation
            if not shares_held_out_prefix(" ".join(pair), held, lengths):
                return pair

    tok = train_tokenizer([" ".join(draw(p)) for p in (1, 2) for _ in range(1500)])
    model = build_model(tok, hidden, layers, heads)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    other = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": other, "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.98),
    )
    cooldown = min(cooldown, max_steps // 4)
    last_phase_1 = (max_steps - cooldown) // 2  # phase 1 ends by then at the latest
    starts = {1: 0}
    start = time.perf_counter()
    step = 0
    while step < max_steps:
        if (phase < 3 and step == max_steps - cooldown) or (phase == 1 and step == last_phase_1):
            phase += 1
            starts[phase] = step
            continue
        if phase == 3:
            done = (step - starts[3]) / max(1, max_steps - starts[3])
            scale = 1.0 - 0.95 * done
        else:
            scale = min(1.0, (step + 1) / 100)  # warm-up
        for group in opt.param_groups:
            group["lr"] = lr * scale
        pairs = [draw(min(phase, 2)) for _ in range(batch_size)]
        ids, labels, answer_at = batch(pairs, tok, rng, blank)
        logits = model(input_ids=ids).logits[:, :-1]
        target = labels[:, 1:]
        per_token = torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), target, ignore_index=-100, reduction="none"
        )
        # most prompt words are random draws, so their loss is mostly noise: the answer (the
        # word the tasks are about) gets ``answer_weight`` times the weight of the others
        weight = (target != -100).float()
        weight[torch.arange(len(ids)), answer_at - 1] *= answer_weight
        loss = (per_token * weight).sum() / weight.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if phase < 3 and step % check_every == 0:
            tasks = ("recall",) if phase == 1 else TASKS
            acc = accuracy(model, tok, [ex for ex in val if ex.task in tasks])
            if log:
                print(
                    f"step {step:5d}  phase {phase}  loss {loss.item():.3f}  "
                    + "  ".join(
                        f"{t} {a['answer']:.2f}/{a['complete']:.2f}" for t, a in acc.items()
                    )
                    + f"  {time.perf_counter() - start:.0f}s",
                    flush=True,
                )
            if phase == 1 and acc["recall"]["answer"] >= 0.95:
                phase, starts[2] = 2, step
            elif phase == 2 and all(a["complete"] >= 0.98 for a in acc.values()):
                phase, starts[3] = 3, step
                max_steps = step + cooldown
    model.eval()
    report = {
        "steps": step,
        "phase_starts": starts,
        "train_seconds": round(time.perf_counter() - start, 1),
        "parameters": sum(p.numel() for p in model.parameters()),
        "accuracy": accuracy(model, tok, evals) if evaluate else None,
    }
    return model, tok, report


def portable_tokenizer_config(path: Path) -> None:
    """Name the tokenizer class ``PreTrainedTokenizerFast``, which transformers 4 and 5 both
    load (transformers 5 writes its own ``TokenizersBackend``, unknown to 4), and its inputs
    (transformers 4 would add ``token_type_ids``, which Llama's ``generate`` refuses)."""
    config = json.loads(path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config["model_input_names"] = ["input_ids", "attention_mask"]
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def save(model: Any, tok: PreTrainedTokenizerFast, out: Path, prompts_path: Path) -> None:
    """Weights (safetensors), config and tokenizer to ``out``; held-out prompts to
    ``prompts_path``."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    portable_tokenizer_config(out / "tokenizer_config.json")
    prompts = [ex.to_dict() for ex in held_out()]
    prompts_path.write_text(json.dumps(prompts, indent=1) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--max-steps", type=int, default=MAX_STEPS, help=f"the most optimizer steps ({MAX_STEPS})"
    )
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    parser.add_argument(
        "--out",
        type=Path,
        default=PACKAGE_DIR / "model",
        help="model directory (default: llmattr/demo/model)",
    )
    parser.add_argument(
        "--prompts-out",
        type=Path,
        default=None,
        help="held-out prompts file (default: llmattr/demo/eval_prompts.json with the default "
        "--out, else eval_prompts.json inside --out)",
    )
    parser.add_argument("--quiet", action="store_true", help="no validation log")
    args = parser.parse_args(argv)
    prompts = args.prompts_out
    if prompts is None:
        default = args.out.resolve() == (PACKAGE_DIR / "model").resolve()
        prompts = PACKAGE_DIR / "eval_prompts.json" if default else args.out / "eval_prompts.json"
    model, tok, report = train(max_steps=args.max_steps, threads=args.threads, log=not args.quiet)
    save(model, tok, args.out, prompts)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
