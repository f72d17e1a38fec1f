"""The package's structure: no import cycle, no module over 500 lines nor function over 80, no swallowed
ImportError, a cheap `genrefusion --help`, one home for the thesis's numbers and for the config's choices, and
explain.py using only the encoders' public interface. Read from the source with `ast`, so a violation fails here
with the module named."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

PACKAGE = REPO / "src" / "genrefusion"
MAX_LINES = 500
MAX_FUNCTION_LINES = 80


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (a package is its __init__.py)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(name: str, path: Path) -> set[str]:
    """Package modules that `name` imports anywhere in its file (imports inside functions count: a lazy import
    still ties the two modules together), except under `if TYPE_CHECKING:`."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and _is_type_checking(node)
            for stmt in node.body for n in ast.walk(stmt)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            # `from X import y`: the submodule X.y when there is one, else X itself
            targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in MODULES else source for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in MODULES:  # `import genrefusion.fusion.gmu` -> that module; stdlib etc. -> nothing
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each as a sorted list."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


# The layers, lowest first: a module imports only modules of its own layer or of a lower one. The top-level modules
# (atomic, config, ...) are the lowest layer; the package root re-exports the public API and so sits above them all.
LAYERS = ("", "data", "encoders", "features", "fusion", "inference", "evaluation", "training", "serving", "cli")
FACADE = {"genrefusion", "genrefusion.__main__"}


def layer_of(module: str) -> int:
    """The layer of a dotted module name: its subpackage's position in LAYERS (a top-level module is layer 0)."""
    parts = module.split(".")
    if module in FACADE:
        return len(LAYERS)
    if len(parts) == 2 and parts[1] not in LAYERS:
        return 0  # a top-level module
    if parts[1] not in LAYERS:
        raise AssertionError(f"{module}: subpackage {parts[1]!r} is in no layer; add it to LAYERS")
    return LAYERS.index(parts[1])


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{a} -> {b}" for a, deps in graph.items() for b in deps if layer_of(b) > layer_of(a))


def test_the_layer_check_finds_an_upward_import():
    assert upward_imports({"genrefusion.data.loader": {"genrefusion.training.grid"}}) == \
        ["genrefusion.data.loader -> genrefusion.training.grid"]
    assert upward_imports({"genrefusion.cli.commands": {"genrefusion.data.loader", "genrefusion.atomic"}}) == []


def test_no_layer_imports_a_higher_one():
    graph = {name: _imports(name, path) for name, path in MODULES.items()}
    assert not upward_imports(graph), "upward imports: " + "; ".join(upward_imports(graph))
    # the root docstring draws the same layers in the same order
    import genrefusion

    drawn = [line.split()[0] for line in genrefusion.__doc__.splitlines() if line.startswith("    ")]
    assert drawn[1:] == list(LAYERS[1:]), drawn


def test_the_layout_stays_small():
    """At most 10 modules at the top of the package and 16 in any subpackage, so the layout shows the layers."""
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 10, f"{len(top)} modules at the top of the package: {top}"
    for folder in sorted({p.parent for p in PACKAGE.rglob("*.py")}):
        n = len(list(folder.glob("*.py")))
        assert n <= 16, f"{folder.relative_to(REPO)} has {n} modules (at most 16)"


def test_every_subpackage_says_what_it_does_and_exports_a_surface():
    import importlib

    for folder in sorted(p.parent for p in PACKAGE.rglob("__init__.py")):
        name = ".".join(folder.relative_to(PACKAGE.parent).parts)
        module = importlib.import_module(name)
        assert (module.__doc__ or "").strip(), f"{name} has no docstring"
        if folder.parent == PACKAGE and folder.name in LAYERS:
            assert module.__all__, f"{name} exports nothing"
            for attr in module.__all__:
                assert getattr(module, attr) is not None, f"{name}.{attr}"


