"""Step: score a Delta table with a registered model into a new Delta table.

The Python API is pipelines.inference.scoring.predict.

    lakeloop predict --input PATH [--version N] --output PATH
    ray job submit --working-dir . -- python -m pipelines.predict --input ... --output ...
"""

from __future__ import annotations

import argparse

from pipelines.core.config import LakeloopConfig
from pipelines.step_runner import StepResult, step_main


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, help="Delta table to score")
    parser.add_argument("--version", type=int, help="version of the input table (default: latest)")
    parser.add_argument("--output", required=True, help="Delta table to append the scored rows to")
    parser.add_argument("--model", help="models:/NAME@ALIAS or models:/NAME/VERSION (default: the serving alias)")


def run(args: argparse.Namespace, config: LakeloopConfig) -> StepResult:
    from pipelines.adapters import ray_cluster
    from pipelines.adapters.prediction_log import MODEL_NAME, MODEL_VERSION
    from pipelines.inference.scoring import predict

    with ray_cluster.ray_session(config):
        scored = predict(args.input, args.model, args.output, version=args.version, config=config)
        rows = scored.count()
        first = scored.take(1)[0] if rows else {}
    model = f"{first.get(MODEL_NAME)} version {first.get(MODEL_VERSION)}"
    return StepResult(
        f"scored {rows} rows of {args.input} with {model} into {args.output}",
        {
            "rows": rows,
            "output": args.output,
            "model_name": first.get(MODEL_NAME),
            "model_version": first.get(MODEL_VERSION),
        },
    )


def main(argv: list[str] | None = None) -> None:
    step_main("python -m pipelines.predict", add_arguments, run, argv)


if __name__ == "__main__":
    main()
