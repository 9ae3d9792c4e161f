"""Training: Ray Train's TorchTrainer (lakeloop's training loop) against a plain PyTorch loop on the
same preprocessed data and the same model.

    python -m benchmarks.training [--rows 5000000] [--epochs 5]

The default is a realistic epoch (3.5M training rows: a plain epoch took 10-14 s here); at the
demo's size (--rows 200000) an epoch takes about 0.3 s, short enough for noise to dominate.

Both do the same work per epoch: shuffled mini-batches (256) of AdamW steps over the train split,
a validation pass with the same metrics, and a checkpoint written to disk. Each configuration runs
--epochs epochs once; an epoch is timed from its start to the next epoch's start (report and
checkpoint included), and the per-epoch time is the median of the epochs after the first (Train
streams the first from Ray Data, then trains from its in-memory cache); the fixed cost is what
remains of the whole run. The machine's speed drifts between runs (timing a 1-epoch run against a
3-epoch run gave per-epoch overheads of -55% and +35% for the same code minutes apart; the plain
loop's median epoch was 10.4 s in one run of this benchmark and 14.1 s in the next), so the plain
loop runs both before and after the one-worker TorchTrainer and the baseline is the median of both
runs' epochs. Threads are matched: each Train worker has 1
CPU (Ray gives it one torch thread), and the plain loop runs with one torch thread.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import demo_config, write_result

PLAIN, PLAIN_AGAIN = "plain PyTorch loop", "plain PyTorch loop, again"


def plain_loop(train: tuple, validation: tuple, spec, hp: dict, epochs: int, checkpoint: Path) -> list[float]:
    """The Unix time each epoch began, then the time the last one ended."""
    import torch

    from pipelines.core import metrics
    from pipelines.core.network import loss_function

    starts = []
    torch.manual_seed(0)
    model = spec.build()
    optimizer = torch.optim.AdamW(model.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])
    loss_fn = loss_function("classification")
    x, y = torch.from_numpy(train[0]), torch.from_numpy(train[1])
    vx, vy = torch.from_numpy(validation[0]), torch.from_numpy(validation[1])
    for _ in range(epochs):
        starts.append(time.time())
        model.train()
        for index in torch.randperm(len(x)).split(hp["batch_size"]):
            loss = loss_fn(model(x[index]), y[index]).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.inference_mode():
            logits = torch.cat([model(part) for part in vx.split(max(hp["batch_size"], 1024))])
        metrics.classification(vy.numpy(), torch.softmax(logits, dim=1).numpy())
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, checkpoint)
    return [*starts, time.time()]


def epochs_after_first(starts: list[float]) -> np.ndarray:
    """Each epoch after the first (Train streams the first epoch from Ray Data, then trains from its
    in-memory cache), measured start to start, report and checkpoint included."""
    return np.diff(starts)[1:]


def per_epoch(starts: list[float]) -> float:
    return float(np.median(epochs_after_first(starts)))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.training")
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()

    import ray
    import torch

    from pipelines.adapters import delta
    from pipelines.core.module_spec import MLP_CLASS, ModuleSpec
    from pipelines.scenarios import synthetic
    from pipelines.training import torch_loop
    from pipelines.training.data import prepare, to_frame
    from pipelines.training.features import FEATURES_COLUMN, TARGET_COLUMN

    results: dict[str, dict] = {}  # setup -> epoch start times and the whole run's seconds
    with tempfile.TemporaryDirectory() as tmp:
        config = demo_config(Path(tmp))
        delta.tables(config).events.append(synthetic.generate(args.rows, 1))
        ray.init(address="local", num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", logging_level="ERROR")
        try:
            prepared = prepare(config)
            datasets = {name: prepared.splits[name].materialize() for name in ("train", "validation")}
            frames = {name: to_frame(ds) for name, ds in datasets.items()}
            pipeline = prepared.pipeline
            arrays = {  # what the torch loop feeds the network: one column per categorical slot
                name: (pipeline.onehot(np.stack(f[FEATURES_COLUMN].to_numpy())), f[TARGET_COLUMN].to_numpy(np.int64))
                for name, f in frames.items()
            }
            hp = config.train.families["mlp"].settings()
            network = {k: hp[k] for k in ("hidden", "depth", "dropout")}
            spec = ModuleSpec(MLP_CLASS, pipeline.onehot_width, 2, network)
            torch.set_num_threads(1)

            def run_plain(setup: str) -> None:
                started = time.perf_counter()
                marks = plain_loop(arrays["train"], arrays["validation"], spec, hp, args.epochs, Path(tmp) / "plain.pt")
                results[setup] = {"starts": marks[:-1], "total_s": time.perf_counter() - started}

            run_plain(PLAIN)
            for workers in (1, 2):
                train = {"num_workers": workers, "cpus_per_worker": 1.0, "patience": args.epochs, "family": "mlp"}
                train["max_epochs"] = args.epochs
                run_config = config.model_copy(update={"train": config.train.model_copy(update=train)})
                started = time.perf_counter()
                name = f"bench-{workers}w-{time.time_ns()}"
                trained = torch_loop.fit(run_config, "mlp", hp, datasets, pipeline, None, name)
                results[f"TorchTrainer, {workers} worker{'s' if workers > 1 else ''}"] = {
                    "starts": [h["epoch_started_at"] for h in trained.history],
                    "total_s": time.perf_counter() - started,
                }
                if workers == 1:
                    run_plain(PLAIN_AGAIN)  # brackets the one-worker run: the baseline spans its time
        finally:
            ray.shutdown()

    rows = []
    for name, run in results.items():
        epoch_s = per_epoch(run["starts"])
        rows.append(
            {
                "setup": name,
                "per_epoch_s": epoch_s,
                "epoch_s": np.diff(run["starts"]).round(2).tolist(),
                "fixed_s": run["total_s"] - args.epochs * epoch_s,
                "total_s": run["total_s"],
                "epochs": args.epochs,
            }
        )
    base = float(np.median(np.concatenate([epochs_after_first(results[p]["starts"]) for p in (PLAIN, PLAIN_AGAIN)])))
    one_worker = next(r for r in rows if r["setup"] == "TorchTrainer, 1 worker")
    overhead = one_worker["per_epoch_s"] / base - 1
    lines = ["| setup | per epoch s | each epoch s | fixed s | total s | per epoch vs plain |", "| --- " * 6 + "|"]
    lines += [
        f"| {r['setup']} | {r['per_epoch_s']:.2f} | {' '.join(map(str, r['epoch_s']))} | {r['fixed_s']:.1f} | "
        f"{r['total_s']:.1f} | {r['per_epoch_s'] / base:.2f}x |"
        for r in rows
    ]
    lines.append(
        f"TorchTrainer (1 worker) per-epoch overhead vs plain PyTorch (median epoch of both plain runs, "
        f"{base:.2f} s): {overhead:+.0%} (target <= +10%)"
    )
    write_result(
        "training",
        {
            "rows": rows,
            "train_rows": len(arrays["train"][0]),
            "plain_per_epoch_s": base,
            "per_epoch_overhead": overhead,
        },
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
