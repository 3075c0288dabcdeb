"""
The options of the reward server, as dataclasses for `HfArgumentParser` (`trl-rfm serve --help` lists them):
[`EngineArguments`] (the model and how it scores; also read from `TRL_RFM_*` environment variables by the in-process
integrations) and [`ServerArguments`] (HTTP: address, key, limits).
"""

import dataclasses
import ipaddress
import os
from dataclasses import dataclass, field
from typing import Literal, get_args


API_KEY_VARIABLE = "TRL_RFM_API_KEY"
ENVIRONMENT_PREFIX = "TRL_RFM_"
Dtype = Literal["auto", "float32", "bfloat16", "float16"]
DTYPES = get_args(Dtype)


@dataclass
class EngineArguments:
    model_name_or_path: str = field(
        metadata={"help": "The saved Reward Feature Model (a local folder, full or LoRA, with its tokenizer)."}
    )
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "The model's tokenizer, when the model folder has none."}
    )
    user_weights_file: str | None = field(
        default=None,
        metadata={
            "help": "The user file to load users from and to write adapted users to (atomically). Default: the "
            "model folder's user_weights.safetensors."
        },
    )
    population_only: bool = field(
        default=False,
        metadata={
            "help": "Load the model without its saved users: for a model whose users' weights were withheld from its "
            "upload (users then come from --user_weights_file, or are added by adaptation)."
        },
    )
    unknown_users: Literal["population", "error"] = field(
        default="population",
        metadata={"help": "A user the model does not know: scored with the population weights, or refused (4xx)."},
    )
    batch_size: int = field(
        default=64,
        metadata={"help": "Sequences per backbone pass; a pass takes them from as many waiting requests as needed."},
    )
    max_length: int | None = field(
        default=None,
        metadata={"help": "Longer sequences keep their last tokens. Default: the trunk's position limit."},
    )
    dtype: Dtype = field(default="auto", metadata={"help": "Weights' dtype. `auto`: as saved."})
    device: str = field(default="auto", metadata={"help": "`auto` (the GPU when there is one), `cpu`, `cuda:0`, ..."})

    def __post_init__(self):
        # Also checked here, not only by the command line's choices: `from_environment` builds these from strings.
        for name, choices in (("unknown_users", ("population", "error")), ("dtype", DTYPES)):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {list(choices)}, got {getattr(self, name)!r}.")
        if self.batch_size < 1:
            raise ValueError(f"--batch_size must be >= 1, got {self.batch_size}.")
        if self.max_length is not None and self.max_length < 1:
            raise ValueError(f"--max_length must be >= 1, got {self.max_length}.")

    @classmethod
    def from_environment(cls, **overrides) -> "EngineArguments":
        """The arguments from `TRL_RFM_<FIELD>` environment variables (`TRL_RFM_MODEL_NAME_OR_PATH`, or its short
        form `TRL_RFM_MODEL`; `TRL_RFM_DEVICE`, ...), `overrides` taking precedence. For integrations that run inside
        another framework's processes, where there is no command line."""
        values = {}
        for item in dataclasses.fields(cls):
            raw = os.environ.get(ENVIRONMENT_PREFIX + item.name.upper())
            if raw is not None and raw != "":
                values[item.name] = raw
                if item.name in ("batch_size", "max_length"):
                    if not raw.isdigit():
                        raise ValueError(f"{ENVIRONMENT_PREFIX}{item.name.upper()}={raw!r} is not a whole number.")
                    values[item.name] = int(raw)
                elif item.name == "population_only":
                    if raw.lower() not in ("0", "1", "true", "false"):
                        raise ValueError(f"{ENVIRONMENT_PREFIX}POPULATION_ONLY={raw!r} is not 0, 1, true or false.")
                    values[item.name] = raw.lower() in ("1", "true")
        if "model_name_or_path" not in values and os.environ.get(ENVIRONMENT_PREFIX + "MODEL"):
            values["model_name_or_path"] = os.environ[ENVIRONMENT_PREFIX + "MODEL"]
        values.update({key: value for key, value in overrides.items() if value is not None})
        if not values.get("model_name_or_path"):
            raise ValueError(
                f"No reward model: set the environment variable {ENVIRONMENT_PREFIX}MODEL to the folder of a saved "
                "Reward Feature Model."
            )
        return cls(**values)


@dataclass
class ServerArguments:
    host: str = field(
        default="127.0.0.1",
        metadata={"help": "Address to bind. Any address other than loopback requires an API key."},
    )
    port: int = field(default=8000, metadata={"help": "Port to listen on."})
    api_key: str | None = field(
        default=None,
        metadata={
            "help": f"Key every request must carry (`Authorization: Bearer <key>`, `X-API-Key: <key>`, or "
            f"`?api_key=<key>` for clients that send no headers, such as OpenRLHF). Default: ${API_KEY_VARIABLE} "
            "(preferred: a command line is visible to other users of the machine)."
        },
    )
    allow_adaptation: bool = field(
        default=True, metadata={"help": "Serve `POST /users/{user_id}/adapt` (it writes the user file)."}
    )
    max_body_bytes: int = field(default=16 * 1024 * 1024, metadata={"help": "Largest request body accepted (413)."})
    max_samples_per_request: int = field(
        default=4096, metadata={"help": "Most samples (or comparisons) one request may hold (413)."}
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = field(
        default="info", metadata={"help": "uvicorn's log level."}
    )
    access_log: bool = field(
        default=False,
        metadata={
            "help": "Log every request (off: OpenRLHF sends one request per sample, and the line shows its URL)."
        },
    )

    def __post_init__(self):
        if self.api_key is None:
            self.api_key = os.environ.get(API_KEY_VARIABLE) or None
        if self.max_body_bytes < 1 or self.max_samples_per_request < 1:
            raise ValueError("--max_body_bytes and --max_samples_per_request must be >= 1.")
        if not is_loopback(self.host) and not self.api_key:
            raise ValueError(
                f"--host {self.host} accepts connections from other machines: pass an API key (set "
                f"${API_KEY_VARIABLE} or --api_key), or bind 127.0.0.1."
            )


def is_loopback(host: str) -> bool:
    """Whether `host` only accepts connections from this machine (`localhost`, `127.0.0.0/8`, `::1`)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost may resolve to anything
        return False
