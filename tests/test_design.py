"""The redesign's rules, kept by tests so they do not rot: small functions, a pipeline that
only wires stages, and eps out of the margin stage's parameters by construction."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "marginbench"
MAX_FUNCTION_LINES = 60
MAX_PIPELINE_LINES = 200


def _long_functions() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_no_function_is_longer_than_60_lines():
    assert _long_functions() == []


def test_the_pipeline_only_wires_stages():
    assert len((PACKAGE / "pipeline.py").read_text().splitlines()) <= MAX_PIPELINE_LINES


def test_eps_cannot_reach_the_margin_or_output_keys():
    """MarginParams and ScoreParams are the only parameters of their stages' keys; eps lives
    in MetricsParams alone, so an eps sweep reuses the margins by construction."""
    from marginbench.stages.margins import MarginParams
    from marginbench.stages.metrics import MetricsParams
    from marginbench.stages.scores import ScoreParams

    assert "eps" not in {f.name for f in dataclasses.fields(MarginParams)}
    assert "eps" not in {f.name for f in dataclasses.fields(ScoreParams)}
    assert "eps" in {f.name for f in dataclasses.fields(MetricsParams)}
    params = MarginParams({"name": "fab", "steps": 3}, "Linf", 0)
    assert "eps" not in params.key_params()