def test_the_cycle_check_finds_a_cycle():
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_inside_the_package():
    graph = {name: _imports(name, path) for name, path in MODULES.items()}
    cycles = import_cycles(graph)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)
    # the graph is read at all: lazy and relative imports are edges
    assert {"genrefusion.training.experiment", "genrefusion.evaluation.report"} <= graph["genrefusion.training.grid"]
    assert "genrefusion.fusion.gmu" in graph["genrefusion.fusion"]


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_over_500_lines(name):
    n = len(MODULES[name].read_text(encoding="utf-8").splitlines())
    assert n <= MAX_LINES, f"{MODULES[name].relative_to(REPO)} has {n} lines (at most {MAX_LINES}); split it by job"


def long_functions(tree: ast.AST, limit: int = MAX_FUNCTION_LINES) -> list[tuple[str, int, int]]:
    """(name, first line, length) of every function or method in `tree` longer than `limit` lines, decorators
    left out, nested functions counted inside their parent too."""
    return [(n.name, n.lineno, n.end_lineno - n.lineno + 1) for n in ast.walk(tree)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > limit]


def test_the_length_check_finds_a_long_function():
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    assert long_functions(ast.parse(f"def short():\n    pass\n\ndef long():\n{body}\n")) == \
        [("long", 4, MAX_FUNCTION_LINES + 1)]


def test_no_function_over_80_lines():
    """A function does one job that a reader can hold at once; a longer one is split by job."""
    found = [f"{path.relative_to(REPO)}:{line} {fn} ({n} lines)" for name, path in MODULES.items()
             for fn, line, n in long_functions(ast.parse(path.read_text(encoding="utf-8")))]
    assert not found, f"functions over {MAX_FUNCTION_LINES} lines: {found}"


def unexplained_local_imports(source: str) -> list[int]:
    """Lines of the package-internal imports made inside a function with no comment on the line, or on the line
    just above, saying why (a file's header should say what it depends on)."""
    lines = source.splitlines()
    found = []
    for fn in ast.walk(ast.parse(source)):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for n in ast.walk(fn):
            internal = isinstance(n, ast.ImportFrom) and (n.level or (n.module or "").startswith("genrefusion"))
            if internal and "#" not in lines[n.lineno - 1] and not lines[n.lineno - 2].strip().startswith("#"):
                found.append(n.lineno)
    return sorted(set(found))


def test_the_import_check_finds_an_unexplained_local_import():
    src = "def f():\n    from .a import b\n    from .c import d  # lazy: c imports torch\n    import json\n"
    assert unexplained_local_imports(src) == [2]


def test_internal_imports_are_at_the_top_unless_a_comment_says_why():
    found = [f"{path.relative_to(REPO)}:{line}" for path in MODULES.values()
             for line in unexplained_local_imports(path.read_text(encoding="utf-8"))]
    assert not found, f"imports inside functions with no comment saying why: {found}"


def test_no_import_error_is_swallowed():
    """An optional dependency that is missing must be an error that says so, never a silently skipped feature."""
    silent = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ExceptHandler) and node.type is not None:
                caught = {n.id for n in ast.walk(node.type) if isinstance(n, ast.Name)}
                if caught & {"ImportError", "ModuleNotFoundError"} and \
                        not any(isinstance(n, ast.Raise) for n in ast.walk(node)):
                    silent.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not silent, f"ImportError caught and not re-raised at {silent}"


def test_help_imports_no_heavy_library():
    """`genrefusion --help` (and building the parser every command starts with) stays fast: no torch, scikit-learn,
    matplotlib or transformers at parse time, nor the optional trackers; each command imports what it needs when it
    runs."""
    code = ("import sys\nfrom genrefusion.cli.commands import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'sklearn', 'matplotlib', "
            "'transformers', 'safetensors', 'captum', 'mlflow', 'tensorboardX'})\n"
            "print('HEAVY', heavy, file=sys.stderr)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"})
    assert "usage: genrefusion" in res.stdout, res.stderr[-2000:]
    assert "HEAVY []" in res.stderr, res.stderr[-2000:]


