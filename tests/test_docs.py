"""The README's generated references match the code: every flag and variable, every metric."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_readme_references_are_up_to_date() -> None:
    check = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "reference.py"), "--check"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert check.returncode == 0, check.stderr


def test_every_variable_the_code_reads_is_in_the_reference() -> None:
    """A JOBWIRE_* variable read anywhere in the services is documented in the README."""
    readme = (ROOT / "README.md").read_text()
    used: set[str] = set()
    prefixes: set[str] = set()
    for path in (ROOT / "services").rglob("*.py"):
        text = path.read_text()
        used |= set(re.findall(r"\bJOBWIRE_[A-Z0-9_]+\b", text))
        prefixes |= set(re.findall(r'env_prefix="(JOBWIRE_[A-Z0-9_]+)"', text))
    # Prefixes that the code completes (JOBWIRE_SMTP_{name}, env_prefix="JOBWIRE_WORKER").
    used = {name for name in used - prefixes if not name.endswith("_")}
    missing = sorted(name for name in used if f"`{name}`" not in readme)
    assert not missing, f"not in the README's reference: {missing}"
