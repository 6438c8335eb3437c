"""The layout's rules: imports go one way, integrations -> core."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "zombieguard"
OUTSIDE_THE_CORE = ("integrations", "demo")
FRAMEWORKS = ("celery", "kombu", "billiard", "rq", "django", "sentry_sdk")


def core_modules() -> list[str]:
    modules = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[1] in OUTSIDE_THE_CORE:
            continue
        modules.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return modules


def test_the_core_imports_no_integration_no_demo_and_no_job_framework() -> None:
    modules = core_modules()
    assert "zombieguard.leases.store" in modules
    assert "zombieguard.ops.cli" in modules
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    loaded = json.loads(
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    )
    wrong = [
        name
        for name in loaded
        if name.split(".")[0] in FRAMEWORKS
        or any(name.startswith(f"zombieguard.{outside}") for outside in OUTSIDE_THE_CORE)
    ]
    assert wrong == []
