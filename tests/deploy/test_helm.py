"""The Helm chart: lint, render for K8s 1.29 and 1.33, strict schema validation, pod shape."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.conftest import CHART, ROOT, kubernetes_validate, tool

KUBE_VERSIONS = ["1.29.0", "1.33.0"]
EXAMPLES = ["vllm-values.yaml", "tgi-values.yaml", "tei-values.yaml"]
STORE = "https://models.example/m"
KEY_ID = "0123456789abcdef0123456789abcdef"


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([tool("helm"), *args], capture_output=True, text=True, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)}: {result.stderr}")
    return result


def template(*values: str, chart: Path = CHART, kube: str = "1.33.0") -> str:
    """``helm template`` with ``--set`` VALUES (``-f`` for items naming a values file)."""
    args = ["template", "t", str(chart), "--kube-version", kube]
    for value in values:
        args += ["-f", str(CHART / value)] if value.endswith(".yaml") else ["--set", value]
    return helm(*args).stdout


def render(*values: str, chart: Path = CHART) -> dict[str, dict]:
    """kind -> object of the rendered chart."""
    return {doc["kind"]: doc for doc in yaml.safe_load_all(template(*values, chart=chart)) if doc}


def pod(*values: str) -> dict:
    return render(*values)["Deployment"]["spec"]["template"]["spec"]


def by_name(items: list[dict], name: str) -> dict:
    return next(item for item in items if item["name"] == name)


@pytest.mark.parametrize("values", [[], *[["-f", str(CHART / f)] for f in EXAMPLES]])
def test_helm_lint_strict(values):
    result = helm("lint", "--strict", str(CHART), *values)
    assert "0 chart(s) failed" in result.stdout


VARIANTS = {
    "default": [],
    "sidecar": ["cmlfs.enabled=true", f"cmlfs.store={STORE}"],
    "plain-sidecar": ["cmlfs.enabled=true", f"cmlfs.store={STORE}", "cmlfs.nativeSidecar=false"],
    "tdx-pvc": ["tdxEnabled=true", "global.modelUsePVC=models"],
    "in-container-accepted": [
        "cmlfs.enabled=true",
        f"cmlfs.store={STORE}",
        "cmlfs.mode=in-container",
        "command={vllm,serve}",
        "cmlfs.acceptPrivilegedServer=true",
    ],
    "trusted-publisher": [
        "cmlfs.enabled=true",
        f"cmlfs.store={STORE}",
        "cmlfs.trustedPublisher.secretName=publisher",
        "cmlfs.minModelVersion=1.2.0",
    ],
    **{name.removesuffix("-values.yaml"): [name] for name in EXAMPLES},
}


@pytest.mark.parametrize("kube", KUBE_VERSIONS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_rendered_objects_pass_strict_kubernetes_validation(variant, kube, tmp_path):
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(template(*VARIANTS[variant], kube=kube))
    kubernetes_validate(rendered, kube)


def test_cmlfs_is_off_by_default_and_the_model_volume_is_opea_style():
    spec = pod()
    assert "initContainers" not in spec
    assert [c["name"] for c in spec["containers"]] == ["server"]
    server = spec["containers"][0]
    assert by_name(server["volumeMounts"], "model-volume") == {
        "name": "model-volume",
        "mountPath": "/data",
    }
    assert server["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert server["securityContext"]["readOnlyRootFilesystem"] is True
    assert server["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "runtimeClassName" not in spec
    hostpath = pod("global.modelUseHostPath=/mnt/models")
    assert by_name(hostpath["volumes"], "model-volume")["hostPath"]["path"] == "/mnt/models"


def test_tdx_selects_the_kata_tdx_runtime_class():
    assert pod("tdxEnabled=true")["runtimeClassName"] == "kata-qemu-tdx"
    assert pod("tdxEnabled=true", "runtimeClassName=kata-cc")["runtimeClassName"] == "kata-cc"


def test_sidecar_propagates_its_mount_to_the_server_from_a_subdirectory():
    spec = pod("cmlfs.enabled=true", f"cmlfs.store={STORE}")
    (sidecar,) = spec["initContainers"]
    (server,) = spec["containers"]
    assert sidecar["restartPolicy"] == "Always"  # a native sidecar: starts first, stops last
    assert sidecar["securityContext"]["privileged"] is True
    shared = by_name(sidecar["volumeMounts"], "model-volume")
    assert shared["mountPropagation"] == "Bidirectional"
    seen = by_name(server["volumeMounts"], "model-volume")
    assert seen["mountPropagation"] == "HostToContainer"
    assert seen["mountPath"] == shared["mountPath"] == "/data"
    assert "privileged" not in server["securityContext"]
    env = {e["name"]: e.get("value") for e in sidecar["env"]}
    assert env["CMLFS_MOUNT"] == "/data/model"  # a subdirectory, never the volume root
    assert env["CMLFS_STORE"] == STORE
    assert by_name(spec["volumes"], "model-volume") == {"name": "model-volume", "emptyDir": {}}
    probe = sidecar["startupProbe"]["exec"]["command"]
    assert probe[-1] == "/proc/self/mountinfo" and " /data/model " in probe[-2]
    assert sidecar["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "cmlfs-status"}
    assert "--allow-other" in sidecar["args"]


def test_the_model_directory_and_volume_are_configurable():
    spec = pod(
        "cmlfs.enabled=true",
        f"cmlfs.store={STORE}",
        "cmlfs.mountPath=/models",
        "cmlfs.modelDir=llama",
    )
    env = {e["name"]: e.get("value") for e in spec["initContainers"][0]["env"]}
    assert env["CMLFS_MOUNT"] == "/models/llama"
    assert by_name(spec["containers"][0]["volumeMounts"], "model-volume")["mountPath"] == "/models"


def test_plain_sidecar_for_older_clusters_blocks_the_server_in_post_start():
    spec = pod("cmlfs.enabled=true", f"cmlfs.store={STORE}", "cmlfs.nativeSidecar=false")
    assert "initContainers" not in spec
    sidecar, server = spec["containers"]
    assert sidecar["name"] == "cmlfs" and server["name"] == "server"
    assert "restartPolicy" not in sidecar
    assert "fuse.cmlfs" in sidecar["lifecycle"]["postStart"]["exec"]["command"][-1]


def test_secrets_and_config_maps_feed_the_sidecar():
    spec = pod("vllm-values.yaml")
    sidecar = spec["initContainers"][0]
    assert "--kbs-ca=/etc/cmlfs/kbs-ca/ca.crt" in sidecar["args"]
    assert "--registry-auth-file=/etc/cmlfs/registry/.dockerconfigjson" in sidecar["args"]
    assert by_name(spec["volumes"], "cmlfs-kbs-ca")["configMap"]["name"] == "kbs-ca"
    auth = by_name(spec["volumes"], "cmlfs-registry-auth")["secret"]
    assert auth == {"secretName": "model-registry-auth", "defaultMode": 0o400}
    mounted = {m["name"]: m for m in sidecar["volumeMounts"]}
    assert mounted["cmlfs-registry-auth"]["readOnly"] is True
    tei = pod("tei-values.yaml")["initContainers"][0]
    assert "--store-header-file=/etc/cmlfs/store-headers/headers" in tei["args"]
    assert tei["startupProbe"]["httpGet"]["path"] == "/readyz"  # no exec probe at all
    assert "exec" not in tei["startupProbe"]


def test_a_private_store_ca_is_mounted_and_passed_in_both_modes():
    for values in ("vllm-values.yaml", "tgi-values.yaml"):
        spec = pod(values, "cmlfs.storeCA.configMapName=bucket-ca", "cmlfs.storeCA.key=root.pem")
        container = (spec.get("initContainers") or spec["containers"])[0]
        flags = container.get("args") or container["command"]
        assert "--store-ca=/etc/cmlfs/store-ca/root.pem" in flags
        assert by_name(spec["volumes"], "cmlfs-store-ca")["configMap"]["name"] == "bucket-ca"
        mount = by_name(container["volumeMounts"], "cmlfs-store-ca")
        assert mount["mountPath"] == "/etc/cmlfs/store-ca" and mount["readOnly"] is True
    spec = pod("vllm-values.yaml")
    assert not any("--store-ca" in a for a in spec["initContainers"][0]["args"])
    assert not any(v["name"] == "cmlfs-store-ca" for v in spec["volumes"])


def test_azure_vtpm_attester_and_its_addresses_reach_the_daemon():
    values = ("vllm-values.yaml", "cmlfs.attester=az-snp-vtpm")
    args = pod(*values)["initContainers"][0]["args"]
    assert "--attester=az-snp-vtpm" in args
    assert not any(a.startswith(("--tpm-tcti", "--metadata-url")) for a in args)  # defaults
    tcti, url = "device:/dev/tpmrm0", "http://169.254.169.254"
    args = pod(*values, f"cmlfs.vtpm.tcti={tcti}", f"cmlfs.vtpm.metadataUrl={url}")
    assert {f"--tpm-tcti={tcti}", f"--metadata-url={url}"} <= set(args["initContainers"][0]["args"])


def test_a_vtpm_device_plugin_resource_is_requested_by_the_container_that_attests(tmp_path):
    """cmlfs.vtpm.deviceResource: the sidecar, or in in-container mode the server container,
    asks for one of the device plugin's vTPM resource, beside its other resources."""
    device = "cmlfs.vtpm.deviceResource=example.com/tpmrm"
    sidecar = pod("vllm-values.yaml", "cmlfs.attester=az-snp-vtpm", device)
    resources = sidecar["initContainers"][0]["resources"]
    assert resources["limits"] == {"example.com/tpmrm": 1, "memory": "2Gi"}
    assert resources["requests"] == {"cpu": "1", "memory": "1536Mi"}
    assert "example.com/tpmrm" not in str(by_name(sidecar["containers"], "server"))
    server = pod("tgi-values.yaml", device, "resources.limits.cpu=4")["containers"][0]
    assert server["resources"] == {"limits": {"cpu": 4, "example.com/tpmrm": 1}}
    assert "resources" not in pod("tgi-values.yaml")["containers"][0]
    rendered = tmp_path / "in-container.yaml"
    rendered.write_text(template("tgi-values.yaml", device))
    kubernetes_validate(rendered, "1.33.0")


