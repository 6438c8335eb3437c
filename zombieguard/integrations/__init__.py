"""Integrations with job frameworks. Each module imports its framework at the top and refuses to
load, naming the extra to install, when the framework is missing or older than supported."""

from __future__ import annotations

from zombieguard.errors import IntegrationNotAvailable

# The oldest version of each framework an integration supports: one table, checked at import.
MINIMUM_VERSIONS: dict[str, tuple[int, ...]] = {"rq": (2, 0), "celery": (5, 3)}


def version_tuple(version: str) -> tuple[int, ...]:
    """``"2.12.0"`` -> ``(2, 12, 0)``; stops at the first part that is not a number."""
    parts: list[int] = []
    for part in version.split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        if not digits or digits != part:
            if digits and part.startswith(digits):
                parts.append(int(digits))
            break
        parts.append(int(digits))
    return tuple(parts)


def require(framework: str, version: str) -> tuple[int, ...]:
    """Check ``version`` of ``framework`` against :data:`MINIMUM_VERSIONS`; return it parsed."""
    found = version_tuple(version)
    minimum = MINIMUM_VERSIONS[framework]
    if found < minimum:
        raise IntegrationNotAvailable(
            f"zombieguard supports {framework} >= {'.'.join(map(str, minimum))}; {version} is installed: "
            f"pip install 'zombieguard[{framework}]'"
        )
    return found
