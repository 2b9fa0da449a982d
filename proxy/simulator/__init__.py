"""A seedable OpenAI-compatible noisy model ("What is A + B?", and step-wise chain problems)
used as the upstream by the demo, the tests and the benchmarks. See `model`, `steps`,
`verifier`, `completions`, `embeddings`, `faults` and `server`."""

from .config import SimConfig, add_cli_arguments, config_from_args, parse_model_options
from .questions import find_question, last_number, parse_question, questions, truth_of
from .server import Stats, create_app
from .serving import SimHandle, make_server, run, serve_in_thread
from .steps import chains, find_chain

__all__ = [
    "SimConfig", "SimHandle", "Stats", "add_cli_arguments", "chains", "config_from_args", "create_app",
    "find_chain", "find_question", "last_number", "make_server", "parse_model_options", "parse_question",
    "questions", "run", "serve_in_thread", "truth_of",
]
