"""Step: the whole loop end to end on embedded defaults (what `make demo` runs).

    lakeloop demo [--rows N] [--drift covariate|concept] [--keep-running]

See pipelines.scenarios.whole_loop for what happens. Exits non-zero if a request failed, a served row is
missing from the Delta log, or the loop did not do what the scenario expects.
"""

from __future__ import annotations

import argparse

from pipelines.core.config import LakeloopConfig
from pipelines.step_runner import StepResult, step_main

JOINS_STACK = False  # the demo starts a stack of its own


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rows", type=int, default=20_000, help="rows of demo data per landing (default: 20000)")
    parser.add_argument("--seed", type=int, default=7, help="random seed of the demo data (default: 7)")
    parser.add_argument("--keep-running", action="store_true", help="leave MLflow, Ray and Serve running")
    parser.add_argument(
        "--drift",
        choices=("covariate", "concept"),
        default="covariate",
        help="what changes after the first model serves: the inputs (covariate) or the labelling rule "
        "(concept: labels arrive through /feedback and retraining must learn the new rule)",
    )


def run(args: argparse.Namespace, config: LakeloopConfig) -> StepResult:
    from pipelines.scenarios.whole_loop import DemoOptions, run_demo

    result = run_demo(DemoOptions(args.rows, args.seed, args.drift, args.keep_running), config)
    return StepResult(result.summary, result.data, exit_code=0 if result.ok else 1)


def main(argv: list[str] | None = None) -> None:
    step_main("python -m pipelines.demo", add_arguments, run, argv, joins_stack=JOINS_STACK)


if __name__ == "__main__":
    main()
