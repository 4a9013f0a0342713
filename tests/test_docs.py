"""The documentation is true as written: the site builds strict, and every shell block of README.md and docs/*.md
runs, or says why it does not (the conventions are docs/contributing.md's).

A runnable ``bash`` block runs with ``bash -euo pipefail`` in a fresh folder holding a copy of the repository's
files and a ``../shared`` link to the real shared data, with ``NAT_SHARED_DATA`` pointing there too. Blocks that
continue another (``# after: <heading>``) run after it in its folder.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from shared_data import require_shared_data

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.M | re.S)
HEADING = re.compile(r"^#{1,6} +(.+?) *$", re.M)
PLACEHOLDER = re.compile(r"<[A-Z][A-Z0-9_]*(?:\.[a-z]+)?>")
DIRECTIVE = re.compile(r"^# (needs|after|run by): *(.+)$")
# Set-up commands: the suite runs in its own environment, so they are recognised, not re-run.
SETUP = re.compile(r"^(python3 -m venv \S+|\. \S+/bin/activate|pip install .+)$")
SUITE = "python -m pytest"  # the tests' own command: what runs this file
# With NAT_DOCS_QUICK set, `nat demo` runs as `nat demo --quick` (the full demo takes many minutes).
QUICK_DEMO = ('nat() { if [ "${1-}" = demo ] && [ -n "${NAT_DOCS_QUICK-}" ]; then command nat "$@" --quick; '
              'else command nat "$@"; fi; }\n')
README_SETUP = [
    "python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && pip install -e . && nat demo",
    "python3 -m venv .venv && . .venv/bin/activate && pip install -q torch==2.13.0 && pip install -q -e '.[dev]' "
    "&& python -m pytest",
]


@dataclass(frozen=True)
class Block:
    page: str  # relative to the repository
    heading: str  # the heading the block stands under
    line: int  # where its fence opens
    text: str
    needs: str | None
    after: str | None
    run_by: str | None

    @property
    def kind(self) -> str:
        if self.needs:
            return "needs"
        if self.run_by:
            return "run by"
        if PLACEHOLDER.search(self.text):
            return "template"
        commands = [ln for ln in (without_setup(x) for x in self.text.splitlines()) if ln.strip() and not
                    ln.lstrip().startswith("#")]
        return "run" if commands else "set-up"

    @property
    def name(self) -> str:
        return f"{self.page}:{self.line} ({self.heading})"


def blocks(lang: str = "bash") -> list[Block]:
    """Every fenced block of ``lang`` in the README and the docs, in page order."""
    found = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for m in FENCE.finditer(text):
            if m.group(1) != lang:
                continue
            headings = HEADING.findall(_outside_fences(text[: m.start()]))
            directives = {}
            for line in m.group(2).splitlines():
                d = DIRECTIVE.match(line)
                if not d:
                    break
                directives[d.group(1)] = d.group(2).strip()
            found.append(Block(str(page.relative_to(ROOT)), headings[-1] if headings else page.stem,
                               text.count("\n", 0, m.start()) + 1, m.group(2), directives.get("needs"),
                               directives.get("after"), directives.get("run by")))
    return found


def _outside_fences(text: str) -> str:
    return FENCE.sub("", text)


def without_setup(line: str) -> str:
    """A line less its leading set-up commands (venv, activate, pip install); the suite's own command left out.

    >>> without_setup("python3 -m venv .venv && . .venv/bin/activate && pip install -e . && nat demo")
    'nat demo'
    >>> without_setup("pip install -q -e '.[dev]' && python -m pytest"), without_setup("nat build --out x")
    ('', 'nat build --out x')
    """
    parts = line.split(" && ")
    n = 0
    while n < len(parts) and SETUP.match(parts[n].strip()):
        n += 1
    if n == 0:
        return line
    rest = " && ".join(parts[n:])
    return "" if rest.strip() == SUITE else rest


def script(block: Block) -> str:
    """The block as the suite runs it: set-up commands recognised and left out, ``nat demo`` quick."""
    return QUICK_DEMO + "\n".join(without_setup(line) for line in block.text.splitlines()) + "\n"


def chains(problems: list[str] | None = None) -> list[list[Block]]:
    """Runnable blocks grouped into chains: a root block, then the blocks that continue it, in page order.

    A block whose ``# after:`` names no single runnable block is left out, and said so in ``problems``.
    """
    runnable = [b for b in blocks() if b.kind == "run"]
    by_heading: dict[str, list[Block]] = {}
    for b in runnable:
        by_heading.setdefault(b.heading, []).append(b)
    roots, children = [], {}
    for b in runnable:
        if b.after is None:
            roots.append(b)
        else:
            parents = by_heading.get(b.after, [])
            if len(parents) == 1:
                children.setdefault(parents[0], []).append(b)
            elif problems is not None:
                problems.append(f"{b.name}: '# after: {b.after}' names {len(parents)} runnable blocks, not 1")

    def walk(b: Block) -> list[Block]:
        return [b, *(c for child in children.get(b, []) for c in walk(child))]

    return [walk(r) for r in roots]


# ---------------------------------------------------------------------------------------------------- the rules


def test_readme_is_short_and_starts_with_the_two_setup_commands():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    first = blocks()[0]
    assert first.page == "README.md"
    assert [line for line in first.text.splitlines() if not line.startswith("#")] == README_SETUP
    assert "<!-- DEMO-TABLE -->" in text and "<!-- /DEMO-TABLE -->" in text


def test_every_block_is_runnable_or_says_why_not():
    seen = blocks()
    assert seen, "no bash block found"
    for page in {b.page for b in seen}:
        kinds = [b.kind for b in seen if b.page == page]
        for i, kind in enumerate(kinds):
            if kind == "template":  # a template follows a runnable example of its page
                assert {"run", "run by"} & set(kinds[:i]), f"{page}: a template block with no runnable example before it"
    for b in seen:
        if b.kind == "run":
            bash = subprocess.run(["bash", "-n"], input=script(b), text=True, capture_output=True)
            assert bash.returncode == 0, f"{b.name}: {bash.stderr}"


def test_every_after_names_one_runnable_block():
    problems: list[str] = []
    chains(problems)
    assert problems == []


def test_blocks_run_by_another_test_are_read_from_their_page_by_it():
    """``# run by: tests/FILE.py::TEST``: that test exists and reads its commands from this page."""
    for b in (b for b in blocks() if b.kind == "run by"):
        file, _, test = b.run_by.partition("::")
        source = (ROOT / file).read_text(encoding="utf-8")
        names = {n.name for n in ast.walk(ast.parse(source)) if isinstance(n, ast.FunctionDef)}
        assert test in names, f"{b.name}: {b.run_by} does not exist"
        assert b.page in source, f"{b.name}: {file} does not read {b.page}"


