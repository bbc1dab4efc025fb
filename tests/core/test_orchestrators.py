"""The orchestrator templates of examples/orchestrators, exercised: the Slurm array script under
a fake ``sbatch`` (array tasks run one after another with Slurm's environment, ``scontrol``
recorded, SIGUSR1 sent as ``--signal=B:USR1@120`` would), then the merge job; the Kubernetes
manifests checked against the ``batch/v1`` fields they use, their commands parsed by
gpt-simple's own parser."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from gpt_simple_core.cli.main import build_parser
from tests.conftest import REPO_ROOT
from tests.core.helpers import run_toy_cli, write_jsonl
from tests.support.cli import subprocess_env
from tests.support.toy_backend import write_toy_checkpoint

TEMPLATES = REPO_ROOT / "examples" / "orchestrators"


def sbatch_options(script: Path) -> dict[str, str]:
    """The ``#SBATCH --key=value`` lines of a job script."""
    found = {}
    for match in re.finditer(r"^#SBATCH --([\w-]+)(?:=(\S+))?", script.read_text(), re.M):
        found[match.group(1)] = match.group(2) or ""
    return found


@pytest.fixture
def cluster(tmp_path: Path) -> dict:
    """A fake cluster: ``gpt-simple`` (the toy CLI) and ``scontrol`` (records its calls) on
    PATH, a 3-model sweep, and its unsharded output for reference."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "gpt-simple").write_text(
        f'#!/bin/sh\nexec {sys.executable} -m tests.support.toy_cli "$@"\n'
    )
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.log"}\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    for name in "abc":
        write_toy_checkpoint(tmp_path / name, script=name * 3)
    records = []
    for i in range(60):  # every record seeded: the template passes no run seed
        model = {"checkpoint": str(tmp_path / "abc"[i % 3])}
        generation = {"max_new_tokens": 2 + i % 3, "seed": i}
        records.append({"id": i, "prompt": "ab", "model": model, "generation": generation})
    write_jsonl(tmp_path / "sweep.jsonl", records)
    argv = ["batch-generate", "--input", "sweep.jsonl", "--output", "ref.jsonl"]
    ref = run_toy_cli(argv, cwd=tmp_path)
    assert ref.returncode == 0, ref.stderr
    env = subprocess_env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return {"folder": tmp_path, "env": env}


def run_task(cluster: dict, task: int, count: int, *, signal_after: float | None = None):
    """One array task of sweep.sbatch, as Slurm starts it (SIGUSR1 to the batch shell)."""
    env = dict(cluster["env"])
    env.update(
        SLURM_JOB_ID="77",
        SLURM_ARRAY_JOB_ID="77",
        SLURM_ARRAY_TASK_ID=str(task),
        SLURM_ARRAY_TASK_MIN="0",
        SLURM_ARRAY_TASK_COUNT=str(count),
        SLURM_CPUS_PER_TASK="1",
    )
    if signal_after is not None:
        env["TOY_DELAY"] = "0.3"  # slow enough for the signal to land mid-run
    proc = subprocess.Popen(
        ["bash", str(TEMPLATES / "slurm" / "sweep.sbatch"), "sweep.jsonl", "results"],
        cwd=cluster["folder"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    if signal_after is not None:
        time.sleep(signal_after)
        proc.send_signal(signal.SIGUSR1)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def test_the_slurm_script_asks_for_what_resume_needs():
    options = sbatch_options(TEMPLATES / "slurm" / "sweep.sbatch")
    assert options["signal"] == "B:USR1@120"
    assert "requeue" in options and "array" in options


def test_a_slurm_array_survives_a_time_limit_and_merges_back(cluster):
    folder = cluster["folder"]
    code, err = run_task(cluster, 0, 2, signal_after=1.5)  # the time limit is near: USR1
    assert code == 0, err
    assert "stopped (138), requeueing" in err
    assert (folder / "scontrol.log").read_text().split() == ["requeue", "77_0"]
    sidecar = folder / "results" / "shard-0.jsonl.gpt-simple"
    assert json.loads((sidecar / "manifest.json").read_text())["status"] == "stopped"
    for task in (0, 1):  # the requeued task resumes; the other runs whole
        code, err = run_task(cluster, task, 2)
        assert code == 0, err
    merge = subprocess.run(
        ["bash", str(TEMPLATES / "slurm" / "merge.sbatch"), "sweep.jsonl", "results", "2"],
        cwd=folder,
        env=cluster["env"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert merge.returncode == 0, merge.stderr
    merged = (folder / "results" / "results.jsonl").read_bytes()
    assert merged == (folder / "ref.jsonl").read_bytes()


# Kubernetes ---------------------------------------------------------------------------------
#: The batch/v1 Job fields the manifests use, with their types (from the Kubernetes API
#: reference, v1.33: Job, JobSpec, PodTemplateSpec, PodSpec, Container, Volume).
JOB_SCHEMA = {
    "apiVersion": str,
    "kind": str,
    "metadata": {"name": str},
    "spec": {
        "completionMode": str,
        "completions": int,
        "parallelism": int,
        "backoffLimit": int,
        "backoffLimitPerIndex": int,
        "maxFailedIndexes": int,
        "template": {
            "spec": {
                "restartPolicy": str,
                "terminationGracePeriodSeconds": int,
                "containers": [
                    {
                        "name": str,
                        "image": str,
                        "command": [str],
                        "args": [str],
                        "env": [{"name": str, "value": str}],
                        "resources": {"requests": {"cpu": str, "memory": str}},
                        "volumeMounts": [{"name": str, "mountPath": str}],
                    }
                ],
                "volumes": [{"name": str, "persistentVolumeClaim": {"claimName": str}}],
            }
        },
    },
}


def check_schema(value, schema, path="") -> list[str]:
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            return [f"{path}: must be an object"]
        problems = [f"{path}.{k}: not a batch/v1 field" for k in value if k not in schema]
        for key, sub in value.items():
            if key in schema:
                problems += check_schema(sub, schema[key], f"{path}.{key}")
        return problems
    if isinstance(schema, list):
        if not isinstance(value, list):
            return [f"{path}: must be a list"]
        found = [check_schema(item, schema[0], f"{path}[{i}]") for i, item in enumerate(value)]
        return [p for problems in found for p in problems]
    return [] if isinstance(value, schema) else [f"{path}: must be {schema.__name__}"]


@pytest.mark.parametrize("name", ["indexed-job.yaml", "merge-job.yaml"])
def test_kubernetes_manifests_use_only_batch_v1_fields_and_real_commands(name):
    manifest = yaml.safe_load((TEMPLATES / "kubernetes" / name).read_text())
    assert (manifest["apiVersion"], manifest["kind"]) == ("batch/v1", "Job")
    assert check_schema(manifest, JOB_SCHEMA) == []
    (container,) = manifest["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["gpt-simple"]
    argv = [a.replace("$(JOB_COMPLETION_INDEX)", "0") for a in container["args"]]
    args = build_parser().parse_args(argv)  # a real command line, or SystemExit
    if name == "indexed-job.yaml":
        spec = manifest["spec"]
        assert spec["completionMode"] == "Indexed" and "backoffLimitPerIndex" in spec
        assert args.command == "batch-generate" and args.shard == "auto" and args.resume
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["GPT_SIMPLE_SHARD_COUNT"] == str(spec["completions"])
        claim = manifest["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]
        assert claim["claimName"]
    else:
        assert args.command == "merge" and len(args.outputs) == 4


def test_the_schema_check_can_fail():
    assert check_schema({"spec": {"completionMod": "Indexed"}}, JOB_SCHEMA) == [
        ".spec.completionMod: not a batch/v1 field"
    ]
    wrong_type = check_schema({"spec": {"completions": "4"}}, JOB_SCHEMA)
    assert wrong_type == [".spec.completions: must be int"]
