"""What the `kubernetes` executor sends, checked strictly: every Job and ConfigMap it wrote to the (FAKE) API server
passes `kubernetes-validate --strict` (tests/k8s_checks.py), and a deliberately broken Job fails it; the book's
multi-worker pod for a chain (init containers, each adapter's image, the handoff between them, run here for real);
the one-container pod of in-process workers; the `kubernetes:` spec section's errors (exit 2)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from k8s_checks import errors, need
from kubernetes import client as k8s
from test_executor_kubernetes import counts, dispatch, item_of, wait_for, write_spec
from test_executor_kubernetes_api import FakeCluster, Run, api_client

from services.core import Keys, Settings, list_dead_letters
from services.core.item import WorkItem
from services.core.results import results
from services.core.spec import SpecError, load_pipeline
from services.manager.executors import StageContext, stage_settings
from services.manager.executors.kubernetes import KubernetesExecutor
from services.manager.executors.kubernetes_handoff import handoff, main
from services.manager.executors.kubernetes_job import JobBuilder

CHAIN = {"chain": [{"command": ["thumb", "--size", "64"]}, {"command": ["python", "/app/tag.py"], "env": {"K": "v"}},
                   {"command": ["upload"]}],
         "env": {"STAGE": "1"}, "kubernetes": {"images": {0: "example.com/ffmpeg:6"}}}


def _run(client_: redis.Redis, settings: Settings, tmp_path: Path, name: str, work: dict[str, Any],
         script: Any, items: dict[str, dict[str, Any]], done: int = 0, dead: int = 0,
         timeout: float = 15) -> FakeCluster:
    path = write_spec(tmp_path / f"{len(list(tmp_path.iterdir()))}.yaml", name, copy.deepcopy(work))
    pipeline = load_pipeline(path)
    cluster = FakeCluster(script)
    ctx = StageContext(client_, pipeline, "w", stage_settings(pipeline, "w", settings), path)
    executor = KubernetesExecutor(ctx, api_client=api_client(cluster))
    executor.start()
    try:
        dispatch(client_, name, items)
        wait_for(lambda: counts(client_, name)["done"] == done and counts(client_, name)["dead"] == dead,
                 what=f"{done} done, {dead} dead", timeout=timeout)
    finally:
        executor.stop(10)
    return cluster


def _job(cluster: FakeCluster) -> dict[str, Any]:
    return next(d for d in cluster.sent if d["kind"] == "Job" and "template" in d.get("spec", {}))


# -- the multi-worker pod ------------------------------------------------------------------------------------

def test_a_chain_of_commands_is_one_pod_of_init_containers(client: redis.Redis, settings: Settings, tmp_path: Path,
                                                          pipeline_name: str) -> None:
    def script(job: dict[str, Any], attempt: int, files: dict[str, str]) -> Run:
        if item_of(files)["data"].get("bad"):
            return Run("fail", "thumb: not a video", exit_code=4, container=0)  # the first adapter fails
        return Run("ok", '{"uploaded": true}')

    cluster = _run(client, settings, tmp_path, pipeline_name, CHAIN, script, {"ok": {}, "bad": {"bad": 1}},
                   done=1, dead=1)
    assert results(client, Keys(pipeline_name)) == {"ok": {"uploaded": True}}  # the last container's log
    (letter,) = list_dead_letters(client, Keys(pipeline_name), "w")
    assert "exit code 4 in container a0-0-thumb" in letter.reason and letter.reason.endswith("not a video")
    pod = _job(cluster)["spec"]["template"]["spec"]
    init, (last,) = pod["initContainers"], pod["containers"]
    assert [c["name"] for c in init] == ["a0-0-thumb", "handoff-1", "a1-1-tag-py", "handoff-2"]
    assert last["name"] == "a2-2-upload" and last["command"] == ["upload"]
    assert [c["image"] for c in [*init, last]] == ["example.com/ffmpeg:6", "batchmesh:0.1.0", "example.com/worker:1",
                                                   "batchmesh:0.1.0", "example.com/worker:1"]
    env = [{e["name"]: e["value"] for e in c["env"]} for c in (init[0], init[2], last)]
    assert env[0] == {"STAGE": "1", "WORK_ITEM_FILE": "/batchmesh/item/item.json",
                      "WORK_OUTPUT_DIR": "/batchmesh/out/0-0-thumb"}
    assert env[1] == {"STAGE": "1", "K": "v", "WORK_ITEM_FILE": "/batchmesh/handoff/1.json",
                      "WORK_OUTPUT_DIR": "/batchmesh/out/1-1-tag-py"}
    assert env[2]["WORK_ITEM_FILE"] == "/batchmesh/handoff/2.json"
    # the handoff reads adapter 0's result.json and writes adapter 1's item document
    step = init[1]["command"]
    assert step[:3] == ["python", "-m", "services.manager.executors.kubernetes_handoff"]
    assert step[step.index("--result") + 1] == "/batchmesh/out/0-0-thumb/result.json"
    assert step[step.index("--next") + 1] == "/batchmesh/handoff/1.json"
    # every later container sees every earlier output read-only, at the same path; each writes only its own
    mounts = {m["mountPath"]: m.get("readOnly", False) for m in last["volumeMounts"]}
    assert mounts["/batchmesh/out/0-0-thumb"] and mounts["/batchmesh/out/1-1-tag-py"]
    assert not mounts["/batchmesh/out/2-2-upload"] and mounts["/batchmesh/handoff"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert all("emptyDir" in volumes[n] for n in ("out-0", "out-1", "out-2", "handoff", "tmp"))
    assert _job(cluster)["spec"]["template"]["spec"]["activeDeadlineSeconds"] == 3 * 30  # a timeout per adapter


def test_the_handoff_step_passes_the_result_on(tmp_path: Path) -> None:
    item, result, nxt = tmp_path / "item.json", tmp_path / "result.json", tmp_path / "1.json"
    item.write_text(json.dumps({"id": "v1", "name": "v1", "data": {"uri": "x"}, "version": "7", "batch": "b",
                                "attempt": 2}))
    assert handoff(item, result, nxt, "chain[0] thumb") == 1  # no result.json: the pod fails, saying why
    result.write_text('{"thumb": "/batchmesh/out/0-thumb/t.png"}')
    assert main(["--item", str(item), "--result", str(result), "--next", str(nxt), "--adapter", "chain[0] thumb"]) == 0
    assert json.loads(nxt.read_text()) == {"id": "v1", "name": "v1", "data": {"thumb": "/batchmesh/out/0-thumb/t.png"},
                                           "version": "7", "batch": "b", "attempt": 2}
    result.write_text("[1, 2]")
    assert handoff(item, result, nxt, "chain[0] thumb") == 0 and json.loads(nxt.read_text())["data"] == {
        "result": [1, 2]}


def test_missing_result_json_names_the_adapter(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    item = tmp_path / "item.json"
    item.write_text('{"id": "a", "data": {}}')
    assert handoff(item, tmp_path / "none.json", tmp_path / "n.json", "chain[1] tag.py") == 1
    assert "chain[1] tag.py wrote no" in capsys.readouterr().err


def test_in_process_workers_run_once_in_one_container(client: redis.Redis, settings: Settings, tmp_path: Path,
                                                     pipeline_name: str) -> None:
    work = {"chain": [{"command": ["thumb"]}, {"worker": "upper"}], "env": {"A": "1"}}
    cluster = _run(client, settings, tmp_path, pipeline_name, work, lambda *_: Run("ok", '{"x": 1}'), {"a": {}},
                   done=1)
    job = _job(cluster)
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert "initContainers" not in job["spec"]["template"]["spec"]
    spec_path = container["command"][container["command"].index("--pipeline") + 1]
    assert container["command"][:3] == ["python", "-m", "services.workers.once"] and Path(spec_path).is_absolute()
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == spec_path)
    assert mount == {"name": "item", "mountPath": spec_path, "subPath": "pipeline.yaml", "readOnly": True}
    cm = next(d for d in cluster.sent if d["kind"] == "ConfigMap")
    assert cm["data"]["pipeline.yaml"] == Path(spec_path).read_text()  # the spec the manager runs, in the pod


# -- every object sent is strictly valid -----------------------------------------------------------------------

def _sent(client_: redis.Redis, settings: Settings, tmp_path: Path, name: str) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for i, work in enumerate([{"command": ["python", "work.py"], "kubernetes": {
                                  "service_account": "worker", "resources": {"limits": {"cpu": "2", "memory": "2Gi"}},
                                  "user": 2000, "tmp": "128Mi", "output": "5Gi"}},
                              CHAIN, {"chain": [{"command": ["a"]}, {"worker": "upper"}]}]):
        cluster = _run(client_, settings, tmp_path, f"{name}{i}", work, lambda *_: Run("ok", "{}"), {"a": {}}, done=1)
        docs += cluster.sent
    return docs


def test_every_object_the_executor_sends_is_strictly_valid(client: redis.Redis, settings: Settings, tmp_path: Path,
                                                          pipeline_name: str) -> None:
    need("kubernetes-validate (pip)", _importable("kubernetes_validate"))
    docs = _sent(client, settings, tmp_path, pipeline_name)
    kinds = [d["kind"] for d in docs]
    assert kinds.count("ConfigMap") == 3 and kinds.count("Job") == 3
    api = k8s.ApiClient()
    for doc in docs:
        model = {"Job": "V1Job", "ConfigMap": "V1ConfigMap"}[doc["kind"]]
        # what the client sends is the model, serialised: nothing of ours may get lost on the way
        serialised = api.sanitize_for_serialization(getattr(k8s, model).from_dict(doc))
        assert serialised == doc, f"the client's {model} drops or changes fields of ours"
        assert errors(serialised) == [], errors(serialised)
    job = next(d for d in docs if d["kind"] == "Job" and "template" in d["spec"])
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == "worker"


def test_a_broken_job_fails_the_strict_check(tmp_path: Path) -> None:
    need("kubernetes-validate (pip)", _importable("kubernetes_validate"))
    pipeline = load_pipeline(write_spec(tmp_path / "p.yaml", "p", copy.deepcopy(CHAIN)))
    work = pipeline.stages["w"].body
    builder = JobBuilder("p", "w", work, work.kubernetes, max_deliveries=3, once_argv=None, spec_path=None)
    good = builder.job("bm-w-0123456789abcdef", WorkItem(id="a", version="1"), "1-0")
    assert errors(good) == []
    wrong_type = copy.deepcopy(good)
    wrong_type["spec"]["backoffLimit"] = "two"
    assert any("backoffLimit" in e for e in errors(wrong_type)), errors(wrong_type)
    unknown = copy.deepcopy(good)
    unknown["spec"]["template"]["spec"]["containers"][0]["securityContext"]["runAsNonroot"] = True
    assert errors(unknown), "an unknown field passed the strict check"
    missing = copy.deepcopy(good)
    del missing["spec"]["template"]["spec"]["containers"][0]["name"]
    assert errors(missing), "a container without a name passed"


def _importable(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


# -- the spec section --------------------------------------------------------------------------------------------

def _spec(tmp_path: Path, work: dict[str, Any]) -> Path:
    spec = {"apiVersion": "batchmesh/v1", "kind": "Pipeline", "name": "k",
            "source": {"type": "jsonl", "path": "items.jsonl"},
            "stages": {"w": {"work": {"input": "source", "executor": "kubernetes", "command": ["x"], **work}}}}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.parametrize(("work", "where", "why"), [
    ({}, "stages.w.work", "executor kubernetes needs a kubernetes section naming the image"),
    ({"kubernetes": {"namespace": "x"}}, "stages.w.work.kubernetes.image", "Field required"),
    ({"kubernetes": {"image": "i", "images": {0: "j"}}}, "stages.w.work", "chain of commands only"),
    ({"kubernetes": {"image": "i", "resources": {"limits": {"memory": "lots"}}}}, "stages.w.work.kubernetes.resources",
     "not a Kubernetes quantity"),
    ({"kubernetes": {"image": "i", "user": 0}}, "stages.w.work.kubernetes.user", "greater than or equal to 1"),
    ({"kubernetes": {"image": "i", "namespace": "Not_A_Name"}}, "stages.w.work.kubernetes.namespace", "lowercase"),
    ({"executor": "process", "kubernetes": {"image": "i"}}, "stages.w.work", "used by executor kubernetes only"),
    ({"command": None, "chain": [{"command": ["a"]}], "kubernetes": {"image": "i", "images": {3: "j"}}},
     "stages.w.work", "kubernetes.images: no chain adapter 3"),
])
def test_the_spec_section_says_what_is_wrong(tmp_path: Path, work: dict[str, Any], where: str, why: str) -> None:
    with pytest.raises(SpecError) as bad:
        load_pipeline(_spec(tmp_path, work))
    assert bad.value.path == where and why in bad.value.reason, (bad.value.path, bad.value.reason)


def test_a_missing_image_exits_2_and_a_valid_stage_passes_preflight(tmp_path: Path) -> None:
    from services.runner.preflight import check

    done = subprocess.run([sys.executable, "-m", "services.cli", "validate", str(_spec(tmp_path, {}))],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "kubernetes section naming the image" in done.stderr, done.stderr
    # its command runs in its image: not looked for on this machine's PATH
    pipeline = load_pipeline(_spec(tmp_path, {"command": ["no-such-program-here"], "kubernetes": {"image": "i"}}))
    assert check(pipeline, input_given=False).errors == []


# -- the multi-worker pod, run for real by a local stand-in for the kubelet ------------------------------------

ROOT = Path(__file__).resolve().parents[2]
THUMB = """import json, os
item = json.load(open(os.environ["WORK_ITEM_FILE"]))
out = os.environ["WORK_OUTPUT_DIR"]
if item["data"].get("broken"):
    raise SystemExit("thumb: " + item["id"] + " is not a video")
