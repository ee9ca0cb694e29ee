"""The package's floors import one way, bottom to top (docs/design.md, "Layout"): config (schema,
loading; no models, no data, no torch) -> models -> data (corpora, tokenizers, tokens, batches)
-> lit -> runs -> fitting -> results -> stage modules (entry points, side by side) -> api.
Imports sit at the top of a module: none inside a function, except the allowlisted ones below
and third-party packages that are heavy or optional (torch in io, encodec, transformers, ...).

The imports are read from every module's syntax tree, at module level and inside functions
(``import``, ``from ... import``, ``__import__("...")`` and ``importlib.import_module("...")``
with a literal name), so a failure names each offending ``module:line`` and what it imports.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT

PKG = ROOT / "zipper_pl"
# third-party packages the config layer must not import (each pulls in torch or worse)
HEAVY = ("torch", "torchaudio", "lightning", "transformers", "encodec")
# modules below every layer: the config layer may use them, and so may everything above it
BASE = ("zipper_pl.errors", "zipper_pl.io")
# what models may import from the package besides themselves: the layer below them and helpers
# that read no data and train nothing
MODELS_MAY_USE = ("zipper_pl.config", *BASE, "zipper_pl.metrics", "zipper_pl.hub")
# the stage modules: the entry points the command line dispatches to (``__main__.STAGES``); each
# checks the machine, then calls the floors below it (fitting, results, runs, data.prepare),
# never another stage module
STAGE_MODULES = ("zipper_pl.stages.chain", "zipper_pl.stages.evaluate", "zipper_pl.stages.ablation")
# the only places that import inside a function (or through importlib), (file, function): why
LAZY_IMPORTS = {
    ("zipper_pl/__init__.py", "__getattr__"): "zipper_pl.load, the documented API, imports "
    "torch and the models on first use, so `import zipper_pl` (the command line's first step) "
    "stays light",
    ("zipper_pl/__main__.py", "_entry"): "the command line's lazy entry points ('module:attribute' "
    "in __main__.STAGES and next to it): --help, keys, runs and paths start without torch, the "
    "models or the stage modules",
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(under: str = "") -> list[Path]:
    """Every module of the package whose dotted name is ``under`` or starts with ``under.``."""
    return sorted(
        p
        for p in PKG.rglob("*.py")
        if not under or module_name(p) == under or module_name(p).startswith(under + ".")
    )


def imported(path: Path) -> Iterator[tuple[int, str]]:
    """(line, dotted module name) of every import in the file, wherever it is."""
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            mod = ".".join([*base, *([node.module] if node.module else [])])
            yield node.lineno, mod
            for alias in node.names:  # `from zipper_pl import stages` imports a module too
                yield node.lineno, f"{mod}.{alias.name}"
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "id", getattr(node.func, "attr", None))
            in ("__import__", "import_module")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            yield node.lineno, node.args[0].value


def within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def offences(paths: list[Path], bad) -> list[str]:
    """``module:line imports name`` for every import ``bad(name)`` refuses (``from a import b``
    names ``a.b`` alone when both are refused)."""
    found = {
        (str(p.relative_to(ROOT)), line, name)
        for p in paths
        for line, name in imported(p)
        if bad(name)
    }
    return [
        f"{where}:{line} imports {name}"
        for where, line, name in sorted(found)
        if not any(w == where and ln == line and n.startswith(name + ".") for w, ln, n in found)
    ]


def top_level_modules() -> set[str]:
    """``zipper_pl.x`` for every module and subpackage directly in the package."""
    return {module_name(p) for p in PKG.glob("*.py")} - {"zipper_pl"} | {
        module_name(p.parent) for p in PKG.glob("*/__init__.py")
    }


def test_the_config_layer_imports_no_models_data_stages_nor_torch():
    config = modules("zipper_pl.config")
    assert len(config) >= 2, "the config layer moved: update this test"
    above = tuple(sorted(top_level_modules() - {"zipper_pl.config", *BASE}))
    assert {"zipper_pl.models", "zipper_pl.data", "zipper_pl.lit", "zipper_pl.stages"} <= set(above)
    found = offences(config, lambda n: within(n, above) or within(n, HEAVY))
    assert not found, (
        "the config layer (zipper_pl/config/) must import only itself, "
        f"{', '.join(BASE)} and light third-party packages; move these imports up a layer:\n  "
        + "\n  ".join(found)
    )


def run_and_list_heavy(code: str, heavy: tuple[str, ...] = HEAVY) -> tuple[list[str], str]:
    """Run ``code`` (which prints a sorted list of module names) in a fresh interpreter: the
    modules it printed, and the chain of imports that first loaded one of ``heavy``."""
    r = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, cwd=ROOT
    )
    assert r.returncode == 0, r.stderr[-2000:]
    loaded = ast.literal_eval(r.stdout.strip().splitlines()[-1])
    rows = []  # (depth, module) in the order -X importtime prints them: children first
    for line in r.stderr.splitlines():
        if line.startswith("import time:") and "imported package" not in line:
            name = line.rsplit("|", 1)[1]
            rows.append((len(name) - len(name.lstrip()), name.strip()))
    first = next((i for i, (_, n) in enumerate(rows) if n.split(".")[0] in heavy), None)
    if first is None:
        return loaded, ""
    depth, chain = rows[first][0], [rows[first][1]]
    for d, name in rows[first + 1 :]:
        if d < depth:
            depth, chain = d, [*chain, name]
    last_heavy = max(i for i, n in enumerate(chain) if n.split(".")[0] in heavy)
    return loaded, " <- imported by ".join(chain[last_heavy:])


def test_importing_the_config_layer_loads_no_torch_lightning_or_transformers():
    loaded, chain = run_and_list_heavy(
        "import zipper_pl.config, sys; print(sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('torch','lightning','transformers')))"
    )
    assert loaded == [], f"import zipper_pl.config loaded {len(loaded)} modules: {chain}"


def test_loading_saving_and_listing_configs_loads_no_torch(tmp_path):
    """What ``python -m zipper_pl keys`` and ``load_config`` / ``save_config`` run, too."""
    loaded, chain = run_and_list_heavy(
        "import sys; from zipper_pl.config import describe_schema, load_config, save_config; "
        "cfg = load_config('experiments/tiny/zip_asr.yaml', ['train.accelerator=gpu']); "
        f"save_config(cfg, {str(tmp_path / 'c.yaml')!r}); describe_schema(); "
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))"
    )
    assert loaded == [], f"the config layer at work loaded {len(loaded)} modules: {chain}"
    assert (tmp_path / "c.yaml").is_file()


def test_naming_a_stage_loads_no_lightning():
    """``zipper_pl paths`` runs at every make level: Lightning (with torchmetrics and dynamo)
    was more than half of its ~11 s start, loaded by the DataModules the modality registry
    imported; naming a stage needs configs, fingerprints and the registries only."""
    loaded, chain = run_and_list_heavy(
        "import sys, zipper_pl.runs.layout; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', 'torchmetrics')))",
        heavy=("lightning", "torchmetrics"),
    )
    assert loaded == [], f"import zipper_pl.runs.layout loaded {len(loaded)} modules: {chain}"


def test_models_import_no_data_lit_runs_or_stage_modules():
    models = modules("zipper_pl.models")
    assert len(models) >= 5, "the models moved: update this test"
    above = tuple(sorted(top_level_modules() - {"zipper_pl.models", *MODELS_MAY_USE}))
    assert {"zipper_pl.data", "zipper_pl.lit", "zipper_pl.runs", "zipper_pl.stages"} <= set(above)
    found = offences(models, lambda n: within(n, above))
    assert not found, (
        "zipper_pl.models may import only itself and "
        f"{', '.join(MODELS_MAY_USE)}; take what these need as arguments or sub-configs:\n  "
        + "\n  ".join(found)
    )


def test_the_import_reader_sees_every_kind_of_import(tmp_path, monkeypatch):
    """The checks above are only as good as ``imported``: it finds imports inside functions,
    relative imports, ``from package import module`` and ``__import__``."""
    pkg = tmp_path / "zipper_pl" / "config"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "x.py").write_text(
        "import yaml\n"
        "def f():\n"
        "    import torch.nn\n"
        "    from ..models import zipper\n"
        "    from zipper_pl import stages\n"
        "    return __import__('lightning')\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    names = {n for _, n in imported(pkg / "x.py")}
    assert {"torch.nn", "zipper_pl.models.zipper", "zipper_pl.stages", "lightning"} <= names
    found = offences([pkg / "x.py"], lambda n: within(n, ("torch", "zipper_pl.models")))
    assert found == [
        "zipper_pl/config/x.py:3 imports torch.nn",
        "zipper_pl/config/x.py:4 imports zipper_pl.models.zipper",
    ]


def test_every_stage_entry_point_checks_the_machine_before_any_work(tmp_path, monkeypatch):
    """The config layer cannot ask torch whether a GPU is here: ``zipper_pl.runs.machine`` does, and
    a stage called from Python (not through the command line) must still refuse at once."""
    import torch

    from zipper_pl.config import load_config
    from zipper_pl.errors import UserError
    from zipper_pl.stages import ablation, chain, evaluate

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = load_config(
        ROOT / "experiments" / "tiny" / "zip_asr.yaml",
        ["train.accelerator=gpu", f"runs={tmp_path}", f"data.root={tmp_path / 'data'}"],
    )
    entry_points = (
        chain.prepare_data, chain.pretrain, chain.zip_stage, chain.finetune,
        chain.judge_stage, evaluate.evaluate_stage, ablation.ablation_stage,
    )  # fmt: skip
    for stage in entry_points:
        with pytest.raises(UserError, match="train.accelerator: 'gpu' but no CUDA GPU"):
            stage(cfg)
    assert not any(tmp_path.iterdir())


def functions(path: Path) -> list[tuple[int, int, str]]:
    """(first line, last line, qualified name) of every function in the file."""
    spans = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                name = f"{prefix}{child.name}"
                spans.append((child.lineno, child.end_lineno or child.lineno, name))
                visit(child, name + ".")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(ast.parse(path.read_text(), str(path)), "")
    return spans


def lazy_imports(path: Path) -> Iterator[tuple[int, str, str]]:
    """(line, enclosing function, what) of every import of the package or the standard library
    inside a function, and of every ``importlib.import_module`` / ``__import__`` call anywhere
    (a computed name hides what it imports from ``imported``)."""
    spans = functions(path)

    def function_at(line: int) -> str | None:
        inside = [(start, name) for start, end, name in spans if start <= line <= end]
        return max(inside)[1] if inside else None

    stdlib = tuple(sys.stdlib_module_names)
    for line, name in imported(path):
        where = function_at(line)
        if where and within(name, ("zipper_pl", *stdlib)):
            yield line, where, name
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call) and getattr(
            node.func, "id", getattr(node.func, "attr", None)
        ) in ("__import__", "import_module"):
            yield node.lineno, function_at(node.lineno) or "<module>", "a computed module name"


def test_imports_sit_at_the_top_of_modules_except_the_allowlisted_lazy_ones():
    found, used = [], set()
    for path in modules():
        where = str(path.relative_to(ROOT))
        hits = set(lazy_imports(path))
        for line, function, name in sorted(hits):
            if any(ln == line and n.startswith(name + ".") for ln, _, n in hits):
                continue  # `from zipper_pl import x` names zipper_pl.x alone
            if (where, function) in LAZY_IMPORTS:
                used.add((where, function))
            else:
                found.append(f"{where}:{line} imports {name} inside {function}()")
    assert not found, (
        "import at the top of the module; a cycle means the code sits in the wrong layer (move it "
        "down, or pass what it needs as an argument); allowed lazy places: "
        f"{sorted(LAZY_IMPORTS)}\n  " + "\n  ".join(found)
    )
    assert used == set(LAZY_IMPORTS), f"stale allowlist entries: {set(LAZY_IMPORTS) - used}"


def test_stage_modules_sit_side_by_side_and_nothing_below_imports_them():
    from zipper_pl.__main__ import STAGES

    dispatched = {target.partition(":")[0] for target in STAGES.values()}
    assert dispatched == set(STAGE_MODULES), "the command line's stages moved: update STAGE_MODULES"
    found = []
    for stage in STAGE_MODULES:
        others = tuple(m for m in STAGE_MODULES if m != stage)
        found += offences(modules(stage), lambda n, others=others: within(n, others))
    below = [p for p in modules() if module_name(p) not in (*STAGE_MODULES, "zipper_pl.__main__")]
    found += offences(below, lambda n: within(n, STAGE_MODULES))
    assert not found, (
        f"stage modules ({', '.join(STAGE_MODULES)}) import none of each other, and no module "
        "below them imports one; move what two stages share (or one stage's work another runs) "
        "down a layer (fitting/, results/, runs/):\n  " + "\n  ".join(found)
    )


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports when it is imported (the allowlisted lazy
    imports inside functions run later, once both modules are loaded)."""
    names = {module_name(p): p for p in modules()}
    graph: dict[str, set[str]] = {}
    for name, path in names.items():
        lazy_lines = {line for line, _, _ in lazy_imports(path)}
        graph[name] = {
            dep
            for line, dep in imported(path)
            if dep in names and dep != name and line not in lazy_lines
        }
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


