"""The KServe InferenceServices of deploy/manifests/kserve, checked offline.

The InferenceService fields against a schema written from KServe's API types and webhook
validation (tests/deploy/schemas/kserve-v1beta1-inferenceservice.schema.json names the files);
the pod KServe builds from the predictor by kubernetes-validate; cmlfs's own commands by
cmlfs's argument parser; and what makes the switch from KServe's confidential serving worth
it: no storage initializer, so no plaintext copy of the model on any volume.
"""

import copy
import hashlib
import json
import os
import re
from pathlib import Path

import jsonschema
import pytest
import yaml
from jwcrypto import jwk

from cmlfs.cli import build_parser
from tests.conftest import run_cli
from tests.deploy.conftest import ROOT, kubernetes_validate
from tests.e2e.kbs_servers import cdh  # noqa: F401 - fixture
from tests.e2e.stores_servers import s3_server  # noqa: F401 - fixture
from tests.jwe_helpers import make_jwe

MANIFESTS = sorted((ROOT / "deploy" / "manifests" / "kserve").glob("*.yaml"))
COCO = ROOT / "deploy" / "manifests" / "kserve" / "inferenceservice-coco.yaml"
SIDECAR = ROOT / "deploy" / "manifests" / "kserve" / "inferenceservice-sidecar.yaml"
SCHEMA = json.loads(
    (Path(__file__).parent / "schemas" / "kserve-v1beta1-inferenceservice.schema.json").read_text()
)
# The predictor's fields that are not pod fields (predictor.go PredictorSpec and component.go
# ComponentExtensionSpec); every other predictor field is a PodSpec field (podspec.go).
NOT_POD_FIELDS = {
    "name",
    *["sklearn", "xgboost", "tensorflow", "pytorch", "triton", "onnx", "huggingface"],
    *["pmml", "lightgbm", "paddle", "model", "storageUris", "storageContainerName", "workerSpec"],
    *["minReplicas", "maxReplicas", "scaleTarget", "scaleMetric", "scaleMetricType"],
    *["autoScaling", "containerConcurrency", "timeout", "canaryTrafficPercent", "logger"],
    *["batcher", "labels", "annotations", "deploymentStrategy"],
}
KUBE_VERSIONS = ["1.29.0", "1.33.0"]


def load(path: Path) -> dict:
    (document,) = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return document


def schema_errors(isvc: dict) -> list[str]:
    validator = jsonschema.Draft202012Validator(SCHEMA)
    errors = [error.message for error in validator.iter_errors(isvc)]
    predictor = isvc.get("spec", {}).get("predictor", {})
    low, high = predictor.get("minReplicas", 1), predictor.get("maxReplicas", 0)
    if high and low > high:  # component.go validateReplicas
        errors.append(f"minReplicas {low} > maxReplicas {high}")
    return errors


def predictor_pod(isvc: dict) -> dict:
    """The Pod KServe makes of the predictor's pod fields."""
    predictor = isvc["spec"]["predictor"]
    spec = {key: value for key, value in predictor.items() if key not in NOT_POD_FIELDS}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "predictor"}, "spec": spec}


def expand(text: str, env: list[dict]) -> str:
    """Kubernetes' $(NAME) expansion of command and args from the container's env values."""
    values = {item["name"]: item["value"] for item in env if "value" in item}
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: values.get(m[1], m[0]), text)


def containers(isvc: dict) -> list[dict]:
    predictor = isvc["spec"]["predictor"]
    return [*predictor.get("initContainers", []), *predictor["containers"]]


def by_name(items: list[dict], name: str) -> dict:
    return next(item for item in items if item["name"] == name)


@pytest.fixture(params=MANIFESTS, ids=[path.name for path in MANIFESTS])
def isvc(request) -> dict:
    return load(request.param)


def test_both_deployment_modes_are_there():
    assert [path.name for path in MANIFESTS] == [
        "inferenceservice-coco.yaml",
        "inferenceservice-sidecar.yaml",
    ]


