"""
The HTTP reward server (FastAPI on uvicorn), as `trl-rfm serve` runs it:

    POST /get_reward                OpenRLHF's remote reward: {"query", "prompts", "labels"} -> {"rewards", "scores",
                                    "extra_logs"}; each sample's user from its label
    POST /score                     {"prompts", "completions", "user_ids"} -> {"rewards"}
    GET  /users                     the users the model knows
    POST /users/{user_id}/adapt     {"comparisons": [...]} -> the user's weights fitted, served and written
    GET  /health

Errors are `{"detail": "<what is wrong>"}` with a 4xx status; a failed request never stops the server.
"""

import asyncio
import logging
import re
import sys
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.concurrency import run_in_threadpool

from .arguments import EngineArguments, ServerArguments
from .engine import RewardEngine
from .protocol import RequestError, normalize_request_user, openrlhf_answer, user_of_label
from .security import RequestGuard


logger = logging.getLogger("uvicorn.error")  # configured by uvicorn, unlike a logger of our own

Message = dict[str, Any]
TextOrConversation = str | list[Message]


class RewardRequest(BaseModel):
    """OpenRLHF's request; fields it may add later are ignored."""

    model_config = ConfigDict(extra="ignore")
    query: list[str]
    prompts: list[Any] | None = None
    labels: list[Any] | None = None


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompts: list[TextOrConversation | None]
    completions: list[TextOrConversation]
    user_ids: list[str | int | None]


class Comparison(BaseModel):
    """One comparison in TRL's preference format (explicit or implicit prompt; text or conversations)."""

    model_config = ConfigDict(extra="forbid")
    prompt: TextOrConversation | None = None
    chosen: TextOrConversation
    rejected: TextOrConversation


class AdaptRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    comparisons: list[Comparison]


def create_app(engine: RewardEngine, args: ServerArguments | None = None) -> FastAPI:
    """The reward server's ASGI application around `engine` (which the caller closes)."""
    args = args or ServerArguments()
    # No /docs or /openapi.json: nothing is served that the routes below do not need.
    app = FastAPI(title="trl-rfm reward server", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(RequestGuard, api_key=args.api_key, max_body_bytes=args.max_body_bytes)

    def check_size(count: int, what: str) -> None:
        if count > args.max_samples_per_request:
            raise RequestError(
                f"The request holds {count} {what}; this server takes at most {args.max_samples_per_request} per "
                "request (--max_samples_per_request): split it.",
                status_code=413,
            )

    @app.exception_handler(RequestError)
    async def request_error(request: Request, error: RequestError):
        return JSONResponse({"detail": str(error)}, status_code=error.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError):
        return JSONResponse({"detail": describe_validation_errors(error.errors())}, status_code=422)

    @app.post("/get_reward")
    async def get_reward(request: RewardRequest):
        check_size(len(request.query), "queries")
        if request.labels is None:
            raise RequestError(
                "No `labels`: each query's user comes from its label; run OpenRLHF with `--data.label_key user_id`."
            )
        if len(request.labels) != len(request.query):
            raise RequestError(f"{len(request.query)} queries for {len(request.labels)} labels: one label per query.")
        if request.prompts is not None and len(request.prompts) != len(request.query):
            raise RequestError(f"{len(request.query)} queries for {len(request.prompts)} prompts: one prompt each.")
        users = [user_of_label(label, i) for i, label in enumerate(request.labels)]
        sequences = await run_in_threadpool(engine.tokenize_queries, request.query)
        result = await asyncio.wrap_future(engine.submit(sequences, users))
        return openrlhf_answer(result.rewards, result.population_rewards)

    @app.post("/score")
    async def score(request: ScoreRequest):
        check_size(len(request.completions), "samples")
        lengths = (len(request.prompts), len(request.completions), len(request.user_ids))
        if len(set(lengths)) != 1:
            raise RequestError("{} prompts, {} completions and {} user_ids: one of each per sample.".format(*lengths))
        users = [normalize_request_user(u, f"user_ids[{i}]") for i, u in enumerate(request.user_ids)]
        sequences = await run_in_threadpool(engine.tokenize_pairs, request.prompts, request.completions)
        result = await asyncio.wrap_future(engine.submit(sequences, users))
        return {"rewards": result.rewards}

    @app.get("/users")
    async def users():
        user_ids = engine.user_ids
        return {"users": user_ids, "num_users": len(user_ids)}

    @app.post("/users/{user_id}/adapt")
    async def adapt(user_id: str, request: AdaptRequest):
        if not args.allow_adaptation:
            raise RequestError("Adaptation is disabled on this server (--allow_adaptation False).", status_code=403)
        check_size(len(request.comparisons), "comparisons")
        key = normalize_request_user(user_id, "the user id in the path")
        comparisons = [c.model_dump(exclude_none=True) for c in request.comparisons]
        result = await asyncio.wrap_future(engine.adapt(key, comparisons))
        logger.info("Adapted user %r from %d comparisons", result.user_id, result.num_comparisons)
        return {
            "user_id": result.user_id,
            "replaced": result.replaced,
            "num_comparisons": result.num_comparisons,
            "num_users": result.num_users,
        }

    @app.get("/health")
    async def health():
        return {"status": "ok", "num_users": len(engine.user_ids), "num_features": engine.num_features}

    return app


def describe_validation_errors(errors: list[dict]) -> str:
    """FastAPI's validation errors as one line: where in the body, and what is wrong there (a value that fits no
    branch of a union, such as text or a conversation, is one error, not one per branch)."""
    problems: dict[str, list[str]] = {}
    for error in errors:
        if error.get("type") == "json_invalid":
            reason = (error.get("ctx") or {}).get("error", "")
            return f"The request body is not valid JSON ({reason} at character {error['loc'][-1]})."
        path = [str(part) for part in error.get("loc", ()) if part != "body"]
        # Pydantic names the union branch a value failed as a location part (`str`, `list[dict[str,any]]`).
        branch = next((i for i, part in enumerate(path) if _UNION_BRANCH.match(part)), None)
        where = ".".join(path if branch is None else path[:branch]) or "the body"
        problems.setdefault(where, []).append(
            error.get("msg", "invalid") if branch is None else _BRANCH_NAMES.get(path[branch], path[branch])
        )
    parts = [
        f"{where}: {messages[0]}" if len(messages) == 1 else f"{where}: expected {' or '.join(messages)}"
        for where, messages in list(problems.items())[:5]
    ]
    more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
    return "Invalid request: " + "; ".join(parts) + more + "."


_UNION_BRANCH = re.compile(r"^(str|int|none|list\[.*\]|dict\[.*\])$")
_BRANCH_NAMES = {"str": "text", "int": "an integer", "none": "null", "list[dict[str,any]]": "a list of messages"}


def serve(engine_args: EngineArguments, server_args: ServerArguments) -> None:
    """Loads the model and serves it until interrupted (then finishes the queued work)."""
    import uvicorn
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()  # adapting maps the comparisons: no progress bar per request in the server's log
    engine = RewardEngine.from_arguments(engine_args)
    print(
        f"trl-rfm serve: {engine_args.model_name_or_path}, {len(engine.user_ids)} users, {engine.num_features} "
        f"features, on {engine.reward.device}",
        file=sys.stderr,
        flush=True,
    )
    try:
        uvicorn.run(
            create_app(engine, server_args),
            host=server_args.host,
            port=server_args.port,
            log_level=server_args.log_level,
            access_log=server_args.access_log,
        )
    finally:
        engine.close()