def test_a_trusted_publisher_key_is_mounted_and_passed_in_both_modes():
    """From a ConfigMap or a Secret, to the sidecar (vLLM) or the in-container server (TGI)."""
    for values in ("vllm-values.yaml", "tgi-values.yaml"):
        for source, kind, name in (
            ("configMapName", "configMap", {"name": "acme"}),
            ("secretName", "secret", {"secretName": "acme"}),
        ):
            spec = pod(
                values, f"cmlfs.trustedPublisher.{source}=acme", "cmlfs.minModelVersion=1.2.0"
            )
            container = (spec.get("initContainers") or spec["containers"])[0]
            flags = container.get("args") or container["command"]
            assert "--trust-publisher=/etc/cmlfs/trust-publisher/publisher.pub" in flags
            assert "--min-model-version=1.2.0" in flags
            volume = by_name(spec["volumes"], "cmlfs-trust-publisher")
            assert set(volume) == {"name", kind}
            assert volume[kind] == name
            mount = by_name(container["volumeMounts"], "cmlfs-trust-publisher")
            assert mount["mountPath"] == "/etc/cmlfs/trust-publisher" and mount["readOnly"] is True
    spec = pod("vllm-values.yaml", "cmlfs.trustedPublisher.configMapName=acme")
    assert (
        "--trust-publisher=/etc/cmlfs/trust-publisher/publisher.pub"
        in (spec["initContainers"][0]["args"])
    )
    assert not any("--min-model-version" in a for a in spec["initContainers"][0]["args"])
    spec = pod("vllm-values.yaml")
    assert not any("--trust-publisher" in a for a in spec["initContainers"][0]["args"])
    assert not any(v["name"] == "cmlfs-trust-publisher" for v in spec["volumes"])


