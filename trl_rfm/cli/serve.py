"""
`trl-rfm serve`: one HTTP server scoring every user of a Reward Feature Model, with OpenRLHF's remote-reward protocol
(`POST /get_reward`), `POST /score`, and users added online (`POST /users/{user_id}/adapt`).

    trl-rfm serve --model_name_or_path my-rfm --port 8000

Needs the `serve` extra (`pip install "trl-rfm[serve]"`: FastAPI and uvicorn). See `docs/serving.md`.
"""

from .common import CLIError, parse_arguments


def main(argv: list[str] | None = None) -> None:
    from ..serving.arguments import EngineArguments, ServerArguments

    engine_args, server_args = parse_arguments("serve", (EngineArguments, ServerArguments), argv)
    try:
        from ..serving.app import serve
    except ImportError as error:
        raise CLIError(
            f'`trl-rfm serve` needs FastAPI and uvicorn ({error}): pip install "trl-rfm[serve]".'
        ) from error
    serve(engine_args, server_args)
