"""The `lakeloop` command: one sub-command per step (each also runs as `python -m pipelines.<step>`).

    lakeloop --version | lakeloop --help | lakeloop data --help | lakeloop completion bash

Step modules import their libraries only when they run, so building this tree (and every --help)
never imports torch or Ray.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from importlib import metadata
from types import ModuleType

from pipelines.step_runner import add_common_arguments, execute, exit_program

# the command tree: a group maps words to steps; a step is its module
GROUPS: dict[str, tuple[str, dict[str, str]]] = {
    "data": (
        "land, check and prepare Delta tables",
        {
            "generate": "pipelines.generate",
            "validate": "pipelines.validate",
            "preprocess": "pipelines.preprocess",
            "maintain": "pipelines.maintain",
        },
    ),
}
COMMANDS: dict[str, str] = {
    "train": "pipelines.train",
    "tune": "pipelines.tune",
    "release": "pipelines.release",
    "model": "pipelines.model",
    "features": "pipelines.features",
    "serve": "pipelines.deploy",
    "predict": "pipelines.predict",
    "monitor": "pipelines.monitor",
    "status": "pipelines.status",
    "stack": "pipelines.stack",
    "demo": "pipelines.demo",
}


def _summary(module: ModuleType) -> str:
    """The first line of a step module's docstring, without the "Step: " prefix."""
    return (module.__doc__ or "").strip().splitlines()[0].removeprefix("Step: ").rstrip(".")


def _add_step(sub: argparse._SubParsersAction, word: str, module_name: str) -> None:
    module = importlib.import_module(module_name)
    about = _summary(module)
    parser = sub.add_parser(
        word, help=about, description=module.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    module.add_arguments(parser)
    add_common_arguments(parser)
    parser.set_defaults(_module=module)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lakeloop", description="Continuous training on Ray, MLflow and Delta Lake.")
    parser.add_argument("--version", action="version", version=f"lakeloop {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group, (about, steps) in GROUPS.items():
        group_parser = commands.add_parser(group, help=about, description=about)
        inner = group_parser.add_subparsers(dest="step", metavar="STEP", required=True)
        for word, module_name in steps.items():
            _add_step(inner, word, module_name)
    for word, module_name in COMMANDS.items():
        _add_step(commands, word, module_name)
    completion = commands.add_parser("completion", help="print a shell completion script (bash)")
    completion.add_argument("shell", choices=["bash"], help="the shell: bash")
    return parser


def _version() -> str:
    try:
        return metadata.version("lakeloop")
    except metadata.PackageNotFoundError:
        return "unknown"


def _words(parser: argparse.ArgumentParser) -> tuple[list[str], list[str]]:
    """The sub-command words and option strings a parser accepts."""
    commands, options = [], []
    for action in parser._actions:  # argparse keeps no public list; this is how its own help walks it
        if isinstance(action, argparse._SubParsersAction):
            commands += list(action.choices)
        options += [o for o in action.option_strings if o.startswith("--")]
    return commands, options


def bash_completion(parser: argparse.ArgumentParser) -> str:
    """A bash completion function covering every command path and its options."""
    cases = []

    def walk(path: list[str], current: argparse.ArgumentParser) -> None:
        commands, options = _words(current)
        cases.append(f'        "{" ".join(path)}") words="{" ".join(commands + options)}" ;;')
        for action in current._actions:
            if isinstance(action, argparse._SubParsersAction):
                for word, child in action.choices.items():
                    walk([*path, word], child)

    walk([], parser)
    return "\n".join(
        [
            '# lakeloop completion: eval "$(lakeloop completion bash)"',
            "_lakeloop() {",
            '    local path="" words w',
            '    for w in "${COMP_WORDS[@]:1:COMP_CWORD-1}"; do [[ $w == -* ]] || path="${path:+$path }$w"; done',
            '    case "$path" in',
            *cases,
            '        *) words="" ;;',
            "    esac",
            '    COMPREPLY=($(compgen -W "$words" -- "${COMP_WORDS[COMP_CWORD]}"))',
            "}",
            "complete -F _lakeloop lakeloop",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "completion":
        print(bash_completion(parser))
        return
    module = args._module
    step = " ".join(["lakeloop", args.command, *([args.step] if getattr(args, "step", None) else [])])
    code = execute(module.run, args, getattr(module, "JOINS_STACK", True), step)
    if argv is None:  # run as a program, not called from Python
        exit_program(code)
    sys.exit(code)


if __name__ == "__main__":
    main()