def test_in_container_mode_wraps_the_server_command_without_propagation():
    spec = pod("tgi-values.yaml")
    assert "initContainers" not in spec
    assert spec["runtimeClassName"] == "kata-qemu-tdx"
    (server,) = spec["containers"]
    command = server["command"]
    assert command[:2] == ["cmlfs", "run"]
    separator = command.index("--")
    assert command[separator + 1 :] == [
        "text-generation-launcher",
        "--model-id=/data/model",
        "--port=8080",
    ]
    assert "--store=$(CMLFS_STORE)" in command[:separator]
    assert "args" not in server
    env = {e["name"]: e for e in server["env"]}
    assert env["CMLFS_STORE"]["valueFrom"]["configMapKeyRef"] == {
        "name": "model-location",
        "key": "store",
    }
    assert server["envFrom"] == [{"secretRef": {"name": "model-bucket-credentials"}}]
    assert "mountPropagation" not in by_name(server["volumeMounts"], "model-volume")
    assert server["securityContext"]["privileged"] is True


def test_in_container_mode_renders_only_with_a_confidential_runtime_or_an_explicit_yes():
    """The server container mounts FUSE itself, so it runs privileged: on a normal node that is
    a privileged model server, which the operator must say they accept."""
    base = ["cmlfs.enabled=true", f"cmlfs.store={STORE}", "cmlfs.mode=in-container"]
    base += ["command={vllm,serve}", "cmlfs.keyId=" + KEY_ID]
    refused = helm("template", "t", str(CHART), *(f"--set={v}" for v in base), check=False)
    assert refused.returncode != 0
    assert "tdxEnabled=true or runtimeClassName" in refused.stderr
    assert "cmlfs.acceptPrivilegedServer=true" in refused.stderr
    for choice in ("tdxEnabled=true", "runtimeClassName=kata-qemu-snp"):
        (server,) = pod(*base, choice)["containers"]
        assert server["securityContext"]["privileged"] is True and server["command"][0] == "cmlfs"
    accepted = pod(*base, "cmlfs.acceptPrivilegedServer=true")
    assert "runtimeClassName" not in accepted
    assert accepted["containers"][0]["securityContext"]["privileged"] is True
    # sidecar mode: the cmlfs container is the privileged one, never the server
    sidecar = pod("cmlfs.enabled=true", f"cmlfs.store={STORE}", "cmlfs.keyId=" + KEY_ID)
    assert sidecar["initContainers"][0]["securityContext"]["privileged"] is True
    assert "privileged" not in sidecar["containers"][0]["securityContext"]