def test_inferenceservices_match_the_schema_written_from_kserve_types(isvc):
    assert schema_errors(isvc) == []


BREAKAGES = {
    "unknown predictor field": lambda p, i: p.update(initContainer=[]),
    "two predictor implementations": lambda p, i: p.update(model={"modelFormat": {"name": "x"}}),
    "two kserve-containers": lambda p, i: p["containers"].append(copy.deepcopy(p["containers"][0])),
    "name KServe refuses": lambda p, i: i["metadata"].update(name="Llama_3"),
    "blocked PYTHONPATH": lambda p, i: p["containers"][0]["env"].append(
        {"name": "PYTHONPATH", "value": "/x"}
    ),
    "PROTOCOL neither v1 nor v2": lambda p, i: p["containers"][0]["env"].append(
        {"name": "PROTOCOL", "value": "v3"}
    ),
    "unknown deployment mode": lambda p, i: i["metadata"]["annotations"].update(
        {"serving.kserve.io/deploymentMode": "Raw"}
    ),
    "relative storageUris mountPath": lambda p, i: p.update(
        storageUris=[{"uri": "s3://b/m", "mountPath": "models"}]
    ),
    "minReplicas above maxReplicas": lambda p, i: p.update(minReplicas=3, maxReplicas=2),
    "unknown spec field": lambda p, i: i["spec"].update(predictors={}),
}


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_the_schema_refuses_what_kserve_refuses(breakage):
    isvc = load(MANIFESTS[0])
    BREAKAGES[breakage](isvc["spec"]["predictor"], isvc)
    assert schema_errors(isvc), breakage


@pytest.mark.parametrize("kube", KUBE_VERSIONS)
def test_predictor_pods_pass_strict_kubernetes_validation(kube, tmp_path):
    pods = tmp_path / "pods.yaml"
    pods.write_text(yaml.safe_dump_all([predictor_pod(load(path)) for path in MANIFESTS]))
    kubernetes_validate(pods, kube)


def test_no_storage_initializer_so_no_plaintext_copy(isvc):
    """storageUri, storageUris, a STORAGE_URI env (predictor_custom.go GetStorageUri) or
    `confidential` would make KServe download, and decrypt, the whole model to a volume."""
    predictor = isvc["spec"]["predictor"]
    assert not {"storageUris", "storageUri", "confidential"} & set(predictor)
    assert not any(
        item["name"] == "STORAGE_URI" for c in containers(isvc) for item in c.get("env", [])
    )
    for volume in predictor["volumes"]:  # nothing persistent: the mount is the only model copy
        assert set(volume) & {"emptyDir", "configMap", "secret"}, volume


def test_coco_variant_runs_the_server_under_cmlfs_run_with_http_probes_only():
    isvc = load(COCO)
    predictor = isvc["spec"]["predictor"]
    assert predictor["runtimeClassName"].startswith("kata-")
    assert "initContainers" not in predictor
    (server,) = predictor["containers"]
    command = [expand(part, server["env"]) for part in server["command"]]
    assert command[:2] == ["cmlfs", "run"]
    args = build_parser().parse_args(command[1:])
    assert args.key_uri.startswith("kbs:///")  # a resource ID, through the pod's data hub
    assert args.store.startswith("s3://")
    served = [part.removeprefix("--model=") for part in args.command if part.startswith("--model=")]
    assert served == [str(args.mount)]
    mounted_volume = by_name(server["volumeMounts"], "model-volume")["mountPath"]
    assert args.mount.parent == Path(mounted_volume)  # a subdirectory, never the volume root
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert "exec" not in server[probe] and "httpGet" in server[probe]
    status_port = by_name(server["ports"], "cmlfs-status")["containerPort"]
    assert args.http[1] == status_port


