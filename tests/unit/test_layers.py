"""The package's layering is a fact checked here, not a habit: no module imports a layer above
its own (read from the source with ast, imports inside functions and TYPE_CHECKING included).

The layers of DESIGN.md, lowest first: format < manifest < stores/keys < reader < fs <
daemon < cli, with these placed where they honestly belong:

- base (below format): ``errors``, ``units``, ``logfmt``, the package's ``__init__`` (its version),
  ``mountpoint`` (the mount table), ``hardening`` (core dumps, memory locking) and ``tls``
  (where the system trust store is) are
  process-level helpers with no other cmlfs imports, used from several layers up.
- signature (the OpenSSF model-signing bundle: signing a folder, checking a bundle with a
  public key) is pure format beside the manifest, which it does not import: the stores name
  its object and the model layer checks it against the manifest.
- stores and keys share a level but never import each other: where blobs live and where
  the key comes from are independent.
- publishing (``publish``, ``push``) writes what the reader reads: beside the reader, over
  format, manifest and stores, and neither imports the other.
- model (``model``, ``verify``) opens and checks a stored model with its key, and reads it
  whole: above the reader (a JWE folder's listing is the JWE reader's), below fs and the
  daemon, since ``inspect`` and ``verify`` use it without mounting.
- daemon: the ``daemon`` package, ``run`` (in-container mode drives it) and ``status`` (the
  daemon serves it; its metrics read the worker board).
- devkbs, the development key broker, is a program of its own beside the daemon: only the
  CLI starts it, and it reuses the keys layer's parsers.
- cli is the top, with ``__main__``.

Two modules of one level but different layers may not import each other either.
"""

import ast
from pathlib import Path

import cmlfs

PACKAGE = Path(cmlfs.__file__).parent

# Layer of each module, by the longest matching dotted prefix; rank = level, lowest first.
LAYERS = {
    "cmlfs": ("base", 0),
    "cmlfs.errors": ("base", 0),
    "cmlfs.units": ("base", 0),
    "cmlfs.logfmt": ("base", 0),
    "cmlfs.mountpoint": ("base", 0),
    "cmlfs.hardening": ("base", 0),
    "cmlfs.tls": ("base", 0),
    "cmlfs.format": ("format", 1),
    "cmlfs.manifest": ("manifest", 2),
    "cmlfs.signature": ("signature", 2),
    "cmlfs.stores": ("stores", 3),
    "cmlfs.keys": ("keys", 3),
    "cmlfs.reader": ("reader", 4),
    "cmlfs.publish": ("publishing", 4),
    "cmlfs.push": ("publishing", 4),
    "cmlfs.model": ("model", 5),
    "cmlfs.verify": ("model", 5),
    "cmlfs.fs": ("fs", 6),
    "cmlfs.daemon": ("daemon", 7),
    "cmlfs.run": ("daemon", 7),
    "cmlfs.status": ("daemon", 7),
    "cmlfs.devkbs": ("devkbs", 7),
    "cmlfs.cli": ("cli", 8),
    "cmlfs.__main__": ("cli", 8),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> tuple[str, int] | None:
    """The layer of the longest prefix of ``module`` in LAYERS (the package alone is base)."""
    parts = module.split(".")
    for end in range(len(parts), 1, -1):
        layer = LAYERS.get(".".join(parts[:end]))
        if layer is not None:
            return layer
    return LAYERS["cmlfs"] if module == "cmlfs" else None


def cmlfs_imports(path: Path) -> set[str]:
    """Every cmlfs module ``path`` imports, at any depth of its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            # ``from cmlfs import errors`` imports the module cmlfs.errors, not just cmlfs
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name == "cmlfs" or name.startswith("cmlfs.")}


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_module_has_a_layer():
    unplaced = [module_name(p) for p in modules() if layer_of(module_name(p)) is None]
    assert not unplaced, f"place these modules in LAYERS of {__file__}: {unplaced}"


def upward_imports(name: str, imported: set[str]) -> list[str]:
    """The imports of module ``name`` that reach a layer above its own, or beside it."""
    own, rank = layer_of(name)
    found = []
    for module in sorted(imported):
        target = layer_of(module)
        if target is None:  # not a cmlfs module: a name from the package (``__version__``)
            continue
        if target[0] != own and target[1] >= rank:
            found.append(f"{name} ({own}) imports {module} ({target[0]})")
    return found


def test_no_module_imports_a_layer_above_its_own():
    violations = [
        line
        for path in modules()
        for line in upward_imports(module_name(path), cmlfs_imports(path))
    ]
    assert not violations, "\n".join(violations)


def test_the_check_sees_upward_and_sideways_imports(tmp_path):
    """Not vacuous: a reader importing the daemon inside a function, or a store importing
    a key source, is reported; a reader importing a store is not."""
    source = tmp_path / "bad.py"
    source.write_text(
        "from cmlfs.stores.base import Store\ndef f():\n    from cmlfs.daemon.mount import serve\n"
    )
    assert upward_imports("cmlfs.reader.bad", cmlfs_imports(source)) == [
        "cmlfs.reader.bad (reader) imports cmlfs.daemon.mount (daemon)",
        "cmlfs.reader.bad (reader) imports cmlfs.daemon.mount.serve (daemon)",
    ]
    assert upward_imports("cmlfs.stores.bad", {"cmlfs.keys.base"}) == [
        "cmlfs.stores.bad (stores) imports cmlfs.keys.base (keys)"
    ]
    assert upward_imports("cmlfs.reader.ok", {"cmlfs.stores.base", "cmlfs.reader.cache"}) == []
