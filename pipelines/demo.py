"""Step: the loop on embedded defaults, as far as it is built: generate, validate, preprocess.

    python -m pipelines.demo [--rows N]
"""

from __future__ import annotations

import argparse
import time

from pipelines import generate, preprocess, runtime, validate
from pipelines.config import LakeloopConfig
from pipelines.steps import StepResult, step_main


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rows", type=int, default=20_000, help="rows of demo data per version (default: 20000)")
    parser.add_argument("--seed", type=int, default=7)


def run(args: argparse.Namespace, config: LakeloopConfig) -> StepResult:
    stages: list[tuple[str, str, float]] = []

    def stage(name: str, step, step_args: argparse.Namespace) -> StepResult:
        started = time.perf_counter()
        result = step.run(step_args, config)
        stages.append((name, result.summary, time.perf_counter() - started))
        print(f"[{name}] {result.summary}", flush=True)
        return result

    stage("generate", generate, argparse.Namespace(table=None, rows=args.rows, seed=args.seed, drift="none"))
    stage("validate", validate, argparse.Namespace(table=None, version=None))
    with runtime.ray_session(config):
        stage("preprocess", preprocess, argparse.Namespace(table=None, version=None))
    lines = ["", "stage        seconds", *(f"{name:<12} {secs:7.1f}" for name, _, secs in stages)]
    return StepResult("\n".join(lines), {"stages": [{"stage": n, "summary": s, "seconds": t} for n, s, t in stages]})


def main(argv: list[str] | None = None) -> None:
    step_main("python -m pipelines.demo", add_arguments, run, argv)


if __name__ == "__main__":
    main()
