"""Property tests (hypothesis) of what reads damaged files: the JSONL reader and the resume
reader never crash, never lose a complete record, never keep one twice (issue 12, item 6)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpt_simple_core.jobs.recovery import expected_records, recover
from gpt_simple_core.output.sinks import MemorySink
from gpt_simple_core.records.parse import iter_json_lines, parse_lines
from gpt_simple_core.records.problems import Problem
from gpt_simple_core.session import Session
from gpt_simple_core.settings import Settings
from tests.support import plugins
from tests.support.toy_backend import write_toy_checkpoint

RECORDS = 24
PROPERTY = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


# The JSONL reader ------------------------------------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)
lines = st.one_of(
    st.binary(max_size=60),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.sampled_from(["prompt", "model", "generation", "id", "x"]), json_values).map(
        lambda d: json.dumps(d).encode()
    ),
)


@PROPERTY
@given(st.lists(lines, max_size=12))
def test_the_jsonl_reader_accounts_for_every_line(raw_lines):
    data = [line.replace(b"\n", b" ") + b"\n" for line in raw_lines]
    seen = list(iter_json_lines(data))
    non_blank = [i for i, line in enumerate(data, 1) if line.strip()]
    assert [number for number, _ in seen] == [
        i for i in non_blank if data[i - 1].decode("utf-8", "replace").strip()
    ]
    records, problems = parse_lines(data)  # never raises
    lines_with_problems = {p.line for p in problems}
    assert all(isinstance(p, Problem) for p in problems)
    assert {r.line for r in records}.isdisjoint(lines_with_problems)
    assert len(records) + len(lines_with_problems) == len(seen)


# The resume reader -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory):
    """A planned 24-record sweep over two toy models and the lines its output holds."""
    folder = tmp_path_factory.mktemp("sweep")
    plugins.reset()
    from tests.support.toy_backend import TOY_PLUGIN

    registry = plugins.add_plugin(TOY_PLUGIN)
    for name in ("a", "b"):
        write_toy_checkpoint(folder / name, script=name * 2)
    raw = [
        {"id": i, "prompt": "ab" * (1 + i % 3), "model": {"checkpoint": str(folder / "ab"[i % 2])}}
        for i in range(RECORDS)
    ]
    records, problems = parse_lines([json.dumps(r) for r in raw])
    session = Session(Settings(), registry, progress=False)
    planned = session.plan(records, problems, source="in.jsonl")
    sink = MemorySink()
    session.run(planned, sink)
    lines = [(json.dumps(r, ensure_ascii=False) + "\n").encode() for r in sink.in_order()]
    plugins.reset()
    return planned, lines


damage = st.fixed_dictionaries(
    {
        "keep": st.integers(0, RECORDS),  # whole lines before the damage
        "cut": st.integers(0, 400),  # bytes of the next line that made it
        "tail": st.binary(max_size=80) | st.sampled_from([b"", b"\0" * 300, b"\n\n"]),
        "duplicate": st.none() | st.integers(0, RECORDS - 1),  # a line written twice
        "spooled": st.sets(st.integers(0, RECORDS - 1), max_size=RECORDS),
        "spool_tail": st.binary(max_size=40),
    }
)


@PROPERTY
@given(damage)
def test_resume_keeps_every_whole_record_once_and_nothing_else(finished, damage):
    planned, lines = finished
    order = list(range(RECORDS))
    keep = damage["keep"]
    body = lines[:keep]
    if damage["duplicate"] is not None and damage["duplicate"] < keep:
        body = [*body[: damage["duplicate"] + 1], *body[damage["duplicate"] :]]
    torn = lines[keep][: damage["cut"]] if keep < RECORDS else b""
    with tempfile.TemporaryDirectory() as temp:
        output, spool = Path(temp) / "out.jsonl", Path(temp) / "spool.jsonl"
        output.write_bytes(b"".join(body) + torn + damage["tail"])
        entries = [
            json.dumps({"index": i, "record": json.loads(lines[i])}).encode() + b"\n"
            for i in sorted(damage["spooled"])
        ]
        spool.write_bytes(b"".join(entries) + damage["spool_tail"])

        got = recover(output, spool, order, expected_records(planned.groups))

        # the output is cut back to exactly its leading whole, correct lines: none lost
        damaged = (b"".join(body) + torn + damage["tail"]).splitlines(keepends=True)
        intact = 0
        while intact < len(damaged) and intact < RECORDS and damaged[intact] == lines[intact]:
            intact += 1
        assert got.written == intact
        assert output.read_bytes() == b"".join(lines[:intact])
        # every spooled record is a correct record past the prefix, each once
        reread = [json.loads(line) for line in spool.read_bytes().splitlines()]
        indexes = [entry["index"] for entry in reread]
        assert len(indexes) == len(set(indexes))
        assert all(i >= got.written for i in indexes)
        assert all(json.loads(lines[e["index"]]) == e["record"] for e in reread)
        assert set(indexes) == set(got.spooled)
        # nothing finished is lost: a valid spool entry past the prefix is kept
        assert {i for i in damage["spooled"] if i >= got.written} <= set(indexes)
