"""Reading and writing files: the one reader of specs and the one atomic writer (used by `gen` and `fmt`),
and `gen`'s plan of what to write: only over files layerdsl generated for this output folder, removing
stale ones."""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

MANIFEST = ".layerdsl-manifest"  # in an output folder: marks it as a package root and lists its files
READ_LIMIT = 256 * 1024  # bytes of a spec read: syntax.parser's MAX_SOURCE_CHARS (a test checks they agree)
HASH_PREFIX = "# sha256 of the lines below: "  # a generated file's second line: the hash that reveals edits


class RefusedOverwrite(Exception):
    """Targets that `gen` must not touch: files layerdsl did not generate, generated files edited by
    hand (without `--force`), files of another generated package below the output folder."""

    def __init__(self, refusals: list[tuple[Path, str]]):
        self.refusals = refusals
        self.paths = [path for path, _ in refusals]
        super().__init__(", ".join(f"{path}: {why}" for path, why in refusals))


class NotAFolder(Exception):
    """The output path exists and is not a folder."""


class Unreadable(Exception):
    """A spec path that names something other than a regular file of reasonable size."""


def read_spec(path: Path, limit: int) -> str:
    """The UTF-8 text of the regular file `path`, of at most `limit` bytes. Raises Unreadable for a
    device, FIFO or socket (never read: `/dev/zero` has no end, a FIFO blocks; opened without blocking)
    and for a larger file (never read whole); UnicodeDecodeError, and OSError as reading does (a folder
    is IsADirectoryError)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise Unreadable("not a regular file (a device, FIFO or socket): not read")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise Unreadable(f"this spec is over {limit:,} bytes long; split it into several spec files")
    return data.decode("utf-8")


@dataclass
class Plan:
    """What `gen` will do to the output folder."""

    write: dict[Path, str] = field(default_factory=dict)  # absolute path -> content (new or changed)
    remove: list[Path] = field(default_factory=list)  # generated files whose spec is gone
    unchanged: int = 0


def stamp(content: str) -> str:
    """`content` (a generated file, header first) with the hash of what follows the header inserted as its
    second line, so that a later `gen` can tell a file edited by hand from one it wrote."""
    head, _, body = content.partition("\n")
    return f"{head}\n{HASH_PREFIX}{_digest(body)}\n{body}"


def _digest(body: str) -> str:
    return hashlib.sha256(body.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def is_generated(path: Path) -> bool:
    """Whether `path` starts with the header layerdsl writes (so `gen` may overwrite or remove it)."""
    from layerdsl.codegen.module import HEADER_PREFIX  # imported here: `fmt` writes files without loading codegen

    try:
        with path.open(encoding="utf-8") as f:
            return f.readline().startswith(HEADER_PREFIX)
    except (OSError, UnicodeDecodeError):
        return False


def edited_by_hand(path: Path) -> bool:
    """Whether a generated file no longer matches the hash in its header (a file from before hashes, with
    no hash line, counts as unedited)."""
    try:
        head, _, rest = path.read_text(encoding="utf-8").partition("\n")
    except (OSError, UnicodeDecodeError):
        return False
    line, _, body = rest.partition("\n")
    return line.startswith(HASH_PREFIX) and line[len(HASH_PREFIX) :] != _digest(body)


def plan(out_dir: Path, outputs: dict[Path, str], force: bool = False) -> Plan:
    """The writes and removals that make `out_dir` hold exactly `outputs` (paths relative to it) and its
    manifest. Raises NotAFolder, or RefusedOverwrite before anything is written, if a target is a file
    layerdsl did not generate, one edited by hand (unless `force`), or one of another generated package
    below `out_dir` (a folder with its own manifest): `gen` never touches those, nor removes them."""
    if out_dir.exists() and not out_dir.is_dir():
        raise NotAFolder(str(out_dir))
    outputs = {**outputs, Path(MANIFEST): _manifest(outputs)}
    result = Plan()
    refused: list[tuple[Path, str]] = []
    for rel, content in outputs.items():
        target = out_dir / rel
        nested = _nested_package(out_dir, target)
        if nested is not None:
            refused.append((target, f"it belongs to the generated package in {nested}"))
        elif target.exists():
            if rel != Path(MANIFEST) and not is_generated(target):
                refused.append((target, "it was not generated by layerdsl (no header)"))
                continue
            if target.read_text(encoding="utf-8", errors="replace") == content:
                result.unchanged += 1
                continue
            if not force and edited_by_hand(target):
                refused.append((target, "it was edited by hand since layerdsl wrote it (--force overwrites it)"))
                continue
        if nested is None:
            result.write[target] = content
    wanted = {out_dir / rel for rel in outputs}
    for existing in _owned(out_dir):
        if existing not in wanted:
            if not force and edited_by_hand(existing):
                refused.append((existing, "it is obsolete but was edited by hand (--force removes it)"))
            else:
                result.remove.append(existing)
    if refused:
        raise RefusedOverwrite(refused)
    return result


def _manifest(outputs: dict[Path, str]) -> str:
    lines = [
        "# The files layerdsl generated in this folder. `layerdsl gen` writes and removes only its own files,",
        "# never those of a folder below that has a manifest of its own.",
        *sorted(rel.as_posix() for rel in outputs),
    ]
    return "\n".join(lines) + "\n"


def _nested_package(out_dir: Path, target: Path) -> Path | None:
    """The folder between `out_dir` (excluded) and `target` that is another generated package's root."""
    folder = target.parent
    while folder != out_dir and out_dir in folder.parents:
        if (folder / MANIFEST).is_file():
            return folder
        folder = folder.parent
    return None


