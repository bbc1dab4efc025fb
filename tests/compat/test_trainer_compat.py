"""Our PyTorch backend against the trainer's own generation (``gpt-simple-lm`` 0.1.2).

The contract (``shared/specs/gpt-simple-checkpoints.md``, issue #4): on a run directory the
trainer wrote, ``gpt-simple generate --greedy --dtype fp32`` and our ``gpt_simple.generate`` give
the trainer's greedy text minus its trailing ``<|endoftext|>``, and logits within 1e-4; the
only expected differences are prompts where the trainer generated an id we never generate (its
``<|pad|>`` or the padding band up to ``vocab_size``).

The self-tests at the bottom feed the comparison altered copies of the real results, to prove
it fails when our logits or texts move.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.compat import harness
from tests.compat.conftest import PROMPTS, CompatRun

pytestmark = pytest.mark.compat


def test_the_two_gpt_simple_packages_stay_apart(compat_run: CompatRun) -> None:
    """The trainer's side really ran the trainer, and ours ran ours: both are `gpt_simple`."""
    trainer_venv = compat_run.trainer_python.parent.parent.resolve()
    trainer_file = Path(compat_run.trainer["gpt_simple_file"]).resolve()
    ours_file = Path(compat_run.ours["gpt_simple_file"]).resolve()
    assert trainer_file.is_relative_to(trainer_venv), trainer_file
    assert compat_run.trainer["trainer_version"] == "0.1.2"
    assert not compat_run.trainer["ours_importable"], "gpt_simple_core is visible to the trainer"
    assert not ours_file.is_relative_to(trainer_venv), ours_file
    assert (ours_file.parent.parent / "gpt_simple_core").is_dir() or "site-packages" in str(
        ours_file
    ), ours_file
    assert Path(sys.prefix).resolve() != trainer_venv


def test_the_trainer_wrote_the_layout_of_the_spec(compat_run: CompatRun) -> None:
    """Facts the comparison relies on, as the spec states them: <|pad|> added by the trainer
    right after the BPE vocabulary, vocab_size rounded up to 128, so a padding band exists."""
    for run in compat_run.trainer["runs"]:
        assert run["tokenizer_size"] == harness.TOKENIZER_SIZE + 1
        assert run["pad_id"] == harness.TOKENIZER_SIZE
        assert run["eos_id"] == 0
        assert run["model_config"]["vocab_size"] == 512
        checkpoint = Path(run["run_dir"]) / "checkpoints" / "final"
        assert (checkpoint / "model" / "pytorch_model.bin").is_file()
        assert (Path(run["run_dir"]) / "tokenizer" / "tokenizer.json").is_file()


@pytest.mark.parametrize("run_name", list(harness.MODELS))
def test_greedy_text_matches_the_trainer(compat_run: CompatRun, run_name: str) -> None:
    """Identical greedy text through our API and our CLI (EOS text removed), same token count
    and finish reason; padding-band prompts are reported, not failed, unless they disagree
    before the band token or are the majority."""
    report = compat_run.report
    rows = [p for p in report.prompts if p.run == run_name]
    assert len(rows) == len(PROMPTS) >= 5
    failures = [p.describe() for p in rows if p.status == "mismatch"]
    matched = sum(p.status == "match" for p in rows)
    assert not failures, "\n\n".join(failures)
    assert matched * 2 > len(rows), report.summary()
    for p in rows:
        if p.status == "padding-band":
            print(f"expected difference (padding band): {p.describe()}")


def test_structural_agreement(compat_run: CompatRun) -> None:
    """Tokenizer size, EOS id, pad id excluded: the facts our plan reads from the run."""
    assert not compat_run.report.structural, "\n".join(compat_run.report.structural)


@pytest.mark.parametrize("run_name", list(harness.MODELS))
def test_logits_match_the_trainer(compat_run: CompatRun, run_name: str) -> None:
    """Within 1e-4: at each prompt's last position, at every position of prompt + the
    trainer's continuation (past n_positions too), and along our KV-cached path."""
    rows = [lo for lo in compat_run.report.logits if lo.run == run_name]
    assert len(rows) == len(PROMPTS)
    bad = [lo for lo in rows if not lo.worst <= harness.LOGITS_TOLERANCE]
    assert not bad, "\n".join(compat_run.report.failures())


def test_the_check_covers_eos_and_extrapolation(compat_run: CompatRun) -> None:
    """The interesting cases really happened (else the prompts or the training drifted and the
    test would silently lose coverage): some continuation ended with EOS on some run, and some
    sequence ran past n_positions."""
    assert any(p.ended_with_eos for p in compat_run.report.prompts), compat_run.report.summary()
    for run in compat_run.trainer["runs"]:
        limit = run["model_config"]["n_positions"]
        longest = max(len(r["prompt_ids"]) + len(r["new_ids"]) for r in run["rows"])
        assert longest > limit, (longest, limit)
        assert any(len(r["prompt_ids"]) > limit for r in run["rows"])


