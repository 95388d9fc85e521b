"""The package's import graph: a DAG, with every import at the top of its module.

An import inside a function hides a dependency from the reader (and, on an op's path,
runs on every call); it is only ever there to dodge a cycle or to delay a heavy or
optional dependency. The allow-lists below name each one with its reason.
"""
import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "minitorch_cnn"

# (module path under minitorch_cnn/, imported module): why it must stay inside a function.
_CUPY = "CuPy is optional, and importing it initialises CUDA: only a run on the GPU may import it"
LAZY_BY_DESIGN = {
    ("backends/cupy_backend.py", "cupy"): _CUPY,
    ("distributed/nccl.py", "cupy"): _CUPY,
    ("distributed/nccl.py", "cupy.cuda"): _CUPY,
    ("distributed/__init__.py", "distributed.mpi"): "mpi.py imports mpi4py, and importing mpi4py starts "
                                                    "MPI: only init_process_group() may",
}


def _modules():
    return sorted(PACKAGE.rglob("*.py"))


def _name(path):
    """The dotted module name of ``path`` (a package's ``__init__.py`` is the package)."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(node, path):
    """The modules an import statement names, absolute; ``from . import x`` names the
    submodule x where there is one, else the package itself."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    package = _name(path) if path.name == "__init__.py" else _name(path).rpartition(".")[0]
    if node.level:
        base = package.split(".")
        base = ".".join(base[:len(base) - (node.level - 1)])
        base = f"{base}.{node.module}" if node.module else base
    else:
        base = node.module
    names = []
    for alias in node.names:
        candidate = f"{base}.{alias.name}"
        as_path = PACKAGE.parent.joinpath(*candidate.split("."))
        is_module = as_path.with_suffix(".py").exists() or (as_path / "__init__.py").exists()
        names.append(candidate if is_module else base)
    return list(dict.fromkeys(names))


def _function_level_imports():
    found = []
    for path in _modules():
        tree = ast.parse(path.read_text(), filename=str(path))
        for function in ast.walk(tree):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            for node in ast.walk(function):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    for name in _imported(node, path):
                        short = name.removeprefix("minitorch_cnn.")
                        found.append((path.relative_to(PACKAGE).as_posix(), short, node.lineno))
    return found


def test_no_import_inside_a_function():
    allowed = set(LAZY_BY_DESIGN)
    hidden = [f"minitorch_cnn/{path}:{line} imports {name}"
              for path, name, line in _function_level_imports() if (path, name) not in allowed]
    assert not hidden, "imports inside functions (move them to the top of the module):\n" + "\n".join(hidden)


def test_allow_lists_only_name_imports_that_still_exist():
    present = {(path, name) for path, name, _ in _function_level_imports()}
    stale = set(LAZY_BY_DESIGN) - present
    assert not stale, f"no longer inside a function, drop from the allow-lists: {sorted(stale)}"


def _module_graph():
    """module -> the package's modules it imports, at module level or inside a function
    (a cycle through a deferred import is a cycle all the same)."""
    graph = {}
    for path in _modules():
        tree = ast.parse(path.read_text(), filename=str(path))
        edges = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges.update(n for n in _imported(node, path) if n.startswith("minitorch_cnn"))
        graph[_name(path)] = edges - {_name(path)}
    return graph


def _a_cycle(graph):
    """One import cycle of ``graph`` as a list of modules, or None."""
    state = {}  # module -> "open" while on the path, "done" after

    def visit(module, path):
        state[module] = "open"
        for nxt in sorted(graph.get(module, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt, path + [nxt])
                if cycle:
                    return cycle
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state:
            cycle = visit(module, [module])
            if cycle:
                return cycle
    return None


def test_import_graph_is_a_dag():
    graph = _module_graph()
    # A child importing a name from its own package's __init__ (rather than from the
    # sibling that defines it) closes a cycle too: the __init__ imports its children.
    cycle = _a_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_one():
    assert _a_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _a_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_core_layers():
    """backends below tensor, tensor below autograd, autograd below nn."""
    graph = _module_graph()
    assert "minitorch_cnn.tensor" not in graph["minitorch_cnn.backends"]
    assert "minitorch_cnn.autograd" not in graph["minitorch_cnn.tensor"]
    assert "minitorch_cnn.tensor" in graph["minitorch_cnn.autograd"]
    assert not any(m.startswith("minitorch_cnn.nn") for m in graph["minitorch_cnn.tensor"])
