"""Documented commands are true: every `e.g.:` line of a usage text (steps/*.sh, steps/lib/*.sh,
local/*, egs/*/run.sh, se/bin/*.py, se/jobs.py) and every command of README.md and egs/*/README.md
is extracted from its file and run in a dry-run form, so a newly documented wrong option fails here.

- our shell scripts (steps/parse_options.sh) run the documented command line with `--help` first:
  parse_options checks every option's name and value, then prints the help and exits 0;
- Python tools (se.bin.*, local/*.py): every option used must be one that the tool's `--help` lists;
  se.bin.train's config overrides (also inside a recipe's --train-args and after steps/train.sh's
  `--`) are loaded with se.config, which rejects unknown keys and wrongly typed values;
- job runners (steps/run.sh, steps/slurm.sh): the runner's own parser (and conf/slurm.conf for
  Slurm options), then the command it runs is checked the same way.
Options of our scripts are spelled with dashes. Paths of scripts and modules named in the docs exist.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import io
import os
import re
import runpy
import shlex
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted(p.parent for p in (REPO / "egs").glob("*/run.sh"))
RUNNERS = {"steps/run.sh": "local", "steps/slurm.sh": "slurm"}
# words that start a documented command (after an `e.g.:` or on a README line)
COMMAND_START = re.compile(r"^(\./run\.sh|\$0|(\.\./)*(steps|local|egs|tools)/\S|python3? |tools/venv/bin/python |"
                           r"PYTHONPATH=|cmd_backend=|srun |cd |\. )")
SHELL_SPLIT = {"|", "||", "&&", ";", "(", ")", "&"}
SHELL_REDIRECT = {">", ">>", "<", "2>", "&>"}
PLACEHOLDERS = {"--key"}  # "--key value": the form of a config override, not an option


@dataclass
class Doc:
    """A documented command: where it is written and its text (backslash continuations joined)."""

    where: str
    text: str


# ------------------------------------------------------------------------------- extraction


def commands_after_eg(text: str, where: str) -> list[Doc]:
    """The `e.g.:` commands of a usage text: the rest of that line and the command lines below it."""
    out: list[Doc] = []
    lines = [re.sub(r"^\s*#+", "", line).strip() for line in text.splitlines()]
    for i, line in enumerate(lines):
        if "e.g.:" not in line:
            continue
        first = line.split("e.g.:", 1)[1].strip()
        block = [first] if first else []
        for nxt in lines[i + 1:]:
            if COMMAND_START.match(nxt) or (block and block[-1].endswith("\\")):
                block.append(nxt)
            elif not nxt.startswith("#"):  # a comment line under a command continues the block
                break
        out += [Doc(f"{where} (e.g.)", c) for c in join_continuations(block) if COMMAND_START.match(c)]
    return out


def join_continuations(lines: list[str]) -> list[str]:
    out: list[str] = []
    for line in lines:
        if out and out[-1].endswith("\\"):
            out[-1] = out[-1][:-1] + " " + line
        else:
            out.append(line)
    return out


def readme_commands(path: Path) -> list[Doc]:
    """Lines of ```bash blocks, and inline `code` that starts like a command."""
    text = path.read_text()
    name = path.relative_to(REPO)
    out = []
    fence, block, prose = None, [], []
    for line in text.splitlines():
        if line.startswith("```"):
            if fence is None:
                fence, block = line[3:].strip(), []
            else:
                if fence in ("bash", "sh", "shell"):
                    out += [Doc(str(name), c) for c in join_continuations(block)
                            if c.strip() and not c.lstrip().startswith("#")]
                fence = None
        elif fence is None:
            prose.append(line)
        else:
            block.append(line)
    for span in re.findall(r"(?<!`)`([^`\n]+)`(?!`)", "\n".join(prose)):
        if re.match(r"(python -m se\.bin\.[a-z]|steps/\w+\.sh |local/\w+\.(py|sh) |\./run\.sh )", span):
            out.append(Doc(f"{name} (inline)", span))
    return out


def python_usage_texts(path: Path) -> str:
    """The docstring, description and epilog strings of a Python tool (as --help prints them)."""
    tree = ast.parse(path.read_text())
    texts = [ast.get_docstring(tree) or ""]
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg in ("epilog", "description", "usage") \
                and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            texts.append(node.value.value)
    return "\n".join(texts)


