"""The docs stand by the code: the reference's operation table lists exactly the table's public rows, and
the architecture page names every module of the package."""

from __future__ import annotations

import re
from pathlib import Path

from layerdsl.language.ops import OPS

ROOT = Path(__file__).resolve().parents[2]


def _documented_ops() -> set[str]:
    text = (ROOT / "docs" / "language.md").read_text(encoding="utf-8")
    section = text.split("## The operation table", 1)[1].split("\n## ", 1)[0]
    return {m.group(1) for m in re.finditer(r"^\| [^|]+ \| `(\w+)\(", section, flags=re.M)}


def test_the_reference_lists_every_public_operation():
    public = {name for name, op in OPS.items() if not op.internal}
    documented = _documented_ops()
    assert public - documented == set(), "operations missing from docs/language.md"
    assert documented - public == set(), "docs/language.md lists operations the table does not have"


def test_the_architecture_page_names_every_module():
    page = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    package = ROOT / "layerdsl"
    missing = [
        str(p.relative_to(package))
        for p in sorted(package.rglob("*.py"))
        if p.name != "__init__.py" and p.parent != package and p.name not in page
    ]
    assert missing == []
