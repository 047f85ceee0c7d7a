"""The map of the house (docs/architecture.md): which of our packages each part may import.

Parsed from the sources, so a new import that adds an arrow the map does not allow fails here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

ROOT = Path(__file__).resolve().parents[2]
OURS = frozenset(
    {
        "vault_common",
        "vault_protocol",
        "vault_node",
        "frontend_chatd",
        "client",
        "deploy",
        "bkv_bench",
        "bkv_chaos",
        "etcd_client",
        "bkv.v1",
        "bkv.store",
        "bkv.etcd",
    }
)
PRODUCT = frozenset({"vault_common", "vault_protocol", "vault_node", "frontend_chatd", "client"})
ALLOWED = {
    "vault_common": frozenset(),
    "vault_protocol": frozenset({"bkv.v1"}),
    "etcd_client": frozenset({"bkv.etcd", "vault_common"}),
    "client": frozenset({"bkv.v1", "vault_protocol", "vault_common"}),
    "frontend_chatd": frozenset({"bkv.v1", "etcd_client", "vault_common"}),
    "vault_node": frozenset(
        {"bkv.v1", "bkv.store", "vault_protocol", "etcd_client", "vault_common"}
    ),
    "deploy": frozenset({"client", "vault_node", "vault_protocol", "etcd_client", "vault_common"}),
    "bkv_bench": OURS - {"bkv_chaos", "bkv_bench"},
    "bkv_chaos": OURS - {"bkv_bench", "bkv_chaos"},
}


def _part(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] == "bkv":
        name = ".".join(parts[:2])
        return name if name in OURS else None
    return parts[0] if parts[0] in OURS else None


def imports_of(package: str) -> dict[str, set[str]]:
    """Our parts each file of `package` imports: {part: {file, ...}}."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                part = _part(name)
                if part is not None and part != package:
                    found.setdefault(part, set()).add(str(path.relative_to(ROOT)))
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_each_part_imports_only_what_the_map_allows(package: str) -> None:
    extra = {
        part: files for part, files in imports_of(package).items() if part not in ALLOWED[package]
    }
    assert not extra, f"{package} imports parts the map does not allow: {extra}"


def test_the_scan_sees_real_imports() -> None:
    # The check above cannot pass by seeing nothing: known arrows are found.
    assert "vault_protocol" in imports_of("vault_node")
    assert "vault_common" in imports_of("frontend_chatd")
    assert PRODUCT - {"client"} <= set(ALLOWED)