@pytest.mark.fuse
def test_the_coco_command_serves_a_kserve_jwe_folder_from_s3_with_the_key_by_resource_id(
    s3_server,  # noqa: F811 - fixture
    cdh,  # noqa: F811 - fixture
    tmp_path,
):
    """The kserve-container's command as the manifest writes it, run for real: its store
    (in S3, moto), key URI and cmlfs options verbatim; only the mountpoint, the status port
    and the server (a digest of what it reads) are local. The folder is KServe-style JWE made
    with jwcrypto, the broker resource a JWK served by the data hub as KServe's users keep
    it, found through $CDH_ADDR as KServe's storage initializer finds it."""
    (server,) = load(COCO)["spec"]["predictor"]["containers"]
    command = [expand(part, server["env"]) for part in server["command"]]
    split = command.index("--")
    options = {part.partition("=")[0]: part for part in command[2:split]}
    store = options["--store"].partition("=")[2]
    bucket, _, prefix = store.removeprefix("s3://").partition("/")
    resource = options["--key-uri"].partition("=")[2].removeprefix("kbs:///")
    key = jwk.JWK.generate(kty="oct", size=256)
    contents = {"model.safetensors": os.urandom(3 << 20), "config.json": b'{"layers": 32}'}
    client = s3_server.client()
    for name, data in contents.items():
        client.put_object(Bucket=bucket, Key=f"{prefix}/{name}.jwe", Body=make_jwe(data, key))
    cdh.routes[("GET", f"/cdh/resource/{resource}")] = lambda body: (200, key.export().encode())
    mnt = tmp_path / "mnt" / "models"
    options["--mount"] = f"--mount={mnt}"
    options["--http"] = "--http=127.0.0.1:0"
    digest = (
        "import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], 'rb').read()).hexdigest())"
    )
    reader = ["--", "python3", "-c", digest, str(mnt / "model.safetensors")]
    env = {**os.environ, **s3_server.env, "CDH_ADDR": f"http://{cdh.address}"}
    result = run_cli("run", *options.values(), *reader, env=env)
    assert result.stdout.split() == [hashlib.sha256(contents["model.safetensors"]).hexdigest()]
    assert cdh.requests == [("GET", f"/cdh/resource/{resource}")]
    assert not os.path.ismount(mnt)


def test_sidecar_variant_propagates_the_mount_to_an_unprivileged_server():
    isvc = load(SIDECAR)
    predictor = isvc["spec"]["predictor"]
    (sidecar,) = predictor["initContainers"]
    (server,) = predictor["containers"]
    assert sidecar["restartPolicy"] == "Always" and sidecar["securityContext"]["privileged"]
    env = {item["name"]: item["value"] for item in sidecar["env"]}
    # what container/entrypoint.sh runs
    args = build_parser().parse_args(
        ["mount", env["CMLFS_STORE"], env["CMLFS_MOUNT"], "--foreground", "--allow-other"]
        + sidecar["args"]
        + ["--key-uri", env["CMLFS_KEY_URI"], "--http", env["CMLFS_HTTP"]]
    )
    assert args.key_uri.startswith("kbs://kbs.")
    sidecar_volume = by_name(sidecar["volumeMounts"], "model-volume")
    server_volume = by_name(server["volumeMounts"], "model-volume")
    assert sidecar_volume["mountPropagation"] == "Bidirectional"
    assert server_volume["mountPropagation"] == "HostToContainer" and server_volume["readOnly"]
    assert Path(env["CMLFS_MOUNT"]).parent == Path(sidecar_volume["mountPath"])
    assert server_volume["mountPath"] == sidecar_volume["mountPath"]
    assert f"--model={env['CMLFS_MOUNT']}" in server["args"]
    context = server["securityContext"]
    assert context["capabilities"]["drop"] == ["ALL"] and not context.get("privileged")
    assert context["readOnlyRootFilesystem"] and context["runAsNonRoot"]
    assert env["CMLFS_MOUNT"] in " ".join(sidecar["startupProbe"]["exec"]["command"])