def shell_help(script: Path) -> str:
    """`script --help` (its help_message with $0 expanded) and its leading comment block."""
    comments = []
    for line in script.read_text().splitlines()[1:]:
        if not line.startswith("#"):
            break
        comments.append(line)
    if "parse_options.sh" not in script.read_text():  # cmd.sh, db.sh: comments only
        return "\n".join(comments)
    env = {k: v for k, v in os.environ.items() if k not in ("DNS_ROOT", "VBD_ROOT")}
    res = subprocess.run(["bash", str(script), "--help"], capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 0, f"{script} --help: {res.stderr}"
    return res.stdout.replace(str(script), "$0") + "\n" + "\n".join(comments)


def usage_docs(path: Path) -> list[Doc]:
    rel = str(path.relative_to(REPO))
    if path.suffix == ".py":
        return commands_after_eg(python_usage_texts(path), rel) + [
            Doc(f"{rel} (docstring)", c) for c in
            join_continuations([line.strip() for line in (ast.get_docstring(ast.parse(path.read_text())) or "")
                                .splitlines()]) if c.startswith(("python -m se.bin.", "local/"))]
    if rel in RUNNERS:  # exec's se/jobs.py: its docstring is the help
        return commands_after_eg(python_usage_texts(REPO / "se" / "jobs.py"), rel)
    return commands_after_eg(shell_help(path), rel)


USAGE_FILES = sorted([*REPO.glob("steps/*.sh"), *REPO.glob("steps/lib/torchrun_node.sh"), *REPO.glob("local/*"),
                      *REPO.glob("egs/*/run.sh"), REPO / "cmd.sh",
                      *REPO.glob("se/bin/*.py")])
USAGE_FILES = [p for p in USAGE_FILES if p.name != "parse_options.sh" and p.name != "__init__.py"]
READMES = [REPO / "README.md", *sorted(REPO.glob("egs/*/README.md"))]


# ------------------------------------------------------------------------------- checking


def split_segments(text: str) -> list[list[str]]:
    """Shell words of each simple command (pipes, &&, ;, subshells and redirects split off)."""
    lex = shlex.shlex(text, posix=True, punctuation_chars="|&;()<>")
    lex.whitespace_split = True
    lex.commenters = "#"
    segments, cur, skip = [], [], False
    for tok in lex:
        if skip:
            skip = False
        elif tok in SHELL_SPLIT:
            segments.append(cur)
            cur = [tok] if tok in "()" else []  # a subshell's cd ends with it
            if cur:
                segments.append(cur)
                cur = []
        elif tok in SHELL_REDIRECT:
            skip = True
        else:
            cur.append(tok)
    segments.append(cur)
    return [s for s in segments if s]


def unbracket(words: list[str]) -> list[str]:
    """Optional parts of a synopsis ([--length 4]) become plain words; '...' is dropped."""
    out = []
    for w in words:
        if w in ("...", "[", "]"):
            continue
        if w.startswith("[") and not w.startswith("[["):
            w = w[1:]
        if w.endswith("]") and "[" not in w:
            w = w[:-1]
        out.append(w)
    return out


class _Captured(Exception):
    def __init__(self, parser):
        self.parser = parser


@functools.cache
def python_options(target: str) -> dict[str | None, frozenset[str]]:
    """The option strings of a Python tool's argparse parser: {None: top level, subcommand: its own}.

    The tool runs in this process (torch is imported once) until it parses its command line, where
    the parser is taken; its --help text is not used, as it may quote the very examples checked.
    """
    import argparse

    def capture(self, args=None, namespace=None):
        raise _Captured(self)

    argv = sys.argv
    sys.argv = [target, "--help"]
    try:
        with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            # runpy warns that the module is imported already (by an earlier test): expected here
            warnings.filterwarnings("ignore", "'se.bin.* found in sys.modules", RuntimeWarning)
            mp.setattr(argparse.ArgumentParser, "parse_known_args", capture)
            if target.endswith(".py"):
                runpy.run_path(str(REPO / target), run_name="__main__")
            else:
                runpy.run_module(target, run_name="__main__", alter_sys=False)
    except _Captured as c:
        parser = c.parser
    else:
        raise AssertionError(f"{target} parsed no command line")
    finally:
        sys.argv = argv
    out: dict[str | None, frozenset[str]] = {None: frozenset(parser._option_string_actions)}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            out.update({name: frozenset(sub._option_string_actions) for name, sub in action.choices.items()})
    return out


def check_train_overrides(words: list[str]) -> list[str]:
    """se.bin.train's config overrides: known keys, values of the right type."""
    from se import config

    words = [w for w in words if w not in ("...",)]
    try:
        config.load(None, config.parse_overrides(words))
    except config.ConfigError as e:
        return [f"se.bin.train: {e}"]
    return [f"{w}: config overrides are spelled with dashes" for w in words if w.startswith("--") and "_" in w]


def check_python_tool(target: str, args: list[str]) -> list[str]:
    if target == "se.bin.train":
        from se.bin.train import get_parser

        known, rest = get_parser().parse_known_args([*args, "--exp-dir", "x"] if "--exp-dir" not in args else args)
        rest = [w for i, w in enumerate(rest) if not (w.startswith("--") and w in PLACEHOLDERS)
                and not (i > 0 and rest[i - 1] in PLACEHOLDERS)]
        return check_train_overrides(rest)
    parsers = python_options(target)
    listed = parsers[None]
    if len(parsers) > 1:  # a tool with subcommands: the options of the one named
        sub = next((w for w in args if not w.startswith("-")), None)
        if sub not in parsers:
            return [f"{target}: no subcommand {sub!r} (one of {sorted(k for k in parsers if k)})"]
        listed = listed | parsers[sub]
    used = [w.split("=")[0] for w in args if w.startswith("--")]
    return [f"{target} has no option {o}" for o in used if o not in listed and o not in PLACEHOLDERS]


def check_shell_script(script: Path, args: list[str], cwd: Path) -> list[str]:
    """Run the documented options with --help first: parse_options checks them, prints the help, exits 0."""
    env = {k: v for k, v in os.environ.items() if k not in ("DNS_ROOT", "VBD_ROOT")}
    res = subprocess.run(["bash", str(script), "--help", *args], capture_output=True, text=True, env=env,
                         cwd=cwd, timeout=60)
    problems = []
    if res.returncode != 0 or "Options (with their defaults)" not in res.stdout:
        problems.append(f"{script.relative_to(REPO)}: {res.stderr.strip() or res.stdout.strip()[-300:]}")
    opts = []
    for i, w in enumerate(args):
        if w == "--" or (not w.startswith("-") and (i == 0 or not args[i - 1].startswith("--"))):
            break  # options come before the positional arguments
        if w.startswith("--"):
            opts.append(w.split("=")[0])
    problems += [f"{o}: options are spelled with dashes" for o in opts if "_" in o]
    if "--train-args" in args:  # the recipe passes these to se.bin.train
        problems += check_train_overrides(shlex.split(args[args.index("--train-args") + 1]))
    if script.name == "train.sh" and "--" in args:
        problems += check_train_overrides(args[args.index("--") + 1:])
    return problems


def check_runner(kind: str, args: list[str], cwd: Path) -> list[str]:
    from se import jobs

    try:
        request = jobs.parse_args(args)
        if kind == "slurm":
            opts = {k: v for k, v in request.options.items() if k not in ("config", "max_jobs_run", "num_nodes")}
            jobs.SlurmConfig.read(REPO / "conf" / "slurm.conf").sbatch_options(opts)
    except jobs.RunnerError as e:
        return [f"{RUNNERS_BY_KIND[kind]}: {e}"]
    for i, w in enumerate(args):  # the command follows LOGFILE
        if re.sub(r"\bJOB\b", "*", w) == request.log_pattern or w == request.log_pattern:
            return check_words(args[i + 1:], cwd)
    return [f"{RUNNERS_BY_KIND[kind]}: no LOGFILE in {args}"]


RUNNERS_BY_KIND = {v: k for k, v in RUNNERS.items()}


def resolve(word: str, cwd: Path) -> Path | None:
    """A script path as written in the docs (relative to where the command runs)."""
    for base in (cwd, REPO):
        p = (base / word).resolve()
        if p.is_file():
            return p
    return None


def check_words(words: list[str], cwd: Path, recipe: Path | None = None) -> list[str]:
    """Check one simple command; returns the problems found."""
    words = unbracket(words)
    while words and re.fullmatch(r"[A-Za-z_]\w*=\S*", words[0]):  # VAR=value command ...
        words = words[1:]
    if not words:
        return []
    prog, args = words[0], words[1:]
    if prog == "srun":  # srun [its options] program ...
        while args and args[0].startswith("-"):
            args = args[1:]
        return check_words(args, cwd, recipe)
    if prog in ("python", "python3", "tools/venv/bin/python", "torchrun"):
        while args and args[0].startswith("--") and prog == "torchrun":  # torchrun --standalone ...
            args = args[1:] if args[0] == "--standalone" else args[2:]
        if args[:1] == ["-m"] and len(args) > 1:
            if args[1].startswith("se."):
                if not (REPO / (args[1].replace(".", "/") + ".py")).is_file():
                    return [f"no module {args[1]}"]
                return check_python_tool(args[1], args[2:])
            return []  # pytest and other installed modules
        if args and args[0].endswith(".py"):
            prog, args = args[0], args[1:]
        else:
            return []
    if "<" in prog:
        return []  # a placeholder such as egs/<corpus>/run.sh
    if prog == "./run.sh" and recipe is None and cwd == REPO:  # no recipe named: every recipe takes it
        return [p for r in RECIPES for p in check_words(words, r, r)]
    if not re.match(r"^(\.{1,2}/|steps/|local/|egs/|tools/|tests/|/)", prog):
        return []  # a program that is not ours (cd, export, arecord, ...)
    path = resolve(prog, cwd)
    if path is None:
        return [f"{prog} not found (from {cwd.relative_to(REPO) if cwd.is_relative_to(REPO) else cwd})"]
    rel = str(path.relative_to(REPO))
    if rel in RUNNERS:
        return check_runner(RUNNERS[rel], args, cwd)
    if rel.startswith(("tools/", "tests/")):
        return []  # setup, benchmarks: their existence is what the docs claim
    if path.suffix == ".py":
        return check_python_tool(rel, args)
    if path.suffix == ".sh" and "parse_options.sh" in path.read_text():
        return check_shell_script(path, args, cwd if cwd.is_dir() else REPO)
    return []


def check_doc(doc: Doc, cwd: Path) -> tuple[list[str], Path]:
    """Problems of one documented command line; returns the directory it leaves the reader in."""
    problems, outer = [], []
    for words in split_segments(doc.text):
        if words in (["("], [")"]):
            if words == ["("]:
                outer.append(cwd)
            elif outer:
                cwd = outer.pop()
            continue
        if words[0] == "cd" and len(words) > 1:
            cwd = (cwd / words[1]).resolve()
            if not cwd.is_dir():
                problems.append(f"cd {words[1]}: no such directory")
                cwd = REPO
            continue
        if words[0] in (".", "source"):
            if len(words) > 1 and resolve(words[1], cwd) is None:
                problems.append(f"{words[1]} not found")
            continue
        problems += check_words(words, cwd)
    return problems, cwd


def script_of_usage(path: Path) -> tuple[Path, Path | None]:
    """Where a usage text's commands run, and what `$0` / ./run.sh mean there."""
    rel = path.relative_to(REPO)
    if rel.parts[0] == "egs":
        return path.parent, path
    return REPO, path


def check_usage_file(path: Path) -> tuple[int, list[str]]:
    cwd, script = script_of_usage(path)
    prog = "./run.sh" if cwd != REPO else str(script.relative_to(REPO))  # what $0 stands for
    docs = usage_docs(path)
    problems = []
    for doc in docs:
        found, _ = check_doc(Doc(doc.where, re.sub(r"(?<!\S)\$0(?!\S)", prog, doc.text)), cwd)
        problems += [f"{doc.where}: {doc.text}\n    -> {p}" for p in found]
    return len(docs), problems


# ------------------------------------------------------------------------------- tests


def test_usage_texts_have_working_examples():
    """Every usage text has an e.g. line, and every e.g. command is accepted."""
    problems, without = [], []
    for path in USAGE_FILES:
        count, found = check_usage_file(path)
        problems += found
        if count == 0:
            without.append(str(path.relative_to(REPO)))
    assert not problems, "\n".join(problems)
    assert not without, f"usage texts without an `e.g.:` command: {without}"


@pytest.mark.parametrize("readme", READMES, ids=lambda p: str(p.relative_to(REPO)))
def test_readme_commands_are_accepted(readme):
    docs = readme_commands(readme)
    assert len(docs) >= 3
    cwd, problems = REPO, []
    for doc in docs:
        found, cwd = check_doc(doc, cwd)
        problems += [f"{doc.where}: {doc.text}\n    -> {p}" for p in found]
    assert not problems, "\n".join(problems)


# Paths of our scripts and modules named anywhere in the docs, the usage texts and the messages.
PATH_MENTION = re.compile(r"(?<![\w./<-])((?:steps|local)/[\w/.*-]*[\w*]|se/[\w/]+\.py)")
MODULE_MENTION = re.compile(r"(?<![\w.])se\.([a-z_]+)(?:\.([a-z_]+))?")


def tracked_text_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True).stdout.split()
    if not out:  # not a git checkout: the files on disk
        out = [str(p.relative_to(REPO)) for p in REPO.rglob("*") if p.is_file() and "tools" not in p.parts]
    return [REPO / f for f in out if f.endswith((".py", ".sh", ".md")) and not f.startswith(("tools/", "tests/"))
            and (REPO / f).is_file()]