def _owned(out_dir: Path) -> list[Path]:
    """The generated files of `out_dir`'s own package: those its manifest lists and any other with the
    header, in no folder below that is another package's root (holds a manifest)."""
    if not out_dir.is_dir():
        return []
    found: set[Path] = set()
    try:
        listed = (out_dir / MANIFEST).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        listed = []
    for rel in listed:
        if rel and not rel.startswith("#") and ".." not in Path(rel).parts and not Path(rel).is_absolute():
            found.add(out_dir / rel)
    for folder, subfolders, names in os.walk(out_dir):
        here = Path(folder)
        subfolders[:] = sorted(d for d in subfolders if not (here / d / MANIFEST).is_file())
        found.update(here / n for n in names if n.endswith(".py"))
    return sorted(p for p in found if p.suffix == ".py" and _nested_package(out_dir, p) is None and is_generated(p))


def clean_temporaries(out_dir: Path) -> list[Path]:
    """Remove what an interrupted run of `write_atomic` left in `out_dir`'s own package (called under
    the output folder's lock, when no other run can be writing there)."""
    removed = []
    for folder, subfolders, names in os.walk(out_dir):
        here = Path(folder)
        subfolders[:] = [d for d in subfolders if not (here / d / MANIFEST).is_file()]
        for n in names:
            if n.startswith(".") and n.endswith(TEMPORARY_SUFFIX):
                (here / n).unlink(missing_ok=True)
                removed.append(here / n)
    return removed


@contextlib.contextmanager
def locked(out_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on the output folder (created if missing), so that concurrent `gen` runs into
    one folder take turns. The lock is on the folder itself, so that it leaves no file behind; where
    `fcntl` does not exist (Windows), runs are not serialised."""
    if out_dir.exists() and not out_dir.is_dir():
        raise NotAFolder(str(out_dir))
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    fd = os.open(out_dir, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def apply(p: Plan) -> None:
    """Carry out a plan."""
    for target, content in p.write.items():
        write_atomic(target, content)
    for stale in p.remove:
        stale.unlink()


TEMPORARY_SUFFIX = ".layerdsl.tmp"


def write_atomic(target: Path, content: str) -> None:
    """Replace `target` with `content` (UTF-8, newlines as given) in one step: a reader sees the old file or
    the new one, never a part. Creates the folder. The file keeps the permission bits of the file it
    replaces; a new file gets the umask's usual mode (0o644 under umask 022), as `open()` would give it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=TEMPORARY_SUFFIX)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(content)
        os.chmod(tmp, _mode_for(target))
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _mode_for(target: Path) -> int:
    try:
        return stat.S_IMODE(target.stat().st_mode)
    except FileNotFoundError:
        umask = os.umask(0)  # the only portable way to read it
        os.umask(umask)
        return 0o666 & ~umask
