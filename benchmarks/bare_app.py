"""The baseline a user would hand-write: FastAPI under uvicorn, loading the same MLflow pyfunc.

BENCH_MODEL_DIR=<pyfunc dir> python -m uvicorn benchmarks.bare_app:app --port 8001
"""

from __future__ import annotations

import os
from contextlib import asynccontextmanager

import mlflow.pyfunc
import pandas as pd
from fastapi import FastAPI

state: dict = {}


@asynccontextmanager
async def lifespan(_: FastAPI):
    state["model"] = mlflow.pyfunc.load_model(os.environ["BENCH_MODEL_DIR"])
    yield


app = FastAPI(lifespan=lifespan)


@app.get("/ping")
def ping() -> dict:
    return {"ok": "model" in state}


@app.post("/invocations")
def invocations(body: dict) -> dict:
    output = state["model"].predict(pd.DataFrame(body["dataframe_records"]))
    return {"predictions": output.to_dict(orient="records")}
