"""Accessibility checks for the browser tests: axe-core (bundled with axe-playwright-python, no network) run
on the page as it is shown, failing on every serious or critical violation."""

from __future__ import annotations

from typing import Any

BLOCKING_IMPACTS = ("serious", "critical")
# WCAG 2.x A and AA rules plus axe's best practices (landmarks, heading order, region).
AXE_OPTIONS = {"resultTypes": ["violations"],
               "runOnly": {"type": "tag", "values": ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa",
                                                      "best-practice"]}}


def axe_violations(page: Any) -> list[dict[str, Any]]:
    """axe-core's violations on the page shown (every impact)."""
    from axe_playwright_python.sync_playwright import Axe

    return list(Axe().run(page, options=AXE_OPTIONS).response["violations"])


def describe(violations: list[dict[str, Any]]) -> str:
    """One block per violation: rule id, impact, help, and the selectors of every node it found."""
    lines = []
    for v in violations:
        lines.append(f"- {v['id']} ({v['impact']}): {v['help']} [{v.get('helpUrl', '')}]")
        for node in v["nodes"]:
            target = " ".join(str(t) for t in node["target"])
            lines.append(f"    {target}: {node.get('failureSummary', '').replace(chr(10), ' ')}")
    return "\n".join(lines)


def blocking_violations(page: Any) -> list[dict[str, Any]]:
    """axe-core's serious and critical violations on the page shown."""
    return [v for v in axe_violations(page) if v.get("impact") in BLOCKING_IMPACTS]


def assert_accessible(page: Any, where: str) -> None:
    """Fail listing every serious or critical axe-core violation on the page shown; ``where`` names the state."""
    blocking = blocking_violations(page)
    assert not blocking, f"axe-core: serious or critical violations on {where}:\n{describe(blocking)}"