def test_the_thesis_numbers_live_in_thesis_py():
    from genrefusion.evaluation import thesis

    published = {v for table in (thesis.THESIS_TABLE6, thesis.THESIS_TABLE7) for row in table.values() for v in row}
    published |= {v for key in ("unimodal", "fusion") for v in thesis.THESIS_TABLE8[key]}
    published |= set(thesis.THESIS_SPLIT.values())
    elsewhere = [f"{path.relative_to(REPO)}:{node.lineno} ({node.value})" for name, path in MODULES.items()
                 if name != "genrefusion.evaluation.thesis" for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                 if isinstance(node, ast.Constant) and type(node.value) in (int, float) and node.value in published
                 and not (isinstance(node.value, int) and node.value < 10000)]
    assert not elsewhere, f"thesis numbers outside thesis.py: {elsewhere}"


def test_cli_choices_are_the_config_choices():
    """One table of choices (config.CHOICES) serves Config.validate() and every CLI option named like a config key."""
    import argparse

    from genrefusion.cli.commands import build_parser
    from genrefusion.config import CHOICES, Config

    seen = set()
    parsers = [build_parser()]
    while parsers:
        parser = parsers.pop()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers.extend(action.choices.values())
            elif action.choices is not None and action.dest in CHOICES:
                assert tuple(action.choices) == CHOICES[action.dest], (parser.prog, action.dest)
                seen.add(action.dest)
    assert {"split", "modalities", "plot_mode", "pooling", "precision"} <= seen
    for key, allowed in CHOICES.items():
        for value in allowed:
            Config(**{key: value}).validate()
        with pytest.raises(ValueError, match=f"config {key}="):
            Config(**{key: "not-a-choice"}).validate()


def test_explain_uses_only_public_encoder_attributes():
    """explain.py reads encoders (and models) through their public interface: no `obj._private` outside `self`."""
    path = PACKAGE / "inference" / "explain.py"
    private = [f"line {n.lineno}: .{n.attr}" for n in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
               if isinstance(n, ast.Attribute) and n.attr.startswith("_") and not n.attr.startswith("__")
               and not (isinstance(n.value, ast.Name) and n.value.id == "self")]
    assert not private, f"explain.py reads private attributes: {private}"


def test_one_cache_root(tmp_path, monkeypatch):
    """The feature cache and the offline model folders share paths.cache_root(); nothing else reads the variable."""
    from genrefusion.encoders import offline_weights
    from genrefusion.paths import CACHE_ENV, cache_root

    readers = [str(path.relative_to(REPO)) for path in MODULES.values()
               if any(isinstance(n, ast.Constant) and n.value == CACHE_ENV
                      for n in ast.walk(ast.parse(path.read_text(encoding="utf-8"))))]
    assert readers == ["src/genrefusion/paths.py"]
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv(CACHE_ENV, "~/cache")
    assert cache_root() == tmp_path / "cache"  # `~` expanded, for the features as for the models
    calls = []

    def build(work):
        calls.append(work)
        (work / "out").mkdir()
        return work / "out"

    assert offline_weights.build_once("thing", build) == tmp_path / "cache" / "models" / "thing" and len(calls) == 1
    # a root given (a FeatureSpec's cache root) is honoured
    assert offline_weights.build_once("thing", build, tmp_path / "other") == tmp_path / "other" / "models" / "thing"


def _reachable(graph: dict[str, set[str]], start: set[str]) -> set[str]:
    seen, todo = set(), list(start)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(graph.get(name, ()))
    return seen


