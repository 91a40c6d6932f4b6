"""``python -m llmq``: subcommands over the public API, the top layer (nothing in the library
imports it).

Each subcommand is one module of this package with an ``add_*(subparsers)`` function, listed lazily
below; those modules import torch only inside the command's function, so ``--help`` stays fast.
Every ``LlmqError`` becomes one line on stderr and exit code 2; a failed accuracy gate is exit
code 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from llmq.errors import LlmqError
from llmq.registry import import_target

#: subcommand -> "module:function" that adds its parser (lazy, like the backend registry)
COMMANDS = {
    "schemes": "llmq.cli.schemes:add_schemes",
    "run": "llmq.cli.run:add_run",
    "eval": "llmq.cli.eval:add_eval",
    "compare": "llmq.cli.eval:add_compare",
    "advise": "llmq.cli.advise:add_advise",
    "estimate": "llmq.cli.advise:add_estimate",
    "push": "llmq.cli.push:add_push",
    "qat": "llmq.cli.qat:add_qat",
    "bench": "llmq.cli.bench:add_bench",
}


def _quiet_libraries() -> None:
    """Library chatter (torch pytree notices, Hub retry logs) would bury llmq's one-line errors."""
    import logging
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", message=".*register_constant.*")
    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)


# -- entry point --------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from llmq.version import __version__

    parser = argparse.ArgumentParser(prog="llmq", description="Quantize, evaluate and publish causal LMs.")
    parser.add_argument("--version", action="version", version=f"llmq {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for target in COMMANDS.values():
        import_target(target)(sub)  # a broken subcommand module is a bug to see, not a command to hide
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    _quiet_libraries()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    from llmq.outdir import terminate_as_interrupt

    previous = terminate_as_interrupt()
    try:
        return int(args.func(args) or 0)
    except LlmqError as e:
        print(f"llmq: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - only resource errors become a line; anything else is a bug to see
        from llmq.errors import resource_error

        err = resource_error(e)
        if err is None:
            raise
        print(f"llmq: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        from llmq.outdir import interrupt_message

        print(interrupt_message(), file=sys.stderr)
        return 130
    finally:
        if previous is not None:  # main() called in-process (tests, notebooks): leave SIGTERM as it was
            import signal

            signal.signal(signal.SIGTERM, previous)


def entry() -> None:
    """``python -m llmq`` and the ``llmq`` script: ``main``, then exit. After an interrupt (Ctrl-C,
    SIGTERM) the output is already cleaned up, but a library's worker threads (GPTQModel's pools)
    may still be computing a layer nobody will use: a normal interpreter exit would join them (tens of
    seconds) and then tear down C++ thread pools under running threads (``terminate called ...``).
    So an interrupted run runs the ``atexit`` callbacks (temporary folders) and ends the process."""
    code = main()
    if code == 130:
        import atexit

        atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)
    raise SystemExit(code)


if __name__ == "__main__":  # pragma: no cover
    entry()
