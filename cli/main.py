"""The ``systerns`` command: one entry point, one module per subcommand.

Exit codes: 0 success; 1 runtime failure (broker, model or source error);
2 usage error; 3 the input had records that were dead-lettered (``collect
--strict`` only).
"""

from __future__ import annotations

import importlib
import os
import sys

# TensorFlow's C++ start-up chatter is not ours to print; errors still show.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from systerns.core.errors import SettingsError, SysternsError
from systerns.core.logs import configure

#: subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "collect": ("systerns.cli.collect", "publish syscall events (sysdig capture, live, or strace)"),
    "worker": ("systerns.cli.worker", "run the Faust worker: sessions, verdicts, alerts"),
    "serve": ("systerns.serving.server", "serve the model over TF Serving's PredictionService"),
    "alerts": ("systerns.cli.alerts", "follow the alerts topic and print notifications"),
    "lab": ("systerns.cli.lab", "record the lab corpus of real programs with strace"),
    "train": ("systerns.serving.train", "train and export a model version from the lab corpus"),
    "evaluate": ("systerns.serving.evaluate", "evaluate a model version on held-out lab runs"),
    "replay": ("systerns.cli.replay", "backtest a range of the events topic on model versions"),
    "scan": ("systerns.cli.scan", "judge a capture or trace file offline, without Kafka"),
    "demo": ("systerns.cli.demo", "run the whole pipeline locally on real data"),
}


def usage() -> str:
    lines = ["usage: systerns COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "systerns COMMAND --help shows a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch to a subcommand's ``main(argv)`` and map errors to exit codes."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"systerns: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    configure()
    module = importlib.import_module(COMMANDS[name][0])
    try:
        return int(module.main(rest) or 0)
    except SettingsError as exc:
        print(f"systerns {name}: {exc}", file=sys.stderr)
        return 2
    except SysternsError as exc:
        print(f"systerns {name}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
