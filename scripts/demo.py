"""The end-to-end demo behind README's first command (run by scripts/demo.sh).

A model owner encrypts a model and registers its key with a key broker; the
serving side attests (with the ``sample`` attester: this machine has no TEE),
receives the key, mounts, and reads the plaintext; then a denied release
refuses the mount.

Every step is a real ``cmlfs`` command, printed before it runs, so the output
doubles as a tutorial.
"""

import hashlib
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def cmlfs(*args: object) -> str:
    command = [Path(sys.executable).with_name("cmlfs"), *map(str, args)]
    print("$ cmlfs " + shlex.join(map(str, args)), flush=True)
    result = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    output = (result.stdout + result.stderr).strip()
    if output:
        print("  " + output.replace("\n", "\n  "), flush=True)
    if result.returncode != 0:
        raise SystemExit(f"demo failed: cmlfs {args[0]} exited {result.returncode}")
    return result.stdout


def digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def make_model(root: Path) -> None:
    """A small model folder shaped like a Hugging Face checkpoint (random weights)."""
    files = {
        "config.json": b'{"architectures": ["DemoModel"], "hidden_size": 256}\n',
        "tokenizer.json": b'{"version": "1.0", "model": {"vocab": {}}}\n',
        "model.safetensors": os.urandom(24 * 1024 * 1024 + 12345),
        "1_Pooling/config.json": b'{"pooling_mode_mean_tokens": true}\n',
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


def start_broker(work: Path) -> tuple[subprocess.Popen, str]:
    """The development key broker (Trustee KBS protocol) on a free loopback port."""
    print("$ cmlfs dev-kbs --repository kbs-repo --listen 127.0.0.1:0 &", flush=True)
    (work / "kbs-repo").mkdir()
    out = open(work / "kbs.out", "w+")  # noqa: SIM115 - lives as long as the broker
    log = open(work / "kbs.log", "w")  # noqa: SIM115
    broker = subprocess.Popen(
        [Path(sys.executable).with_name("cmlfs"), "dev-kbs", "--repository", work / "kbs-repo",
         "--listen", "127.0.0.1:0"],
        stdout=out, stderr=log, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    for _ in range(200):
        out.seek(0)
        for line in out.read().splitlines():
            if line.startswith("dev-kbs listening on http://"):
                print(f"  {line}", flush=True)
                return broker, line.removeprefix("dev-kbs listening on http://")
        time.sleep(0.05)
    broker.kill()
    raise SystemExit("demo failed: the development key broker did not start")


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="cmlfs-demo-"))
    src, store, mnt, key = work / "model", work / "store", work / "mnt", work / "model.key"
    step("1. a sample model folder (plaintext, the model owner's side)")
    make_model(src)
    print(
        f"  {src}: "
        + ", ".join(str(p.relative_to(src)) for p in sorted(src.rglob("*")) if p.is_file())
    )
    step("2. a key broker speaking the Trustee KBS protocol (development broker, sample TEE)")
    broker, address = start_broker(work)
    try:
        uri = f"kbs://{address}/default/model/demo"
        step("3. a model key, the encrypted store, and the key registered with the broker")
        cmlfs("keygen", "--out", key)
        cmlfs("encrypt", src, store, "--key-file", key, "--model-name", "demo",
              "--key-uri", uri, "--register", "--insecure-kbs-http")  # fmt: skip
        public = cmlfs("inspect", store)
        key_id = next(line.split()[-1] for line in public.splitlines() if line.startswith("key id"))
        key.unlink()
        print(f"  (the serving side never sees {key.name}: it was deleted after registering)")
        step("4. mount on the serving side: attest, receive the key, mount")
        mnt.mkdir()
        attest = ["--attester", "sample", "--insecure-kbs-http", "--key-id", key_id]
        cmlfs("mount", store, mnt, *attest)
        try:
            step("5. read every file through the mount and compare with the source")
            sources = {str(p.relative_to(src)): digest(p) for p in src.rglob("*") if p.is_file()}
            mounted = {str(p.relative_to(mnt)): digest(p) for p in mnt.rglob("*") if p.is_file()}
            for rel in sorted(sources):
                same = "identical" if mounted.get(rel) == sources[rel] else "DIFFERENT"
                print(f"  {rel}: sha256 {sources[rel][:16]}... {same}")
            if mounted != sources:
                raise SystemExit("demo failed: the mount does not show the source model")
        finally:
            step("6. unmount")
            cmlfs("umount", mnt)
        step("7. the owner changes the release policy to deny: the next mount is refused")
        (work / "deny.json").write_text('{"default": "deny"}\n')
        cmlfs("key", "policy", f"kbs://{address}", "--policy-file", work / "deny.json",
              "--insecure-kbs-http")  # fmt: skip
        refused = cmlfs_refused("mount", store, mnt, *attest)
    finally:
        broker.terminate()
        broker.wait(timeout=10)
    plain = (src / "model.safetensors").read_bytes()[:4096]
    stored = b"".join(p.read_bytes() for p in (store / "blobs").iterdir())
    leaked = plain in stored
    step("what this proved")
    found = "PLAINTEXT FOUND" if leaked else "no plaintext"
    print(f"  - {len(sources)} files encrypted into {store} ({found} in the store)")
    print("  - the key reached the mount only through attestation + the KBS protocol (sample TEE)")
    print("  - every file read back through FUSE bit-identical to the source; nothing on disk")
    print(f"  - with the policy set to deny, the mount was refused: {refused}")
    print(f"  - work folder left for a look: {work}")
    if leaked:
        raise SystemExit("demo failed: plaintext found in the store")


def cmlfs_refused(*args: object) -> str:
    """Run a cmlfs command that must fail; return its one-line reason."""
    print("$ cmlfs " + shlex.join(map(str, args)), flush=True)
    command = [Path(sys.executable).with_name("cmlfs"), *map(str, args)]
    result = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    print("  " + result.stderr.strip().replace("\n", "\n  "), flush=True)
    if result.returncode == 0:
        raise SystemExit("demo failed: a denied release still mounted")
    errors = [line for line in result.stderr.splitlines() if line.startswith("cmlfs: error: ")]
    return errors[-1].removeprefix("cmlfs: error: ") if errors else result.stderr.strip()


if __name__ == "__main__":
    main()