path = os.path.join(out, "thumb.txt")
open(path, "w").write("thumbnail of " + item["data"]["uri"])
json.dump({"thumb": path, "size": 64}, open(os.path.join(out, "result.json"), "w"))
print("this stdout goes to the pod's log only")
"""
TAG = """import json, os
item = json.load(open(os.environ["WORK_ITEM_FILE"]))
text = open(item["data"]["thumb"]).read()
print("tagging", item["id"])
print(json.dumps({"id": item["id"], "attempt": item["attempt"], "tag": text.upper(), "size": item["data"]["size"]}))
"""


def local_kubelet(root: Path) -> Any:
    """Runs a Job pod's containers in order as local processes: volumes are directories under `root` (the
    ConfigMap's keys written as files), each mountPath but /tmp mapped to its directory in env and argv, `python` the
    test's interpreter. A STAND-IN for a kubelet (no isolation, no read-only mounts): it shows the handoff works."""
    def script(job: dict[str, Any], attempt: int, files: dict[str, str]) -> Run:
        pod = job["spec"]["template"]["spec"]
        base = root / job["metadata"]["name"] / str(attempt)
        for volume in pod["volumes"]:
            (base / volume["name"]).mkdir(parents=True)
        for key, text in files.items():
            (base / "item" / key).write_text(text)
        containers = [*pod.get("initContainers", []), *pod["containers"]]
        log = ""
        for index, container in enumerate(containers):
            mounts = sorted(((m["mountPath"], base / m["name"] / m.get("subPath", ""))
                             for m in container["volumeMounts"] if m["mountPath"] != "/tmp"),  # the tests' files
                            key=lambda m: -len(m[0]))

            def host(value: str, mounts: list[tuple[str, Path]] = mounts) -> str:
                for pod_path, local in mounts:
                    if value == pod_path or value.startswith(pod_path + "/"):
                        return str(local) + value[len(pod_path):]
                return value

            argv = [sys.executable if a == "python" else host(a) for a in container["command"]]
            env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)} | {e["name"]: host(e["value"])
                                                                         for e in container["env"]}
            if argv[1:3] == ["-m", "services.manager.executors.kubernetes_handoff"]:  # in-process: saves a start-up
                code, log = main(argv[3:]), ""
            else:
                done = subprocess.run(argv, env=env, cwd=root, capture_output=True, text=True, timeout=60)
                code, log = done.returncode, done.stdout + done.stderr
            if code:
                return Run("fail", log, exit_code=code, container=index)
        return Run("ok", log)
    return script


def test_the_multi_worker_pod_hands_each_result_to_the_next(client: redis.Redis, settings: Settings,
                                                           tmp_path: Path, pipeline_name: str) -> None:
    (tmp_path / "run").mkdir()
    for name, text in (("thumb.py", THUMB), ("tag.py", TAG)):
        (tmp_path / "run" / name).write_text(text)
    work = {"chain": [{"command": ["python", str(tmp_path / "run" / "thumb.py")]},
                      {"command": ["python", str(tmp_path / "run" / "tag.py")]}], "max_deliveries": 1}
    _run(client, settings, tmp_path, pipeline_name, work, local_kubelet(tmp_path / "run"),
         {"v1": {"uri": "file:///v1.mp4"}, "v2": {"broken": True}}, done=1, dead=1, timeout=30)
    assert results(client, Keys(pipeline_name)) == {
        "v1": {"id": "v1", "attempt": 1, "tag": "THUMBNAIL OF FILE:///V1.MP4", "size": 64}}
    (letter,) = list_dead_letters(client, Keys(pipeline_name), "w")
    assert "in container a0-0-thumb-py" in letter.reason and letter.reason.endswith("thumb: v2 is not a video")