def test_chained_blocks_do_not_overwrite_each_others_outputs():
    for chain in chains():
        outs: dict[str, str] = {}
        for b in chain:
            for path in _outputs(b):
                assert path not in outs, f"{b.name} writes {path}, which {outs[path]} wrote"
                outs[path] = b.name


def _outputs(block: Block) -> set[str]:
    found = set()
    for line in block.text.replace("\\\n", " ").splitlines():
        if line.lstrip().startswith("#"):
            continue
        try:
            words = shlex.split(line)
        except ValueError:
            continue
        for flag, value in zip(words, words[1:]):
            if flag in ("--out", "--trainer.default_root_dir", "--stage-dir"):
                found.add(value)
    return found


def test_every_page_is_in_the_site_navigation():
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    for page in (ROOT / "docs").glob("*.md"):
        assert re.search(rf"\b{re.escape(page.name)}\b", config), f"docs/{page.name} is not in mkdocs.yml's nav"


def test_architecture_names_every_module_and_only_existing_ones():
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    package = ROOT / "lightning_nat"
    modules = {str(p.relative_to(package)) for p in package.rglob("*.py") if p.name != "__init__.py"}
    named = set(re.findall(r"\b((?:[a-z_]+/)*[a-z_0-9]+\.py)\b", text))
    named = {n for n in named if not n.startswith(("bench/", "launch/", "tests/", "examples/"))}
    assert modules - named == set(), "docs/architecture.md does not name these modules"
    assert named - modules == set(), \
        "docs/architecture.md names modules that do not exist"


