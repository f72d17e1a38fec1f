"""The README is a short front door and docs/ a site that builds: the README's length and first lines, its commands
table against the real command line, its Python quickstart run as written, every relative link and anchor of the
README, the CHANGELOG and the docs pages, the pages against mkdocs.yml's nav, and `mkdocs build --strict`."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
MAX_README_LINES = 250


def pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def markdown_files() -> list[Path]:
    return [README, REPO / "CHANGELOG.md", *pages()]


# --- reading Markdown ----------------------------------------------------------------------------------------------
FENCE = re.compile(r"^(```|~~~)")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def prose_lines(text: str) -> list[str]:
    """The lines of a Markdown text outside code: fenced blocks and 4-space indented blocks are dropped, inline code
    spans blanked (a link or heading-like line inside code is not one)."""
    out, fenced, previous_blank = [], False, True
    for line in text.splitlines():
        if FENCE.match(line.lstrip()):
            fenced = not fenced
            out.append("")
            continue
        indented_code = previous_blank and (line.startswith("    ") or line.startswith("\t"))
        if fenced or indented_code:
            out.append("")
            # an indented block goes on while its lines stay indented (or blank)
            previous_blank = indented_code or previous_blank and not line.strip()
            continue
        previous_blank = not line.strip()
        out.append(re.sub(r"`[^`]*`", "``", line))
    return out


def links(path: Path) -> list[str]:
    return [m.group(1) for line in prose_lines(path.read_text(encoding="utf-8")) for m in LINK.finditer(line)]


def slugify(heading: str) -> str:
    """The anchor Python-Markdown's toc extension (what MkDocs uses) gives a heading: its text without markup,
    ASCII-folded, lower-cased, punctuation dropped, spaces and hyphens joined into one hyphen."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = text.replace("`", "").replace("**", "").replace("*", "")
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


SNIPPET = re.compile(r'^--8<-- "([^"]+)"\s*$', re.MULTILINE)


def anchors(path: Path) -> set[str]:
    """Every heading's anchor in a page (a repeated heading gets _1, _2, ... as in the toc extension); a page that
    includes a file (`--8<-- "CHANGELOG.md"`, pymdownx.snippets, paths from the repository root) has its headings."""
    text = SNIPPET.sub(lambda m: (REPO / m.group(1)).read_text(encoding="utf-8"), path.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    found = set()
    lines = prose_lines(text)
    for raw, line in zip(text.splitlines(), lines):
        m = HEADING.match(raw) if line else None
        if not m:
            continue
        slug = slugify(m.group(2))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        found.add(slug if n == 0 else f"{slug}_{n}")
    return found


def test_slugify_matches_the_toc_extension():
    from markdown import Markdown

    headings = ["What `make demo` does", "Training side by side (`fold_workers`)", "2. Download MM-IMDb",
                "Distillation: a light model that keeps a heavy model's quality", "Thresholds: validation or out-of-fold"]
    md = Markdown(extensions=["toc"])
    md.convert("\n\n".join(f"## {h}" for h in headings))
    assert [t["id"] for t in md.toc_tokens] == [slugify(h) for h in headings]


def test_prose_lines_skip_code():
    text = "a [x](one.md)\n\n```\n[y](two.md)\n```\n\n    [z](three.md)\n\nb `[w](four.md)` [v](five.md)\n"
    found = [m.group(1) for line in prose_lines(text) for m in LINK.finditer(line)]
    assert found == ["one.md", "five.md"]


# --- (a) the README is a front door ------------------------------------------------------------------------------
def test_readme_is_short():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines; at most {MAX_README_LINES} (move the rest to docs/)"


def test_readme_opens_with_the_two_commands():
    first = README.read_text(encoding="utf-8").splitlines()[:5]
    assert any(line.strip().startswith("make demo") for line in first), first
    assert any(line.strip().startswith("make test") for line in first), first


def test_the_two_commands_do_what_the_readme_says():
    """`make demo` runs `genrefusion demo`, `make test` the whole suite, as the README's first lines say."""
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")

    def recipe(target: str) -> str:
        m = re.search(rf"^{target}:.*\n((?:\t.*\n?)+)", makefile, re.MULTILINE)
        assert m, f"no `{target}` target in the Makefile"
        return m.group(1)

    assert "-m genrefusion demo" in recipe("demo")
    assert re.search(r"-m pytest(?: -q)?\s*$", recipe("test")), recipe("test")  # the whole suite: no path, no -k
    head = "\n".join(README.read_text(encoding="utf-8").splitlines()[:2])
    assert "thesis grid, then the recommended preset" in head and "whole test suite" in head


def test_readme_lists_every_subcommand():
    """The 'commands at a glance' table names exactly the subcommands `genrefusion --help` lists."""
    from genrefusion.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    listed = re.findall(r"^\| `genrefusion ([a-z-]+)`", README.read_text(encoding="utf-8"), re.MULTILINE)
    assert sorted(listed) == sorted(sub.choices), (sorted(listed), sorted(sub.choices))


# --- (b) links and anchors resolve ---------------------------------------------------------------------------------
def link_problems(path: Path, root: Path = REPO, docs: Path = DOCS) -> list[str]:
    """What is wrong with the relative links of one Markdown file: a missing file, a missing anchor, and for a docs
    page a link out of docs/ (MkDocs resolves links between its pages only)."""
    problems = []
    for target in links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path.resolve()
        if not dest.exists():
            problems.append(f"{path.relative_to(root)}: {target} -> no such file")
            continue
        if path.is_relative_to(docs) and not dest.is_relative_to(docs):
            problems.append(f"{path.relative_to(root)}: {target} leaves docs/ (MkDocs cannot resolve it)")
        if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{path.relative_to(root)}: {target} -> no heading with anchor #{anchor}")
    return problems


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(path):
    assert link_problems(path) == []


def test_the_link_check_finds_broken_links(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "other.md").write_text("# Other\n\n## A section\n")
    (tmp_path / "outside.md").write_text("# Outside\n")
    page = docs / "page.md"
    page.write_text("[ok](other.md#a-section) [gone](missing.md) [bad](other.md#nope) [self](#page) "
                    "[out](../outside.md) [web](https://example.org/x.md)\n\n# Page\n")
    assert link_problems(page, tmp_path, docs) == [
        "docs/page.md: missing.md -> no such file",
        "docs/page.md: other.md#nope -> no heading with anchor #nope",
        "docs/page.md: ../outside.md leaves docs/ (MkDocs cannot resolve it)"]


def test_the_changelog_has_no_relative_links():
    """docs/changelog.md includes CHANGELOG.md whole, so a link relative to the repository root would break there."""
    assert [t for t in links(REPO / "CHANGELOG.md") if not re.match(r"^[a-z]+:", t)] == []


def test_the_readme_links_into_docs():
    targets = {t.partition("#")[0] for t in links(README)}
    assert {"docs/getting-started.md", "docs/benchmarks.md", "docs/architecture.md", "CHANGELOG.md"} <= targets


# --- the code they name exists ------------------------------------------------------------------------------------
def code_spans(path: Path) -> list[str]:
    return re.findall(r"`([^`\n]+)`", path.read_text(encoding="utf-8"))


def named_files(path: Path) -> set[str]:
    """The repository files a page names in code spans: paths and bare names of .py/.sh files, and src/ paths."""
    out = set()
    for span in code_spans(path):
        for token in re.findall(r"[\w./-]+", span):
            if re.search(r"\.(py|sh)$", token) or token.startswith("src/"):
                out.add(token)
    return out


EXTERNAL_FILES = {"make_dataset.py"}  # Arevalo et al.'s script, named where the stratified split is explained


def missing_files(names: set[str]) -> list[str]:
    missing = []
    for name in sorted(names - EXTERNAL_FILES):
        if "/" in name:
            roots = (REPO, REPO / "src", REPO / "src" / "genrefusion")
            if not any((root / name).exists() for root in roots):
                missing.append(name)
        elif not any(next((REPO / top).rglob(name), None) for top in ("src", "benchmarks", "tests")):
            missing.append(name)
    return missing


def resolves(dotted: str) -> bool:
    """Whether `genrefusion.a.b.c` is a module, or an attribute reached from the longest importable module prefix."""
    import importlib

    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False
        return True
    return False


# The CHANGELOG names the old module paths on purpose; everything else names what is there now.
CURRENT = [README, *pages()]


@pytest.mark.parametrize("path", CURRENT, ids=lambda p: str(p.relative_to(REPO)))
def test_named_files_exist(path):
    assert missing_files(named_files(path)) == []


@pytest.mark.parametrize("path", CURRENT, ids=lambda p: str(p.relative_to(REPO)))
def test_named_modules_exist(path):
    dotted = {m for span in code_spans(path) for m in re.findall(r"^(genrefusion(?:\.\w+)+)", span)}
    assert [d for d in sorted(dotted) if not resolves(d)] == []


def test_the_name_checks_find_stale_names():
    assert missing_files({"src/genrefusion/precision.py", "feature_backends.py", "benchmarks/cpu.py"}) == [
        "feature_backends.py", "src/genrefusion/precision.py"]
    assert not resolves("genrefusion.runs") and not resolves("genrefusion.inference.modelcard.no_such")
    assert resolves("genrefusion.evaluation.runs") and resolves("genrefusion.inference.modelcard.model_card")


# --- (c) the pages -------------------------------------------------------------------------------------------------
def nav_files(nav) -> list[str]:
    out = []
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        out += nav_files(value) if isinstance(value, list) else [value]
    return out


def test_docs_has_the_pages_and_the_nav_lists_them():
    found = sorted(str(p.relative_to(DOCS)) for p in pages())
    assert len(found) >= 5, found
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text(encoding="utf-8"))
    assert sorted(nav_files(config["nav"])) == found
    for page in ("getting-started.md", "data.md", "presets.md", "serving.md", "cpu.md", "gpu.md", "languages.md",
                 "distillation-export.md", "architecture.md", "benchmarks.md"):
        assert page in found, page


def test_mkdocs_build_strict(tmp_path):
    """The site builds with no warning (a broken link or anchor, a page outside the nav) as CI builds it."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "site" / "benchmarks" / "index.html").exists()


# --- (d) the quickstart runs as written ------------------------------------------------------------------------------
def quickstart() -> str:
    text = README.read_text(encoding="utf-8")
    m = re.search(r"^## Quickstart in Python\n(.*?)^```python\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    assert m, "README.md: no ```python block under '## Quickstart in Python'"
    return m.group(2)


def test_the_quickstart_is_about_ten_lines():
    code = [line for line in quickstart().splitlines() if line.strip()]
    assert len(code) <= 15, len(code)


def test_readme_quickstart_runs(tmp_path, monkeypatch, capsys, synthetic_catalog, tiny_bert, tiny_vit):
    """The README's Python block, executed as written with three explicit substitutions, so that it runs in seconds
    and offline: the sample's path -> a synthetic catalog of 90 movies (tests/conftest.py), and the two offline
    encoders -> the tiny random BERT and ViT the other tests build (tests/tiny_models.py). Everything else, the
    imports, the preset, the calls and the attributes it reads, is the README's. The feature cache goes to a
    temporary folder, and the relative `runs/quickstart` lands in the test's own working directory."""
    code = quickstart()
    for old, new in (('"../shared/data/mmimdb-sample"', repr(str(synthetic_catalog))),
                     ('"minilm-l6"', repr(str(tiny_bert))), ('"efficientnet-lite0"', repr(str(tiny_vit)))):
        assert code.count(old) == 1, f"the quickstart no longer names {old} once; update this test's substitution"
        code = code.replace(old, new)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GENREFUSION_CACHE", str(tmp_path / "cache"))
    exec(compile(code, "README.md (quickstart)", "exec"), {"__name__": "__quickstart__"})
    out = capsys.readouterr().out
    assert re.search(r"^test macro-F1: [0-9.]+$", out, re.MULTILINE), out[-2000:]
    assert "| labelled:" in out
    assert (tmp_path / "runs" / "quickstart" / "model" / "model.json").exists()
    assert (tmp_path / "runs" / "quickstart" / "metrics.json").exists()


def test_the_code_points_at_docs_not_at_readme_sections():
    """Help texts and docstrings name docs/ pages: the README no longer has the sections they used to cite."""
    stale = []
    for path in sorted((REPO / "src").rglob("*.py")):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if re.search(r"\bthe README\b(?!\.md)|README's|README '|README \(|see README", line):
                stale.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert stale == []