def test_named_scripts_and_modules_exist():
    """A script (steps/..., local/...) or module (se.x) named in a doc or message exists."""
    missing = []
    for path in tracked_text_files():
        text = path.read_text(errors="replace")
        for m in PATH_MENTION.finditer(text):
            name = m.group(1).rstrip(".")
            if "*" in name:
                continue  # a pattern such as local/download_*.sh
            if not (REPO / name).exists() and not (path.parent / name).exists():
                missing.append(f"{path.relative_to(REPO)}: {name}")
        for m in MODULE_MENTION.finditer(text if path.suffix in (".md", ".sh") else ""):  # .py: logger names
            pkg = REPO / "se" / m.group(1)
            if not (pkg.with_suffix(".py").is_file() or pkg.is_dir()):
                missing.append(f"{path.relative_to(REPO)}: se.{m.group(1)}")
            elif pkg.is_dir() and m.group(2) and not ((pkg / m.group(2)).with_suffix(".py").is_file()
                                                        or (pkg / m.group(2)).is_dir()):
                missing.append(f"{path.relative_to(REPO)}: se.{m.group(1)}.{m.group(2)}")
    assert not missing, "\n".join(missing)


def test_confs_name_no_machine_paths():
    """Training confs and conf/ name paths relative to their recipe, never a machine's absolute path."""
    found = []
    for conf in [*REPO.glob("egs/*/conf/*"), *REPO.glob("conf/*")]:
        for n, line in enumerate(conf.read_text().splitlines(), 1):
            value = line.split("#", 1)[0]
            if re.search(r"(^|[\s:'\"\[{=,])(/|~/|\$HOME)(?!\S*\$0)", value):
                found.append(f"{conf.relative_to(REPO)}:{n}: {line.strip()}")
    assert not found, "\n".join(found)


@pytest.mark.parametrize("text, message", [
    ("steps/train.sh --config c.yaml --valid-data v --exp-dir e -- --max-epochs 10", "max_epochs"),
    ("steps/run.sh JOB=1:4 x.JOB.log python -m se.bin.enhance --part JOB --nparts 4", "has no option --part"),
    ("steps/score.sh --nj four a b c", "takes an integer"),
    ("egs/mini/run.sh --stop_stage 3", "spelled with dashes"),
    ("egs/mini/run.sh --train-args '--batch-size eight'", "batch_size"),
    ("local/simulate_rirs.py --rate 16000", "has no option --rate"),
    ("steps/slurm.sh --gpus 1 x.log hostname", "gpus"),
    ("steps/no_such.sh --nj 1", "not found"),
])
def test_wrong_documented_commands_fail(text, message):
    """The checks above catch the kinds of mistakes that were documented before (and others)."""
    problems, _ = check_doc(Doc("test", text), REPO)
    assert any(message in p for p in problems), problems
