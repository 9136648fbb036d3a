"""Train the optim digits CNN, report its held-out accuracy: ``python scripts/train_optim_cnn.py``.

The model trains in seconds, deterministically, so nothing is shipped: tests and benchmarks call
:func:`llmattr.optim.digits_model.train_optim_cnn` themselves. ``--out PATH`` saves the state dict.
"""

from __future__ import annotations

import argparse
import time

import torch

from llmattr.optim.digits_model import train_optim_cnn


def main() -> None:
    parser = argparse.ArgumentParser(description="train OptimDigitCNN on upsampled digits")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="save the state dict here (torch.save)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    trained = train_optim_cnn(epochs=args.epochs, seed=args.seed)
    seconds = time.perf_counter() - start
    print(
        f"held-out accuracy {trained.test_accuracy:.4f}, {seconds:.1f} s, {args.threads} thread(s)"
    )
    if args.out:
        torch.save(trained.model.state_dict(), args.out)
        print(f"saved {args.out}")


if __name__ == "__main__":
    main()
