"""docs/architecture.md's tree lists exactly the modules under pipelines/ and serve/."""

from __future__ import annotations

import re

from tests.helpers import ROOT

DOC = ROOT / "docs" / "architecture.md"


def _tree() -> str:
    return DOC.read_text().split("## The tree", 1)[1].split("```", 2)[1]


def documented_modules() -> set[str]:
    """Every `name.py` in the tree block, with the folder lines above it giving its package."""
    found, folders = set(), {}
    for line in _tree().splitlines():
        indent = len(line) - len(line.lstrip())
        words = re.split(r"\s{2,}", line.strip())[0].split()
        folder = re.fullmatch(r"([a-z_]+)/", words[0]) if words else None
        if folder:
            folders = {depth: name for depth, name in folders.items() if depth < indent}
            folders[indent] = folder.group(1)
            continue
        parents = [name for depth, name in sorted(folders.items()) if depth < indent]
        found |= {"/".join([*parents, word]) for word in words if word.endswith(".py")}
    return found


def actual_modules() -> set[str]:
    return {
        str(path.relative_to(ROOT))
        for package in ("pipelines", "serve")
        for path in (ROOT / package).rglob("*.py")
        if path.name != "__init__.py"
    }


def test_the_tree_lists_every_module_and_no_other() -> None:
    documented, actual = documented_modules(), actual_modules()
    assert actual - documented == set(), "modules missing from docs/architecture.md"
    assert documented - actual == set(), "docs/architecture.md lists modules that do not exist"


def test_every_adapter_has_a_line_of_its_own() -> None:
    adapters = {p.stem for p in (ROOT / "pipelines" / "adapters").glob("*.py") if p.stem != "__init__"}
    described = set(re.findall(r"^    ([a-z_]+)\.py\s{2,}\S", _tree(), re.MULTILINE))
    assert adapters <= described