def test_key_id_pins_the_mount_in_both_modes():
    for values in ("vllm-values.yaml", "tgi-values.yaml"):
        spec = pod(values, "cmlfs.keyId=" + KEY_ID)
        container = (spec.get("initContainers") or spec["containers"])[0]
        flags = container.get("args") or container["command"]
        assert f"--key-id={KEY_ID}" in flags
        if "--" in flags:
            assert flags.index(f"--key-id={KEY_ID}") < flags.index(
                "--"
            )  # cmlfs's, not the server's
    unpinned = pod(f"cmlfs.store={STORE}", "cmlfs.enabled=true")["initContainers"][0]["args"]
    assert not any(flag.startswith("--key-id") for flag in unpinned)


def notes(*values: str, tmp_path: Path) -> str:
    """NOTES.txt as `helm install` prints it (`helm template` renders no NOTES): a copy of the
    chart renders the same file through `tpl` into a ConfigMap."""
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    shutil.copy(chart / "templates" / "NOTES.txt", chart / "notes.txt")
    (chart / "templates" / "zz-notes.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\n"
        'data:\n  notes: {{ tpl (.Files.Get "notes.txt") . | quote }}\n'
    )
    return render(*values, chart=chart)["ConfigMap"]["data"]["notes"]


@pytest.mark.parametrize(
    ("values", "warned"),
    [
        (["cmlfs.keyUri=kbs://kbs.example:8080/default/m/key"], "cmlfs.keyUri is set but"),
        ([], "neither cmlfs.keyUri nor cmlfs.keyId is set"),
        (["cmlfs.keyUri=kbs://kbs.example:8080/default/m/key", "cmlfs.keyId=" + KEY_ID], None),
        (["cmlfs.keyId=" + KEY_ID], None),
    ],
)
def test_an_unpinned_key_uri_is_warned_about_in_notes_and_the_rendered_manifest(
    values, warned, tmp_path
):
    values = ["cmlfs.enabled=true", f"cmlfs.store={STORE}", *values]
    rendered, printed = template(*values), notes(*values, tmp_path=tmp_path)
    if warned is None:
        assert "WARNING" not in rendered and "WARNING" not in printed
    else:
        assert f"WARNING: {warned}" in printed and f"# WARNING: {warned}" in rendered
        assert "cmlfs.keyId" in printed


