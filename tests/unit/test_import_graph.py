"""The import graph of yunhan/ points downward (ARCHITECTURE §5, STYLE "do not repeat").

Read from the source (ast), so that imports inside functions count too: a lazy import is
still a dependency, and the api app <-> routes cycle hid in one.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "yunhan"


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph() -> dict[str, set[str]]:
    modules = {_module(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                # `from pkg import mod` names a module when one exists by that name.
                targets = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                    for a in node.names
                ]
            else:
                continue
            deps.update(t for t in targets if t.split(".")[0] == "yunhan" and t != name)
        graph[name] = deps
    return graph


def _under(name: str, *packages: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def test_net_compute_and_hotpatch_never_import_api_store_or_controller() -> None:
    bad = [
        (m, d)
        for m, deps in _graph().items()
        if _under(m, "yunhan.net", "yunhan.compute", "yunhan.hotpatch")
        for d in deps
        if _under(d, "yunhan.api", "yunhan.store", "yunhan.controller")
    ]
    assert bad == []


def test_net_does_not_import_compute() -> None:
    bad = [
        (m, d)
        for m, deps in _graph().items()
        if _under(m, "yunhan.net")
        for d in deps
        if _under(d, "yunhan.compute")
    ]
    assert bad == []


def test_model_imports_nothing_of_ours_but_errors() -> None:
    bad = [
        (m, d)
        for m, deps in _graph().items()
        if _under(m, "yunhan.model")
        for d in deps
        if not _under(d, "yunhan.model", "yunhan.errors")
    ]
    assert bad == []


def test_leaf_helpers_import_nothing_of_ours() -> None:
    graph = _graph()
    for leaf in ("yunhan.errors", "yunhan.procstat", "yunhan.nsexec", "yunhan.polling"):
        assert graph[leaf] == set(), leaf
    assert graph["yunhan.net.nsutil"] == {"yunhan.nsexec", "yunhan.polling"}  # both leaves


def test_routers_do_not_import_the_app() -> None:
    graph = _graph()
    assert not [
        m for m, deps in graph.items() if "yunhan.api.app" in deps and m != "yunhan.api.server"
    ]


def _cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles() -> None:
    # A package's __init__ re-exporting its modules is not a cycle of design: leave the
    # package -> module edges out.
    graph = {m: {d for d in deps if not _under(d, m)} for m, deps in _graph().items()}
    assert _cycles(graph) == []


def test_the_function_runtime_is_host_side_and_imports_only_leaves() -> None:
    """The worker harness runs in forks of the zygote: what it imports is preloaded into
    every worker, so the package stays off the API, store, controller and network code."""
    allowed = ("yunhan.functions", "yunhan.errors", "yunhan.polling", "yunhan.nsexec")
    bad = [
        (m, d)
        for m, deps in _graph().items()
        if _under(m, "yunhan.functions")
        for d in deps
        if not _under(d, *allowed) and d != "yunhan.net.nsutil" and d != "yunhan"
    ]
    assert bad == []


# The AI services' model libraries: only their function code (yunhan/ai/services/*) may
# import them, since those modules run in workers; the server, the CLI and the agent never
# load onnxruntime or OpenCV (hundreds of MB, seconds of import).
_MODEL_LIBRARIES = {
    "cv2",
    "numpy",
    "onnxruntime",
    "rapidocr_onnxruntime",
    "langid",
    "vaderSentiment",
    "pocketsphinx",
    "PIL",
    "skimage",
}


def _top_level_imports(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            out.add(node.module.split(".")[0])
    return out


def test_only_the_ai_services_function_code_imports_model_libraries() -> None:
    services = ROOT / "ai" / "services"
    bad = [
        (_module(p), sorted(_top_level_imports(p) & _MODEL_LIBRARIES))
        for p in ROOT.rglob("*.py")
        if not p.is_relative_to(services) and _top_level_imports(p) & _MODEL_LIBRARIES
    ]
    assert bad == []


def test_ai_service_code_is_self_contained_and_nothing_imports_it() -> None:
    """Each service directory is deployed alone as a function's code: it cannot import
    Yunhan (not on a worker's path), and Yunhan must not import it (model libraries)."""
    graph = _graph()
    assert not [m for m, deps in graph.items() if _under(m, "yunhan.ai.services") and deps]
    assert not [
        (m, d)
        for m, deps in graph.items()
        if not _under(m, "yunhan.ai.services")
        for d in deps
        if _under(d, "yunhan.ai.services")
    ]
    assert graph["yunhan.ai.catalog"] == {"yunhan.errors"}