# The floors, bottom to top (docs/design.md, "Layout"): a module imports only modules of its own
# floor or below. Every import edge is checked, so nothing reaches up through another module
# either (a path up needs one edge up). The longest matching prefix names a module's floor.
FLOORS: tuple[tuple[str, ...], ...] = (
    ("zipper_pl.errors", "zipper_pl.io"),
    ("zipper_pl.config",),
    ("zipper_pl.metrics", "zipper_pl.hub"),  # helpers that read no data and train nothing
    ("zipper_pl.models",),
    ("zipper_pl.data.corpora",),
    ("zipper_pl.data.tokenizers",),
    ("zipper_pl.data.tokens",),
    ("zipper_pl.data.batches",),
    ("zipper_pl.data", "zipper_pl.registry"),  # modalities, the preparation pipeline; registries
    ("zipper_pl.lit",),
    ("zipper_pl.runs",),
    ("zipper_pl.fitting",),
    ("zipper_pl.results",),
    ("zipper_pl.stages",),
    ("zipper_pl", "zipper_pl.api", "zipper_pl.__main__"),
)
MOST_TOP_LEVEL_MODULES = 8  # the rest live in packages named for their role


def floor_of(module: str) -> int:
    matches = [
        (len(prefix), level)
        for level, prefixes in enumerate(FLOORS)
        for prefix in prefixes
        if within(module, (prefix,))
    ]
    assert matches, f"{module} sits on no floor: add its package to FLOORS (and docs/design.md)"
    return max(matches)[1]


def test_every_import_goes_down_the_floors_or_stays_on_its_own():
    assert floor_of("zipper_pl.data.tokens.store") > floor_of("zipper_pl.data.corpora.audio")
    assert floor_of("zipper_pl.data.prepare") == floor_of("zipper_pl.registry")
    up = sorted(
        f"{module} (floor {floor_of(module)}) imports {dep} (floor {floor_of(dep)})"
        for module, deps in import_graph().items()
        for dep in deps
        if floor_of(dep) > floor_of(module)
    )
    assert not up, "a lower floor imports a higher one; move the code down:\n  " + "\n  ".join(up)


def test_at_most_eight_modules_sit_at_the_top_of_the_package():
    top = sorted(p.name for p in PKG.glob("*.py"))
    assert len(top) <= MOST_TOP_LEVEL_MODULES, f"{len(top)} modules at the top: {top}"


def test_the_package_has_no_import_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles(import_graph()) == [], "modules importing each other at import time"


def test_no_module_is_over_350_lines():
    lines = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in modules()}
    long = {path: n for path, n in lines.items() if n > 350}
    assert long == {}, "split these by concern (the house limit is 350 lines)"
