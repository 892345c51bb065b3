"""``mesh-cli completion bash|zsh``: a shell completion script, generated from the parser itself
(commands, options, their choices), so it never lags behind the commands. Pure text: the shells
need nothing installed but the script."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from ._common import add_command

SHELLS = ("bash", "zsh")


def add_to(commands: Any) -> None:
    parser = add_command(
        commands,
        "completion",
        help="print a shell completion script (bash or zsh)",
        description="Print a script that completes mesh-cli's commands, options and their "
        "choices in bash or zsh. Load it in the shell's start-up file:\n\n"
        '  bash (~/.bashrc):  eval "$(mesh-cli completion bash)"\n'
        '  zsh (~/.zshrc):    eval "$(mesh-cli completion zsh)"   (after compinit)\n\n'
        "or save it where the shell looks for completions, e.g. "
        "/etc/bash_completion.d/mesh-cli, or a file _mesh-cli in a directory of zsh's $fpath.",
        example="mesh-cli completion bash > ~/.local/share/bash-completion/completions/mesh-cli",
    )
    parser.add_argument("shell", choices=SHELLS, metavar="SHELL", help="bash or zsh")
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    from . import build_parser  # the whole parser, this command included

    spec = _spec(build_parser())
    print(bash_script(spec) if args.shell == "bash" else zsh_script(spec), end="")
    return 0


@dataclass(frozen=True, slots=True)
class Option:
    names: tuple[str, ...]
    help: str
    takes_value: bool
    choices: tuple[str, ...]
    repeatable: bool


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    help: str
    options: tuple[Option, ...]
    positionals: tuple[tuple[str, tuple[str, ...]], ...]  # (metavar, choices)


@dataclass(frozen=True, slots=True)
class Spec:
    program: str
    options: tuple[Option, ...]
    commands: tuple[Command, ...]


def _spec(parser: argparse.ArgumentParser) -> Spec:
    commands: list[Command] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            for name, sub in action.choices.items():
                options, positionals = _arguments(sub)
                commands.append(Command(name, helps.get(name, ""), options, positionals))
    options, _ = _arguments(parser)
    return Spec(parser.prog, options, tuple(commands))


def _arguments(
    parser: argparse.ArgumentParser,
) -> tuple[tuple[Option, ...], tuple[tuple[str, tuple[str, ...]], ...]]:
    options: list[Option] = []
    positionals: list[tuple[str, tuple[str, ...]]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) or action.help == argparse.SUPPRESS:
            continue
        choices = tuple(str(choice) for choice in action.choices or ())
        if action.option_strings:
            options.append(
                Option(
                    tuple(action.option_strings),
                    _short_help(action.help or ""),
                    action.nargs != 0,
                    choices,
                    isinstance(action, argparse._AppendAction | argparse._CountAction),
                )
            )
        else:
            positionals.append((str(action.metavar or action.dest), choices))
    return tuple(options), tuple(positionals)


def _short_help(text: str) -> str:
    """The first clause of an option's help: a completion menu has one short line for it."""
    for end in (" (", "; ", ". "):
        text = text.split(end, 1)[0]
    return text.strip()


def _words(items: tuple[str, ...] | list[str]) -> str:
    return " ".join(items)


