"""The package's shape: no import cycle between its parts, and the commands that only
need the catalog (and the notifier Lambda) run without paramiko.

Both are structure, easy to lose by one convenient import; these tests name the import
that broke it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import sftp_gateway

PACKAGE_DIR = Path(sftp_gateway.__file__).parent
PACKAGE = "sftp_gateway"

# Imported with paramiko blocked: what the CLI's users/uploads/bans/notifier/db/gc
# commands and the Lambda handler load.
PARAMIKO_FREE_MODULES = (
    "sftp_gateway.notifier",
    "sftp_gateway.notifier.worker",
    "sftp_gateway.catalog",
    "sftp_gateway.catalog.repository",
    "sftp_gateway.catalog.bans",
    "sftp_gateway.catalog.db",
    "sftp_gateway.events.dispatcher",
    "sftp_gateway.gc",
    "sftp_gateway.cli",
    "sftp_gateway.supervisor",
    "sftp_gateway.web.upload_page",
)

BLOCK_PARAMIKO = textwrap.dedent(
    """
    import sys

    class BlockParamiko:
        def find_spec(self, name, path=None, target=None):
            if name == "paramiko" or name.startswith("paramiko."):
                raise ImportError(f"paramiko imported (blocked by the test): {name}")
            return None

    sys.meta_path.insert(0, BlockParamiko())
    """
)


def _run_without_paramiko(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "no_paramiko.py"
    script.write_text(BLOCK_PARAMIKO + textwrap.dedent(code))
    return subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )


def test_catalog_events_and_notifier_import_without_paramiko(tmp_path: Path) -> None:
    imports = "\n".join(f"import {name}" for name in PARAMIKO_FREE_MODULES)
    result = _run_without_paramiko(imports + "\nprint('imported')\n", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "imported" in result.stdout


def test_catalog_commands_run_without_paramiko(tmp_path: Path) -> None:
    """`db upgrade`, `users add/list`, `uploads list` and `bans list` on a real SQLite
    catalog, in a process where importing paramiko fails."""
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"storage: {{bucket: test-bucket}}\ncatalog: {{url: 'sqlite:///{tmp_path}/c.db'}}\n"
    )
    key = tmp_path / "alice.pub"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "alice")],
        check=True,
        timeout=30,
    )
    code = f"""
    from click.testing import CliRunner
    from sftp_gateway.cli import main

    runner = CliRunner()
    for args in (
        ["db", "upgrade"],
        ["users", "add", "alice", "--key", {str(key)!r}],
        ["users", "list"],
        ["uploads", "list"],
        ["bans", "list"],
    ):
        result = runner.invoke(main, [*args, "--config", {str(config)!r}])
        print(args, result.exit_code, result.output.strip().replace("\\n", " | "))
        assert result.exit_code == 0, (args, result.output, result.exception)
    import sys
    assert "paramiko" not in sys.modules
    print("ok")
    """
    result = _run_without_paramiko(code, tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "alice" in result.stdout and result.stdout.rstrip().endswith("ok")


# -- no cycle between the package's parts ------------------------------------------------


def _part_of(module: str) -> str | None:
    """`sftp_gateway.catalog.repository` -> `catalog`; outside the package -> None."""
    parts = module.split(".")
    if parts[0] != PACKAGE or len(parts) < 2:
        return None
    return parts[1]


def _module_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Imports that run when the module is imported (or are read by type checkers):
    the module body, its `if`/`try` blocks, not function or class bodies."""
    found: list[ast.Import | ast.ImportFrom] = []
    pending: list[ast.stmt] = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        elif isinstance(node, ast.If | ast.Try):
            pending.extend(node.body)
            pending.extend(node.orelse)
            for handler in getattr(node, "handlers", []):
                pending.extend(handler.body)
            pending.extend(getattr(node, "finalbody", []))
    return found


def _is_part(name: str) -> bool:
    """A submodule or subpackage (`__version__` is neither)."""
    return (PACKAGE_DIR / name).is_dir() or (PACKAGE_DIR / f"{name}.py").exists()


def _imported_parts(node: ast.Import | ast.ImportFrom) -> set[str]:
    if isinstance(node, ast.Import):
        return {part for alias in node.names if (part := _part_of(alias.name))}
    if node.level or node.module is None:
        return set()
    if node.module == PACKAGE:  # from sftp_gateway import errors, sshcompat
        return {alias.name for alias in node.names if _is_part(alias.name)}
    part = _part_of(node.module)
    return {part} if part else set()


def package_graph() -> dict[str, set[str]]:
    """Part -> the parts it imports at module level (a part: a top-level module or
    subpackage of sftp_gateway)."""
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        relative = path.relative_to(PACKAGE_DIR)
        if "migrations" in relative.parts:
            continue
        part = relative.parts[0].removesuffix(".py")
        if part == "__init__" or part == "__main__":
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        targets = graph.setdefault(part, set())
        for node in _module_level_imports(tree):
            targets |= _imported_parts(node) - {part}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return [*stack[stack.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_package_parts_import_each_other_without_a_cycle() -> None:
    graph = package_graph()
    assert {"catalog", "events", "records", "transfer", "sshcompat"} <= set(graph)
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle between parts of sftp_gateway: " + " -> ".join(cycle)


def test_records_is_a_leaf() -> None:
    assert package_graph()["records"] <= {"errors"}


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
