"""The online gate against the offline gate alone, over seeded trials.

    python -m benchmarks.online_gate [--trials 20] [--look-every 100]

Three kinds of candidate, each against a champion, `--trials` seeds of each. The models are lakeloop
models of the shipped family (xgboost) fitted in-process on demo data; the decisions are the loop's
own code: the offline gate is `core/gate.decide` with the shipped gate settings, on the candidate's
test split; the online gate builds the labelled pairs a monitor pass would find, computes the
evidence (`monitoring/online_gate.evidence`) and decides with `core/paired_evidence.next_look`, one
monitor pass per `--look-every` labelled rows of live traffic, until it promotes or retires.

- leaky: trained on a table where one column (`account_flag`) leaks the label (the label with 15% of
  it flipped); live traffic carries noise in that column. On its own test split it beats the
  champion by far, so the offline gate promotes it; live it is worse.
- equal: trained like the champion on another sample of the same rows: no better live.
- better: the champion learnt the old concept, the candidate the new one, and live traffic follows
  the new one (after a concept change).

Whether a candidate is truly better is measured, not assumed: both models are scored on
TRUTH_ROWS fresh rows of the live traffic's distribution. Promoting a candidate that is not truly
better on gate.metric there is a false promotion; the target is a rate at most `gate.online.alpha`
for the online gate. For better candidates the labelled rows until promotion are reported.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import pandas as pd

from benchmarks.common import ROOT, demo_config, fitted_pipeline, fitted_xgboost, write_result

LEAK = "account_flag"
TRAIN_ROWS, TEST_SHARE = 2000, 0.15
TRUTH_ROWS = 20_000
KINDS = ("leaky", "equal", "better")


def _with_leak_feature(config):
    """The demo configuration with one more numeric feature (the leaky column)."""
    from pipelines.core.config import LakeloopConfig

    raw = config.model_dump()
    raw["dataset"]["features"].append({"name": LEAK, "kind": "numeric"})
    return LakeloopConfig.model_validate(raw)


def _rows(n: int, seed: int, drift: str, leak: bool, label: str) -> pd.DataFrame:
    from pipelines.scenarios import synthetic

    frame = synthetic.generate(n, seed, drift).to_pandas()
    rng = np.random.default_rng(seed + 7)
    if leak:  # what the label will be, written into the table by mistake (15% of it wrong)
        frame[LEAK] = np.where(rng.random(n) < 0.15, 1 - frame[label], frame[label]).astype(float)
    else:
        frame[LEAK] = rng.integers(0, 2, n).astype(float)
    return frame


def _fit(config, frame: pd.DataFrame):
    return fitted_xgboost(config, fitted_pipeline(config.dataset, frame), frame)


def _scores(config, model, frame: pd.DataFrame) -> dict[str, float]:
    from pipelines.training.fitted_model import evaluate_predictions

    dataset = config.dataset
    return evaluate_predictions(model.predict_frame(frame[dataset.feature_names]), frame[dataset.label], dataset)


def _models(kind: str, seed: int, base, leaky_config):
    """(config, champion, candidate, candidate's test split, live traffic) for one trial."""
    label = base.dataset.label
    if kind == "leaky":
        config = leaky_config
        champion = _fit(config, _rows(TRAIN_ROWS, seed, "none", False, label))
        data = _rows(TRAIN_ROWS, seed + 1, "none", True, label)
        live_drift = "none"
    elif kind == "equal":
        config = base
        champion = _fit(config, _rows(TRAIN_ROWS, seed, "none", False, label))
        data = _rows(TRAIN_ROWS, seed + 1, "none", False, label)
        live_drift = "none"
    else:
        config = base
        champion = _fit(config, _rows(TRAIN_ROWS, seed, "none", False, label))
        data = _rows(TRAIN_ROWS, seed + 1, "concept", False, label)
        live_drift = "concept"
    cut = int(len(data) * (1 - TEST_SHARE))
    candidate = _fit(config, data.iloc[:cut])
    live = _rows(config.gate.online.max_pairs, seed + 2, live_drift, False, label)
    truth = _rows(TRUTH_ROWS, seed + 3, live_drift, False, label)
    metric = config.gate.metric
    gain = _scores(config, candidate, truth)[metric] - _scores(config, champion, truth)[metric]
    return config, champion, candidate, data.iloc[cut:], live, gain


def _offline(config, champion, candidate, test: pd.DataFrame) -> bool:
    from pipelines.core.gate import decide

    return decide(_scores(config, candidate, test), _scores(config, champion, test), config.gate, "1").promote


def _json_outputs(model, frame: pd.DataFrame, features: list[str]) -> list[str]:
    return [json.dumps(row) for row in model.predict_frame(frame[features]).to_dict(orient="records")]


def _online(config, champion, candidate, live: pd.DataFrame, look_every: int) -> tuple[str, int, int]:
    """(promote | retire, labelled rows when it decided, looks spent), pass by pass as the monitor."""
    from pipelines.core.paired_evidence import next_look
    from pipelines.monitoring.online_gate import evidence

    dataset, online = config.dataset, config.gate.online
    outputs = {
        "champion_output": _json_outputs(champion, live, dataset.feature_names),
        "candidate_output": _json_outputs(candidate, live, dataset.feature_names),
    }
    pairs = pd.DataFrame({"request_id": [f"r{i}" for i in range(len(live))], "row": 0, "label": live[dataset.label]})
    pairs = pairs.assign(**outputs)
    looks, last = 0, 0
    for seen in range(look_every, len(live) + look_every, look_every):
        found = evidence(config, pairs.iloc[: min(seen, len(live))])
        decided, looks = next_look(found, online, looks, last, online.max_pairs)
        last = found.pairs
        if decided.action != "wait":
            return decided.action, found.pairs, looks
    return "wait", len(live), looks


def _rate(hits: int, n: int) -> str:
    if not n:
        return "none to promote"
    p = hits / n
    return f"{p:.3f} ({hits} of {n}; 95% upper bound {_upper(hits, n):.3f})"


def _upper(hits: int, n: int) -> float:
    """Clopper-Pearson one-sided 95% upper bound."""
    from scipy import stats

    return 1.0 if hits == n else float(stats.beta.ppf(0.95, hits + 1, n - hits))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--look-every", type=int, default=100, help="labelled rows per monitor pass")
    args = parser.parse_args()
    base = demo_config(ROOT / "lakeloop-data")
    leaky_config = _with_leak_feature(base)
    trials: dict[str, list[dict]] = {kind: [] for kind in KINDS}
    started = time.perf_counter()
    for kind in KINDS:
        for trial in range(args.trials):
            seed = 1000 * (KINDS.index(kind) + 1) + trial
            config, champion, candidate, test, live, gain = _models(kind, seed, base, leaky_config)
            action, rows, looks = _online(config, champion, candidate, live, args.look_every)
            offline = _offline(config, champion, candidate, test)
            trials[kind].append(
                {
                    "seed": seed,
                    "true_gain": gain,  # the candidate's gate metric minus the champion's, on TRUTH_ROWS live rows
                    "offline_promoted": offline,
                    "online": action,
                    "rows": rows,
                    "looks": looks,
                }
            )
            verdict = "promoted" if offline else "refused"
            print(
                f"{kind} {trial}: true gain {gain:+.4f}; offline {verdict}; "
                f"online {action} at {rows} rows ({looks} looks)"
            )
    online = base.gate.online
    summary = {kind: _summary(found) for kind, found in trials.items()}
    pooled = _summary([t for found in trials.values() for t in found])
    print(
        f"\nonline gate: alpha {online.alpha}, {online.looks} looks, pairs {online.min_pairs}-{online.max_pairs}, "
        f"a monitor pass every {args.look_every} labelled rows; {time.perf_counter() - started:.0f} s"
    )
    for kind, found in [*summary.items(), ("all", pooled)]:
        n = found["not_better"]
        line = f"{kind:>6}: {found['trials']} trials, {n} candidates not truly better; false promotions: "
        line += f"offline gate {_rate(found['offline_false'], n)}, online {_rate(found['online_false'], n)}"
        if found["rows_to_promote"]:
            line += f"; promoted online after median {np.median(found['rows_to_promote']):.0f} labelled rows"
        print(line)
    write_result(
        "online_gate",
        {
            "alpha": online.alpha,
            "looks": online.looks,
            "min_pairs": online.min_pairs,
            "max_pairs": online.max_pairs,
            "look_every": args.look_every,
            "truth_rows": TRUTH_ROWS,
            "summary": summary,
            "pooled": pooled,
            "false_promotion_upper_95": _upper(pooled["online_false"], pooled["not_better"]),
            "trials": trials,
            "seconds": round(time.perf_counter() - started, 1),
        },
    )


def _summary(found: list[dict]) -> dict:
    """Promotions, and false ones: of candidates whose true gain is not positive."""
    worse = [t for t in found if t["true_gain"] <= 0]
    promoted = [t for t in found if t["online"] == "promote"]
    return {
        "trials": len(found),
        "not_better": len(worse),
        "offline_promoted": sum(t["offline_promoted"] for t in found),
        "online_promoted": len(promoted),
        "offline_false": sum(t["offline_promoted"] for t in worse),
        "online_false": sum(t["online"] == "promote" for t in worse),
        "rows_to_promote": sorted(t["rows"] for t in promoted if t["true_gain"] > 0),
    }


if __name__ == "__main__":
    main()
