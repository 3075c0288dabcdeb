"""The `trl-rfm` command line: `trl-rfm <command> [options]`; `trl-rfm <command> --help` lists the options. Errors in
the input are printed as one line; `--debug` (anywhere after the command) shows the traceback instead."""

import importlib
import sys


COMMANDS = {
    "reward": (
        "trl_rfm.cli.reward",
        "Train a (personalised) reward model: `trl reward`'s flags and --config recipes.",
    ),
    "demo": ("trl_rfm.cli.demo", "Train on synthetic raters, adapt held-out ones, print accuracy (offline, CPU)."),
    "adapt": ("trl_rfm.cli.adapt", "Add users to a trained model from a file of their comparisons (few-shot)."),
    "evaluate": ("trl_rfm.cli.evaluate", "Few-shot adaptation of held-out users vs baselines: JSON and plot."),
    "export": ("trl_rfm.cli.export", "Export one user as a standard AutoModelForSequenceClassification reward model."),
    "serve": (
        "trl_rfm.cli.serve",
        "Serve every user's reward over HTTP (OpenRLHF's remote reward; online adaptation).",
    ),
    "data": ("trl_rfm.cli.data", "Fetch and check a real dataset that is not on the Hub: `data fetch polis`."),
}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-V", "--version"):
        from .. import __version__

        print(f"trl-rfm {__version__}")
        return
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        lines = [f"  {name:<10} {help_text}" for name, (_, help_text) in COMMANDS.items()]
        print("usage: trl-rfm [--version] <command> [options]\n\ncommands:\n" + "\n".join(lines))
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\ntrl-rfm: unknown command {argv[0]!r}", file=sys.stderr)
            sys.exit(2)
        return
    module, _ = COMMANDS[argv[0]]
    arguments = [argument for argument in argv[1:] if argument != "--debug"]
    debug = len(arguments) != len(argv) - 1
    try:
        importlib.import_module(module).main(arguments)
    except (ValueError, TypeError, KeyError, OSError) as error:
        # Errors of the user's input: one line, naming the problem; the traceback only with `--debug`.
        if debug:
            raise
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"trl-rfm {argv[0]}: error: {message} (run with --debug for the traceback)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
