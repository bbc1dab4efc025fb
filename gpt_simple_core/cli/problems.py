"""Printing a plan's problems: every one on stderr, as ``file:line: field: message``."""

from __future__ import annotations

import sys

from gpt_simple_core.plan.model import Plan
from gpt_simple_core.wording import plural


def report_problems(plan: Plan) -> None:
    print(
        f"gpt-simple: {plural(len(plan.problems), 'problem')} in {plan.input}; nothing was loaded:",
        file=sys.stderr,
    )
    for problem in plan.problems:
        print(problem.render(), file=sys.stderr)