def test_the_schema_says_why_the_key_id_pin_matters():
    schema = json.loads((CHART / "values.schema.json").read_text())
    described = schema["properties"]["cmlfs"]["properties"]["keyId"]["description"]
    assert "not authenticated" in described and "plain-HTTP" in described


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["cmlfs.enabled=true"], "needs cmlfs.store or cmlfs.storeFrom"),
        ([f"cmlfs.store={STORE}", "cmlfs.enabled=true", "cmlfs.mode=daemonset"], "cmlfs.mode"),
        ([f"cmlfs.store={STORE}", "cmlfs.enabled=true", "cmlfs.modelDir=.."], "modelDir"),
        ([f"cmlfs.store={STORE}", "cmlfs.enabled=true", "cmlfs.modelDir="], "modelDir"),
        (["cmlfs.enabled=true", f"cmlfs.stroe={STORE}"], "stroe"),
        (["cmlfs.enabled=true", f"cmlfs.store={STORE}", "cmlfs.keyUri=http://x"], "keyUri"),
        (["cmlfs.enabled=true", f"cmlfs.store={STORE}", "cmlfs.attester=vtpm"], "attester"),
        (
            ["cmlfs.enabled=true", f"cmlfs.store={STORE}", "cmlfs.vtpm.metadataUrl=https://x/y"],
            "metadataUrl",
        ),
        (["cmlfs.enabled=true", f"cmlfs.store={STORE}", "cmlfs.keyId=ABC"], "keyId"),
        (
            ["cmlfs.enabled=true", f"cmlfs.store={STORE}", "cmlfs.vtpm.deviceResource=tpmrm0"],
            "deviceResource",
        ),
        (
            [
                "cmlfs.enabled=true",
                f"cmlfs.store={STORE}",
                "cmlfs.trustedPublisher.configMapName=a",
                "cmlfs.trustedPublisher.secretName=b",
            ],
            "configMapName or secretName, not both",
        ),
        (["cmlfs.enabled=true", f"cmlfs.store={STORE}", "cmlfs.minModelVersion=v1"], "minModel"),
        (
            ["cmlfs.enabled=true", f"cmlfs.store={STORE}", "cmlfs.mode=in-container", "args=null"],
            "needs the server's full command",
        ),
        (
            ["cmlfs.enabled=true", f"cmlfs.store={STORE}", "cmlfs.mode=in-container"],
            "in-container runs the model server container privileged",
        ),
        (
            [
                "cmlfs.enabled=true",
                f"cmlfs.store={STORE}",
                "cmlfs.mode=in-container",
                "cmlfs.acceptPrivilegedServer=yes",
            ],
            "acceptPrivilegedServer",
        ),
        (
            [
                "cmlfs.enabled=true",
                f"cmlfs.store={STORE}",
                "cmlfs.probe=http",
                "cmlfs.http.enabled=false",
            ],
            "probe: http needs cmlfs.http.enabled",
        ),
    ],
)
def test_bad_values_are_refused_with_a_reason(values, message):
    result = helm("template", "t", str(CHART), *(f"--set={value}" for value in values), check=False)
    assert result.returncode != 0
    assert message in result.stderr