def test_mkdocs_build_strict(tmp_path):
    if importlib.util.find_spec("mkdocs") is None:
        if os.environ.get("CI"):
            pytest.fail("mkdocs is not installed; the dev extra installs it (pip install -e '.[dev]')")
        pytest.skip("mkdocs is not installed (pip install -e '.[docs]')")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-f", str(ROOT / "mkdocs.yml"),
                           "-d", str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (tmp_path / "site" / "api" / "index.html").is_file()


# ------------------------------------------------------------------------------------------------- the running


def workspace(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A copy of the repository's files beside a ``shared`` link to the real shared data, and the blocks' env."""
    try:
        data = require_shared_data()
    except FileNotFoundError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(exc))
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    repo = tmp_path / "repo"
    for name in filter(None, listed):
        src = ROOT / name
        if src.is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, repo / name)
    (tmp_path / "shared").symlink_to(data.resolve().parent, target_is_directory=True)
    bindir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": os.pathsep.join([bindir, os.environ.get("PATH", "")]), "PYTHONPATH": str(repo),
           "NAT_SHARED_DATA": str(tmp_path / "shared" / data.name), "NAT_DOCS_QUICK": "1", "COLUMNS": "200",
           "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return repo, env


def _chain_id(chain: list[Block]) -> str:
    return chain[0].name


@pytest.mark.slow
@pytest.mark.parametrize("chain", chains(), ids=_chain_id)
def test_block_runs_as_written(chain, tmp_path):
    repo, env = workspace(tmp_path)
    for b in chain:
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", script(b)], cwd=repo, env=env, capture_output=True,
                              text=True, timeout=900)
        assert done.returncode == 0, (f"{b.name} failed (exit {done.returncode}):\n{b.text}\n--- output ---\n"
                                      f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}")


# ------------------------------------------------------------------- what a newcomer hit (issue 32, item 5)


def test_the_deepspeed_extra_holds_what_transformers_deepspeed_integration_requires():
    """`pip install -e '.[deepspeed]'` then `python bench/zero3_check.py` stopped on a missing accelerate."""
    import configparser

    from packaging.requirements import Requirement
    from packaging.version import Version
    from transformers.dependency_versions_table import deps

    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    needed = Requirement(deps["accelerate"])  # what transformers checks when DeepSpeed is used
    floor = max(Version(s.version) for s in needed.specifier if s.operator == ">=")
    for extra in ("deepspeed", "dev"):
        reqs = [Requirement(line.split(";")[0]) for line in cfg["options.extras_require"][extra].split("\n") if line]
        ours = next((r for r in reqs if r.name == "accelerate"), None)
        assert ours is not None, f"the {extra} extra lacks accelerate"
        assert min(Version(s.version) for s in ours.specifier if s.operator == ">=") >= floor, (extra, str(ours))


def _nat(args: list[str], cwd: Path, pythonpath: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [pythonpath, str(ROOT)])), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "lightning_nat.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_corpus_without_the_search_extra_says_how_to_install_it_from_a_clone(tmp_path):
    (tmp_path / "block").mkdir()
    (tmp_path / "block" / "bm25s.py").write_text("raise ImportError('bm25s is not installed here')\n")
    (tmp_path / "notes.txt").write_text("One passage of text.\n")
    done = _nat(["corpus", "notes.txt", "--out", "c"], tmp_path, pythonpath=str(tmp_path / "block"))
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "pip install -e '.[search]'" in done.stderr and not (tmp_path / "c").exists()


def test_the_same_corpus_command_twice_replaces_its_own_output(tmp_path):
    pytest.importorskip("bm25s")
    (tmp_path / "notes.txt").write_text("One passage of text.\n\nAnother passage.\n")
    for _ in range(2):
        done = _nat(["corpus", "notes.txt", "--out", "c"], tmp_path)
        assert done.returncode == 0, done.stderr
    assert (tmp_path / "c" / "passages.jsonl").read_text().count("\n") == 2