def test_load_for_inference_returns_the_module(compat_run: CompatRun) -> None:
    """The API contract the trainer's scripts rely on: ``model(input_ids=ids).logits``."""
    types = {run["model_type"] for run in compat_run.ours["runs"]}
    assert types == {"gpt_simple_torch.model.GPT"}, (
        f"gpt_simple.load_for_inference returned {sorted(types)}, not the nn.Module the "
        "API docstring and the trainer promise"
    )


# --- self-tests of the comparison, on altered copies of the real results ---------------------


def _compare(run: CompatRun, *, ours=None, ours_logits=None, cli=None) -> harness.Report:
    return harness.compare(
        run.run_names,
        run.trainer,
        run.trainer_logits,
        ours if ours is not None else run.ours,
        ours_logits if ours_logits is not None else run.ours_logits,
        cli if cli is not None else run.cli,
    )


def test_self_check_a_logit_moved_by_2e4_fails(compat_run: CompatRun) -> None:
    for suffix in ("", "/cached"):
        logits = {k: v.copy() for k, v in compat_run.ours_logits.items()}
        key = f"0/0{suffix}"
        logits[key][-1, 7] += 2e-4
        failures = _compare(compat_run, ours_logits=logits).failures()
        assert any("logits differ" in f for f in failures), failures


def test_self_check_one_changed_character_fails(compat_run: CompatRun) -> None:
    ours = copy.deepcopy(compat_run.ours)
    record = ours["runs"][0]["records"][1]
    record["completion"] = record["completion"][:-1] + "#"
    failures = _compare(compat_run, ours=ours).failures()
    assert any("our API text differs" in f for f in failures), failures
    # Informative: the failure shows the trainer's text and ours.
    trainer_text = compat_run.report.prompts[1].trainer_text
    assert any(repr(trainer_text) in f and repr(record["completion"]) in f for f in failures)


def test_self_check_eos_text_kept_fails(compat_run: CompatRun) -> None:
    """Leaving the trainer's <|endoftext|> in (one of its defects) is a mismatch."""
    eos_rows = [
        (i, p) for i, p in enumerate(compat_run.report.prompts[: len(PROMPTS)]) if p.ended_with_eos
    ]
    if not eos_rows:
        pytest.skip("no continuation of the first run ended with EOS")
    index, _ = eos_rows[0]
    cli = copy.deepcopy(compat_run.cli)
    name = compat_run.run_names[0]
    cli[name][index]["completion"] += harness.EOS_TEXT
    failures = _compare(compat_run, cli=cli).failures()
    assert any("our CLI text differs" in f for f in failures), failures


def test_self_check_padding_band_is_an_expected_difference(compat_run: CompatRun) -> None:
    """A trainer continuation with a band id is classified, not failed, when the texts agree
    up to it; and a divergence before the band token still fails."""
    trainer = copy.deepcopy(compat_run.trainer)
    row = trainer["runs"][0]["rows"][0]
    vocab = trainer["runs"][0]["model_config"]["vocab_size"]
    cut = 5
    ours_text = compat_run.report.prompts[0].api_text
    # Pretend the trainer emitted a band id after `cut` tokens and then went elsewhere.
    row["new_ids"] = [*row["new_ids"][:cut], vocab - 1, *row["new_ids"][cut:-1]]
    row["text_before_forbidden"] = ours_text[:3]
    row["text"] = ours_text[:3] + "something else"
    report = harness.compare(
        compat_run.run_names,
        trainer,
        compat_run.trainer_logits,
        compat_run.ours,
        compat_run.ours_logits,
        compat_run.cli,
    )
    assert report.prompts[0].status == "padding-band", report.prompts[0].describe()
    assert report.prompts[0].forbidden_ids == [vocab - 1]
    assert not report.prompts[0].problems
    row["text_before_forbidden"] = "!" + ours_text[:3]
    report = harness.compare(
        compat_run.run_names,
        trainer,
        compat_run.trainer_logits,
        compat_run.ours,
        compat_run.ours_logits,
        compat_run.cli,
    )
    assert report.prompts[0].status == "mismatch"


def test_self_check_nan_logits_fail(compat_run: CompatRun) -> None:
    logits = {k: v.copy() for k, v in compat_run.ours_logits.items()}
    logits["0/1"][0, 0] = np.nan
    assert _compare(compat_run, ours_logits=logits).failures()