def test_another_chart_adds_the_sidecar_with_one_include(tmp_path):
    """An OPEA-style chart vendoring cmlfs-lib gets the native sidecar from one include."""
    chart = tmp_path / "opea-tei"
    (chart / "templates").mkdir(parents=True)
    shutil.copytree(CHART / "charts" / "cmlfs-lib", chart / "charts" / "cmlfs-lib")
    (chart / "Chart.yaml").write_text(
        "apiVersion: v2\nname: opea-tei\nversion: 1.0.0\n"
        "dependencies:\n  - name: cmlfs-lib\n    version: 0.1.0\n"
    )
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())["cmlfs"]
    defaults.update(enabled=True, store=STORE, image={"repository": "cmlfs", "tag": "0.1.0"})
    (chart / "values.yaml").write_text(yaml.safe_dump({"cmlfs": defaults}))
    (chart / "templates" / "pod.yaml").write_text(
        """apiVersion: v1
kind: Pod
metadata:
  name: tei
spec:
  initContainers:
    {{- include "cmlfs-lib.sidecar" (dict "cmlfs" .Values.cmlfs "root" $) | nindent 4 }}
  containers:
    - name: tei
      image: ghcr.io/huggingface/text-embeddings-inference:cpu-1.5
      args: ["--model-id", "/data/model"]
      volumeMounts:
        {{- include "cmlfs-lib.serverVolumeMount" (dict "cmlfs" .Values.cmlfs) | nindent 8 }}
  volumes:
    {{- include "cmlfs-lib.volumes" (dict "cmlfs" .Values.cmlfs "root" $) | nindent 4 }}
"""
    )
    spec = render(chart=chart)["Pod"]["spec"]
    assert spec["initContainers"][0]["restartPolicy"] == "Always"
    assert spec["containers"][0]["volumeMounts"][0]["mountPropagation"] == "HostToContainer"
    rendered = tmp_path / "pod.yaml"
    rendered.write_text(template(chart=chart))
    kubernetes_validate(rendered, "1.29.0")


def test_plain_manifests_are_the_current_render_of_the_chart(tmp_path):
    manifests = ROOT / "deploy" / "manifests"
    copy = tmp_path / "deploy"
    shutil.copytree(ROOT / "deploy", copy)
    subprocess.run(
        [str(copy / "manifests" / "render.sh")],
        env={"HELM": tool("helm"), "PATH": "/usr/bin:/bin"},
        check=True,
        timeout=120,
    )
    for rendered in sorted(manifests.glob("*.yaml")):
        fresh = (copy / "manifests" / rendered.name).read_text()
        assert rendered.read_text() == fresh, f"{rendered.name} is stale: run {manifests}/render.sh"


def test_yaml_files_pass_yamllint():
    manifests = ROOT / "deploy" / "manifests"
    files = [*CHART.glob("*.yaml"), *manifests.glob("*.yaml"), *manifests.glob("kserve/*.yaml")]
    config = (
        "{extends: default, rules: {line-length: {max: 120}, document-start: disable, "
        "indentation: {indent-sequences: whatever}}}"  # helm's toYaml does not indent lists
    )
    result = subprocess.run(
        [tool("yamllint"), "--strict", "-d", config, *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout
