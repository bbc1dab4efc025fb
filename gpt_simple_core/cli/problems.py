"""Printing a plan's problems: every one on stderr, as ``file:line: field: message``."""

from __future__ import annotations

import sys

from gpt_simple_core.plan.model import Plan


def report_problems(plan: Plan) -> None:
    print(
        f"gpt-simple: {len(plan.problems)} problem(s) in {plan.input}; nothing was loaded:",
        file=sys.stderr,
    )
    for problem in plan.problems:
        print(problem.render(), file=sys.stderr)
