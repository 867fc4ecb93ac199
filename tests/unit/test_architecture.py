"""The import rules of docs/architecture.md, checked on the source (every import, also those inside
functions): services import the shared packages and never each other; the shared packages import no
service; `common` imports only itself and the generated stubs."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "services" / "bailu"

SHARED = {"common", "registry", "datasets", "keys", "v1"}
SERVICES = {"gateway", "worker", "collector", "trainer", "cli"}
TOOLING = {"dev"}  # the local stack and developer tools: may use every package

# package -> the packages (besides itself) it may import
ALLOWED: dict[str, set[str]] = {
    "v1": set(),
    "common": {"v1"},
    "registry": {"common"},
    "datasets": {"common"},
    "keys": {"common"},
    **{service: set(SHARED) for service in SERVICES},
    **{tool: SHARED | SERVICES for tool in TOOLING},
}


def _imported_packages(path: Path) -> set[tuple[str, int]]:
    """(bailu sub-package, line) for every import of `bailu.<package>` in a file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[tuple[str, int]] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
            if node.module == "bailu":  # from bailu import worker
                names = [f"bailu.{alias.name}" for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "bailu" and len(parts) > 1 and (PACKAGE / parts[1]).is_dir():  # not bailu.__version__
                found.add((parts[1], node.lineno))
    return found


def _packages() -> list[str]:
    return sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists())


def test_every_package_has_a_rule() -> None:
    assert set(_packages()) == set(ALLOWED), "add the new package to ALLOWED and to docs/architecture.md"


@pytest.mark.parametrize("package", _packages())
def test_imports_follow_the_rules(package: str) -> None:
    allowed = ALLOWED[package] | {package}
    broken = [
        f"{path.relative_to(PACKAGE.parent)}:{line} imports bailu.{target}"
        for path in sorted((PACKAGE / package).rglob("*.py"))
        for target, line in sorted(_imported_packages(path))
        if target not in allowed
    ]
    assert not broken, f"bailu.{package} may import only {sorted(allowed)}:\n" + "\n".join(broken)


def test_the_checker_sees_imports_inside_functions(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text(
        "def f():\n    from bailu.worker import server\n    import bailu.gateway.app\nfrom bailu import __version__\n"
    )
    assert _imported_packages(source) == {("worker", 2), ("gateway", 3)}
