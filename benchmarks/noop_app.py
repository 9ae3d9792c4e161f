"""The framework's floor: a Serve deployment that reads the body and answers a constant, deployed
with the shipped deployment options behind the same ingress (benchmarks/serve_load.py)."""

from typing import Any

from fastapi import FastAPI, Request
from ray import serve

api = FastAPI()


@serve.deployment(name="ModelServer")  # the shipped deployment's name, so conf/serve.yaml's options apply
@serve.ingress(api)
class Noop:
    @api.get("/health")
    async def health(self) -> dict:
        return {"status": "ready"}

    @api.post("/invocations")
    async def invocations(self, request: Request) -> dict:
        await request.body()
        return {"predictions": [{"prediction": "no"}]}


def build_app(args: dict[str, Any]) -> serve.Application:
    return Noop.bind()