def bash_script(spec: Spec) -> str:
    """The bash completion function, registered for `spec.program` with ``complete``."""
    top = [name for option in spec.options for name in option.names]
    cases = []
    for command in spec.commands:
        names = [name for option in command.options for name in option.names]
        values = []
        for option in command.options:
            if option.takes_value:
                pattern = "|".join(option.names)
                reply = (
                    f'COMPREPLY=($(compgen -W "{_words(option.choices)}" -- "$cur"))'
                    if option.choices
                    else ":"  # no list: bash's own (file name) completion, by -o default
                )
                values.append(f"                {pattern}) {reply}; return ;;")
        positional_choices = [choice for _, choices in command.positionals for choice in choices]
        value_case = (
            '            case "$prev" in\n' + "\n".join(values) + "\n            esac\n"
            if values
            else ""
        )
        cases.append(
            f"        {command.name})\n"
            f"{value_case}"
            "            if [[ $cur == -* ]]; then\n"
            f'                COMPREPLY=($(compgen -W "{_words(names)}" -- "$cur"))\n'
            "            else\n"
            f'                COMPREPLY=($(compgen -W "{_words(positional_choices)}" -- "$cur"))\n'
            "            fi\n"
            "            ;;"
        )
    function = "_" + spec.program.replace("-", "_")
    return f"""\
# bash completion for {spec.program}; generated by `{spec.program} completion bash`.
# Load it with: eval "$({spec.program} completion bash)"
{function}() {{
    local cur prev command word i
    COMPREPLY=()
    cur="${{COMP_WORDS[COMP_CWORD]}}"
    prev=""
    if (( COMP_CWORD > 0 )); then prev="${{COMP_WORDS[COMP_CWORD-1]}}"; fi
    command=""
    for (( i = 1; i < COMP_CWORD; i++ )); do
        word="${{COMP_WORDS[i]}}"
        case "$word" in
            -*) ;;
            *) command="$word"; break ;;
        esac
    done
    case "$command" in
        "")
            if [[ $cur == -* ]]; then
                COMPREPLY=($(compgen -W "{_words(top)}" -- "$cur"))
            else
                COMPREPLY=($(compgen -W "{_words([c.name for c in spec.commands])}" -- "$cur"))
            fi
            ;;
{chr(10).join(cases)}
    esac
}}
complete -o default -F {function} {spec.program}
"""


def _zsh_quote(text: str) -> str:
    """`text` inside a single-quoted _arguments spec: quotes closed and reopened, brackets and
    colons escaped."""
    return (
        text.replace("\\", "\\\\")
        .replace("'", "'\\''")
        .replace("[", "\\[")
        .replace("]", "\\]")
        .replace(":", "\\:")
    )


def _zsh_option(option: Option) -> list[str]:
    specs = []
    for name in option.names:
        head = ("*" if option.repeatable else "") + name
        text = f"{head}[{_zsh_quote(option.help)}]"
        if option.takes_value:
            action = f"({_words(option.choices)})" if option.choices else "_default"
            text += f":{_zsh_quote(name.lstrip('-'))}:{action}"
        specs.append(f"'{text}'")
    return specs


def zsh_script(spec: Spec) -> str:
    """The zsh completion function (``#compdef``), registered with ``compdef`` when evaluated."""
    function = "_" + spec.program.replace("-", "_")
    commands = "\n".join(
        f"        '{_zsh_quote(command.name)}:{_zsh_quote(command.help)}'"
        for command in spec.commands
    )
    top = " \\\n        ".join(spec for option in spec.options for spec in _zsh_option(option))
    cases = []
    for command in spec.commands:
        specs = [s for option in command.options for s in _zsh_option(option)]
        for metavar, choices in command.positionals:
            action = f"({_words(choices)})" if choices else "_default"
            specs.append(f"':{_zsh_quote(metavar)}:{action}'")
        joined = " \\\n                    ".join(specs)
        cases.append(
            f"                {command.name})\n"
            f"                    _arguments {joined}\n"
            "                    ;;"
        )
    return f"""\
#compdef {spec.program}
# zsh completion for {spec.program}; generated by `{spec.program} completion zsh`.
# Load it with: eval "$({spec.program} completion zsh)" (after compinit)
{function}() {{
    local curcontext="$curcontext" state line
    typeset -A opt_args
    local -a commands
    commands=(
{commands}
    )
    _arguments -C \\
        {top} \\
        '1: :->command' \\
        '*:: :->argument'
    case $state in
        command)
            _describe -t commands '{spec.program} command' commands
            ;;
        argument)
            case $line[1] in
{chr(10).join(cases)}
            esac
            ;;
    esac
}}
if [[ $zsh_eval_context[-1] == loadautofunc ]]; then
    {function} "$@"
else
    compdef {function} {spec.program}
fi
"""
