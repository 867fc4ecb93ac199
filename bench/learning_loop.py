"""Does the learning loop learn? The trainer on the real SmolLM2-135M-Instruct, on CPU, with a synthetic
preference set whose chosen answers have a clear, checkable style (three-line poems) and whose rejected
answers do not (a paragraph of prose); see bench/loop_data.py.

Measured on the held-out pairs the trainer's evaluation gate uses (prompts never trained on):

    preference accuracy   share of pairs whose chosen answer gets the higher log-probability, for the base
                          model (before) and base + the trained adapter (after), as the gate computes it
    style share           share of greedy answers to the held-out prompts that are three-line poems
    wall time             of each trainer stage (snapshot, sft, rlhf, evaluate, export, publish)

    python -m bench.learning_loop            # writes bench/results/learning_loop.json (about 7 min on 2 cores)
    python -m bench.learning_loop --quick    # a few steps only: checks the benchmark itself runs
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from bailu.trainer import data, evaluate, pipeline
from bailu.trainer.settings import TrainerSettings
from bench.common import REPO, metadata, rnd, table, write_results
from bench.loop_data import is_three_line_poem, write_dataset

MODEL_DIR = REPO / ".cache" / "models" / "smollm2-135m-instruct"
WORK = REPO / ".cache" / "bench" / "learning_loop"
ADAPTER = "bench-poet"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=120, help="synthetic preference pairs (20%% held out)")
    parser.add_argument("--sft-steps", type=int, default=80, help="SFT steps of 4 examples (~3 epochs)")
    parser.add_argument("--learning-rate", type=float, default=3e-4, help="SFT learning rate")
    parser.add_argument("--rlhf-steps", type=int, default=20)
    parser.add_argument("--rlhf-type", default="orpo", choices=["orpo", "dpo", "simpo", "kto", "none"])
    parser.add_argument("--max-tokens", type=int, default=48, help="tokens per style-check generation")
    parser.add_argument("--quick", action="store_true", help="3 + 2 steps, 40 pairs: a smoke run")
    parser.add_argument("--name", default="learning_loop", help="results file name")
    return parser.parse_args(argv)


def style_share(texts: list[str]) -> float:
    return sum(is_three_line_poem(t) for t in texts) / len(texts)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.quick:
        args.pairs, args.sft_steps, args.rlhf_steps = 40, 3, 2
    if not (MODEL_DIR / "config.json").is_file():
        print(f"{MODEL_DIR} is missing: run `make model` first", file=sys.stderr)
        return 2
    shutil.rmtree(WORK, ignore_errors=True)
    dataset_version = write_dataset(WORK / "datasets", args.pairs, seed=0)
    settings = TrainerSettings(
        dataset_dir=WORK / "datasets",
        dataset_version=dataset_version,
        registry_dir=WORK / "registry",
        work_dir=WORK / "runs",
        base_model="smollm2-135m-instruct",
        model_path=MODEL_DIR,
        adapter_name=ADAPTER,
        min_pairs=min(20, args.pairs),
        eval_fraction=0.2,
        max_length=256,
        lora_rank=16,
        lora_alpha=32,
        learning_rate=args.learning_rate,
        max_steps=args.sft_steps,
        batch_size=4,
        grad_accum=1,
        rlhf_type=args.rlhf_type,
        rlhf_learning_rate=5e-5,
        rlhf_max_steps=args.rlhf_steps,
        gate_margin=0.0,
        sanity_prompts=4,
    )
    started = time.monotonic()
    result = pipeline.run(settings)
    total_s = time.monotonic() - started
    if result.outcome not in ("published", "rejected"):
        print(f"the trainer did not produce a candidate: {result.reason}", file=sys.stderr)
        return 1
    held_out = data.read_pairs(Path(result.run_dir) / pipeline.HELD_OUT)
    prompts = [pair.messages for pair in held_out]
    adapter_dir = settings.registry_dir / "adapter" / ADAPTER / str(result.version)
    texts: dict[str, list[str]] = {}
    gen_s: dict[str, float] = {}
    for label, adapter in (("before", None), ("after", adapter_dir)):
        t0 = time.monotonic()
        texts[label] = evaluate.generate(MODEL_DIR, adapter, prompts, args.max_tokens)
        gen_s[label] = time.monotonic() - t0
    metrics: dict[str, Any] = result.metrics
    summary = {
        "held_out_pairs": len(held_out),
        "train_pairs": metrics["data"]["train_pairs"],
        "preference_accuracy": {
            "before": metrics["baseline_accuracy"],
            "after": metrics["candidate_accuracy"],
        },
        "mean_margin_nats": {
            "before": rnd(metrics["baseline_eval"]["mean_margin"]),
            "after": rnd(metrics["candidate_eval"]["mean_margin"]),
        },
        "style_share": {"before": rnd(style_share(texts["before"]), 3), "after": rnd(style_share(texts["after"]), 3)},
        "gate": {"outcome": result.outcome, "reason": result.reason},
        "stage_wall_s": result.wall_s,
        "trainer_total_s": rnd(total_s, 1),
        "style_generation_s": {k: rnd(v, 1) for k, v in gen_s.items()},
        "losses": metrics.get("losses"),
    }
    samples = [
        {"prompt": p[-1]["content"], "before": b, "after": a}
        for p, b, a in list(zip(prompts, texts["before"], texts["after"], strict=True))[:4]
    ]
    settings_used = settings.model_dump(mode="json", exclude={"dataset_dir", "registry_dir", "work_dir"})
    path = write_results(
        args.name,
        {
            "benchmark": "learning_loop",
            "summary": summary,
            "samples": samples,
            "settings": settings_used,
            "metadata": metadata(("ms-swift", "transformers", "peft", "torch")),
        },
    )
    print(
        table(
            ["", "before", "after"],
            [
                [
                    "held-out preference accuracy",
                    summary["preference_accuracy"]["before"],
                    summary["preference_accuracy"]["after"],
                ],
                ["three-line-poem share", summary["style_share"]["before"], summary["style_share"]["after"]],
            ],
        )
    )
    print(table(["stage", "wall s"], [[k, v] for k, v in result.wall_s.items()]))
    print(f"gate: {result.outcome}: {result.reason}")
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