def test_inference_imports_nothing_from_training():
    """The Predictor, its input checks and the service reach no training code, not even lazily: a head's batch is
    built by batching.py for both."""
    graph = {name: _imports(name, path) for name, path in MODULES.items()}
    serving = {n for n in MODULES if n == "genrefusion.serving" or n.startswith("genrefusion.serving.")}
    reached = _reachable(graph, {"genrefusion.inference.predictor", "genrefusion.inference.inputs", *serving})
    training = {"genrefusion.training.train", "genrefusion.training.experiment", "genrefusion.training.grid", "genrefusion.training.endtoend",
                "genrefusion.features.cache"}
    assert {"genrefusion.fusion.batching", "genrefusion.inference.checkpoint", "genrefusion.inference.predictor"} <= reached  # read at all
    assert not reached & training, f"inference reaches training code: {sorted(reached & training)}"


def test_only_runs_py_names_run_folder_files():
    """runs.py is the one module that knows a run or grid folder's file names (and so the one that writes and reads
    them); docstrings may mention them."""
    from genrefusion.evaluation import runs

    names = {runs.CONFIG_FILE, runs.METRICS_FILE, runs.GRID_FILE, runs.TABLES_FILE, runs.SUMMARY_FILE,
             *(runs.predictions_file(s) for s in runs.PREDICTION_SPLITS)}
    found = []
    for name, path in MODULES.items():
        if name == "genrefusion.evaluation.runs":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)}
        found += [f"{path.relative_to(REPO)}:{n.lineno} {n.value!r}" for n in ast.walk(tree)
                  if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings
                  and (n.value in names or "_predictions.safetensors" in n.value)]
    assert not found, f"run-folder file names outside runs.py: {found}"


def test_the_feature_cache_special_cases_no_encoder():
    """features.py caches an encoder joined from parts by the general rule (Encoder.feature_parts), and its tables
    carry what producing them took as fields: no encoder class named, no attribute patched onto an object."""
    import dataclasses

    from genrefusion.features.cache import FeatureTable

    tree = ast.parse((PACKAGE / "features" / "cache.py").read_text(encoding="utf-8"))
    named = sorted({n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id.endswith("Encoder")}
                   | {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names
                      if a.name.endswith("Encoder")})
    assert not named, f"features.py names encoder classes: {named}"
    fields = {f.name for f in dataclasses.fields(FeatureTable)}
    stores = [t for n in ast.walk(tree) if isinstance(n, (ast.Assign, ast.AugAssign, ast.AnnAssign))
              for target in (n.targets if isinstance(n, ast.Assign) else [n.target])
              for t in (target.elts if isinstance(target, ast.Tuple) else [target])]
    patched = [f"line {t.lineno}: .{t.attr}" for t in stores if isinstance(t, ast.Attribute)
               and not (isinstance(t.value, ast.Name) and t.value.id == "self") and t.attr not in fields]
    patched += [f"line {n.lineno}: setattr" for n in ast.walk(tree)
                if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "setattr"]
    assert not patched, f"features.py sets attributes that are no FeatureTable field: {patched}"


def test_the_modality_table_names_real_fields():
    """modalities.py is the one table of the modalities: each entry names a Movie field, its cache key, config keys
    that exist, and the fusion registry reads the same modalities."""
    import dataclasses

    from genrefusion.config import Config
    from genrefusion.fusion.base import MODALITIES as FUSION_MODALITIES
    from genrefusion.data.modalities import MODALITIES, SPECS, spec
    from genrefusion.data.records import Movie

    movie = Movie("m1", "A plot.", ("Drama",), None, None)
    config_keys = {f.name for f in dataclasses.fields(Config)}
    assert tuple(SPECS) == MODALITIES == FUSION_MODALITIES
    for s in SPECS.values():
        assert hasattr(movie, s.field) and hasattr(movie, s.key_field), s.name
        assert {s.encoder_config, *s.encoder_options} <= config_keys, s.name
    assert spec("text").present(movie) and not spec("image").present(movie) and spec("image").key(movie) is None
    assert spec("text").key(movie) == movie.text_key and spec("text").load_raw(movie) == "A plot."
    with pytest.raises(ValueError, match="unknown modality 'audio'"):
        spec("audio")
