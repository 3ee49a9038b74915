"""Embedded LLM: GGUF reader, model verification/assembly, and the child-process server."""

from __future__ import annotations

import base64
import hashlib
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil
import pytest

from doppel.tasks.llm import embedded_models as em
from doppel.tasks.llm.embedded import EmbeddedServer, EmbeddedServerError
from doppel.tasks.llm.embedded_models import (
    MODELS,
    EmbeddedModel,
    EmbeddedModelError,
    check_file,
    ensure_model,
    list_models,
    read_gguf_header,
    verify_gguf,
)

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- synthetic GGUF


def _s(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def _kv(key: str, value: Any) -> bytes:
    """Encode one GGUF key/value; lists become arrays (of strings or int32)."""
    out = _s(key)
    if isinstance(value, bool):
        return out + struct.pack("<I?", 7, value)
    if isinstance(value, int):
        return out + struct.pack("<II", 4, value)
    if isinstance(value, float):
        return out + struct.pack("<If", 6, value)
    if isinstance(value, str):
        return out + struct.pack("<I", 8) + _s(value)
    if value and isinstance(value[0], str):
        return out + struct.pack("<IIQ", 9, 8, len(value)) + b"".join(_s(v) for v in value)
    return out + struct.pack("<IIQ", 9, 5, len(value)) + struct.pack(f"<{len(value)}i", *value)


def write_gguf(path: Path, kvs: dict[str, Any], tensors: int = 3, pad: int = 64) -> Path:
    """A tiny GGUF v3 file: header, key/values, then `pad` bytes standing in for tensors."""
    body = b"GGUF" + struct.pack("<IQQ", 3, tensors, len(kvs)) + b"".join(_kv(k, v) for k, v in kvs.items())
    path.write_bytes(body + b"\0" * pad)
    return path


CHAT_KVS: dict[str, Any] = {
    "general.architecture": "qwen2",
    "general.name": "Tiny Test",
    "general.size_label": "1K",
    "tokenizer.ggml.tokens": [f"tok{i}" for i in range(1000)],
    "tokenizer.ggml.token_type": list(range(1000)),
    "qwen2.rope.freq_base": 1.5,
    "tokenizer.ggml.add_bos_token": False,
    "general.file_type": 15,
    "tokenizer.chat_template": "{% for m in messages %}{{ m.content }}{% endfor %}",
}


def fake_model(path: Path, **over: Any) -> EmbeddedModel:
    data = path.read_bytes()
    base = EmbeddedModel(
        name="tiny",
        description="test",
        packages=("tiny-part1",),
        version="1.0",
        file_name="tiny.gguf",
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        architecture="qwen2",
        gguf_name="Tiny Test",
        size_label="1K",
    )
    return replace(base, **over)


# ----------------------------------------------------------------------------- GGUF reader


def test_reader_reads_scalars_and_skips_arrays(tmp_path: Path) -> None:
    h = read_gguf_header(write_gguf(tmp_path / "m.gguf", CHAT_KVS))
    assert (h.version, h.tensor_count, h.kv_count) == (3, 3, len(CHAT_KVS))
    assert h.architecture == "qwen2" and h.name == "Tiny Test" and h.has_chat_template
    assert h.metadata["general.file_type"] == 15 and h.metadata["tokenizer.ggml.add_bos_token"] is False
    assert h.metadata["qwen2.rope.freq_base"] == pytest.approx(1.5)
    assert h.arrays == {"tokenizer.ggml.tokens": (8, 1000), "tokenizer.ggml.token_type": (5, 1000)}
    assert "tokenizer.ggml.tokens" not in h.metadata


def test_reader_bad_magic(tmp_path: Path) -> None:
    p = tmp_path / "bad.gguf"
    p.write_bytes(b"PK\x03\x04" + b"\0" * 60)
    with pytest.raises(EmbeddedModelError, match=r"bad magic: expected b'GGUF', found b'PK\\x03\\x04'"):
        read_gguf_header(p)


def test_reader_truncated_and_tiny(tmp_path: Path) -> None:
    full = write_gguf(tmp_path / "m.gguf", CHAT_KVS).read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(full[:200])
    with pytest.raises(EmbeddedModelError, match="truncated"):
        read_gguf_header(cut)
    tiny = tmp_path / "tiny.gguf"
    tiny.write_bytes(b"GG")
    with pytest.raises(EmbeddedModelError, match="not a GGUF file"):
        read_gguf_header(tiny)


def test_reader_bad_version(tmp_path: Path) -> None:
    p = tmp_path / "v9.gguf"
    p.write_bytes(b"GGUF" + struct.pack("<IQQ", 9, 0, 0))
    with pytest.raises(EmbeddedModelError, match="unsupported GGUF version 9"):
        read_gguf_header(p)


# ----------------------------------------------------------------------------- verification


def test_verify_requires_chat_template_for_user_files(tmp_path: Path) -> None:
    kvs = {k: v for k, v in CHAT_KVS.items() if k != "tokenizer.chat_template"}
    p = write_gguf(tmp_path / "base.gguf", kvs)
    with pytest.raises(EmbeddedModelError, match="no tokenizer.chat_template"):
        verify_gguf(p)
    assert ensure_model(write_gguf(tmp_path / "chat.gguf", CHAT_KVS)) == (tmp_path / "chat.gguf").resolve()


def test_check_file_wrong_size_sha_and_metadata(tmp_path: Path) -> None:
    p = write_gguf(tmp_path / "m.gguf", CHAT_KVS)
    model = fake_model(p)
    assert check_file(p, model).name == "Tiny Test"
    with pytest.raises(EmbeddedModelError, match=rf"size {p.stat().st_size:,} bytes, expected {model.size + 1:,}"):
        check_file(p, replace(model, size=model.size + 1))
    with pytest.raises(EmbeddedModelError, match=f"sha256 {model.sha256}, expected 0+"):
        check_file(p, replace(model, sha256="0" * 64))
    with pytest.raises(EmbeddedModelError, match=r"general.name 'Tiny Test' \(expected 'Other'\)"):
        check_file(p, replace(model, gguf_name="Other"))


def test_ensure_model_errors_for_paths_and_names(tmp_path: Path) -> None:
    with pytest.raises(EmbeddedModelError, match="GGUF file not found"):
        ensure_model(tmp_path / "nope.gguf")
    with pytest.raises(EmbeddedModelError, match="unknown embedded model 'gpt-9'.*qwen2.5-0.5b"):
        ensure_model("gpt-9")


# ----------------------------------------------------------------------------- assembly from part packages


def write_distribution(site: Path, dist: str, version: str, files: dict[str, bytes]) -> Path:
    """An installed distribution as pip leaves it: the files, and a dist-info with METADATA and a
    RECORD listing each file's sha256 (urlsafe base64, as in wheels) and size."""
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    files = {**files, f"{info.name}/METADATA": f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n".encode()}
    rows = []
    for rel, data in files.items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_bytes(data)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        rows.append(f"{rel},sha256={digest},{len(data)}")
    (info / "RECORD").write_text("\n".join([*rows, f"{info.name}/RECORD,,"]) + "\n")
    return info


def write_parts(site: Path, data: bytes, n: int, init: str = "") -> tuple[str, ...]:
    """`n` part distributions tiny-part1..n whose data/partNN.bin chunks concatenate to `data`."""
    size = -(-len(data) // n)
    for i in range(1, n + 1):
        module = f"tiny_part{i}"
        files = {f"{module}/__init__.py": init.encode(), f"{module}/data/part0{i}.bin": data[(i - 1) * size : i * size]}
        write_distribution(site, f"tiny-part{i}", "1.0", files)
    return tuple(f"tiny-part{i}" for i in range(1, n + 1))


@pytest.fixture
def tiny_parts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> EmbeddedModel:
    """Two fake part distributions on sys.path whose chunks concatenate to a synthetic GGUF."""
    data = write_gguf(tmp_path / "whole.gguf", CHAT_KVS).read_bytes()
    packages = write_parts(tmp_path / "site", data, 2)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    model = replace(fake_model(tmp_path / "whole.gguf"), packages=packages)
    monkeypatch.setitem(MODELS, "tiny", model)
    monkeypatch.setenv("DOPPEL_CACHE_DIR", str(tmp_path / "cache"))
    return model


def test_ensure_model_assembles_once_then_hits_cache(tiny_parts: EmbeddedModel, tmp_path: Path) -> None:
    path = ensure_model("tiny")
    assert path == tmp_path / "cache" / "models" / "tiny.gguf"
    assert path.read_bytes() == (tmp_path / "whole.gguf").read_bytes()
    assert (path.parent / "tiny.gguf.sha256").read_text().split()[0] == tiny_parts.sha256
    assert not list(path.parent.glob("*.part")), "temp file left behind"
    mtime = path.stat().st_mtime_ns
    assert ensure_model("tiny") == path and path.stat().st_mtime_ns == mtime  # no reassembly
    row = next(r for r in list_models() if r["name"] == "tiny")
    assert row["installed"] and row["assembled"] and row["size"] == tiny_parts.size


def test_ensure_model_rehashes_when_marker_lost_and_rebuilds_corrupt(tiny_parts: EmbeddedModel) -> None:
    path = ensure_model("tiny")
    (path.parent / "tiny.gguf.sha256").unlink()
    assert ensure_model("tiny") == path and (path.parent / "tiny.gguf.sha256").exists()
    path.write_bytes(b"X" * tiny_parts.size)  # replaced: right size, wrong content -> reassembled
    assert ensure_model("tiny").read_bytes()[:4] == b"GGUF"


def test_ensure_model_missing_or_wrong_parts(tiny_parts: EmbeddedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(MODELS, "tiny", replace(tiny_parts, packages=("tiny-part1", "tiny-part9")))
    with pytest.raises(EmbeddedModelError, match=r"1 of 2 part packages not installed.*pip install tiny-part1==1.0"):
        ensure_model("tiny")
    monkeypatch.setitem(MODELS, "tiny", replace(tiny_parts, size=tiny_parts.size + 7))
    with pytest.raises(EmbeddedModelError, match="installed parts add up to .* expected"):
        ensure_model("tiny")
    monkeypatch.setitem(MODELS, "tiny", replace(tiny_parts, sha256="f" * 64))
    with pytest.raises(EmbeddedModelError, match="sha256 .* expected f+"):
        ensure_model("tiny")
    assert not list((em.models_dir()).glob("tiny.gguf*")), "nothing may be left after a failed check"


def test_registry_matches_installed_default_parts() -> None:
    model = MODELS[em.DEFAULT_MODEL]
    if em._installed(model):
        pytest.skip("default model parts not installed")
    assert sum(p.stat().st_size for p in em.part_paths(model)) == model.size == 491_400_064


# ----------------------------------------------------------------------------- server


def _gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False


def test_server_start_failure_reports_log_tail(tmp_path: Path) -> None:
    bogus = write_gguf(tmp_path / "bogus.gguf", CHAT_KVS)  # valid header, no tensors: llama.cpp refuses it
    srv = EmbeddedServer(bogus, log_dir=tmp_path / "logs", startup_timeout=60)
    with pytest.raises(EmbeddedServerError, match="(?s)exited with code .*llama-server log tail"):
        srv.start()
    assert srv.pid is not None and _gone(srv.pid, 5) and not srv.running()


@pytest.fixture(scope="session")
def default_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        return ensure_model(em.DEFAULT_MODEL, tmp_path_factory.mktemp("models"))
    except EmbeddedModelError as exc:
        pytest.skip(str(exc))


@pytest.mark.e2e
def test_e2e_chat_and_clean_stop(default_model: Path, tmp_path: Path) -> None:
    import openai

    with EmbeddedServer(default_model, model_name="qwen2.5-0.5b", log_dir=tmp_path) as srv:
        assert srv.base_url.startswith("http://127.0.0.1:") and srv.base_url.endswith("/v1")
        pid = srv.pid
        client = openai.OpenAI(base_url=srv.base_url, api_key=srv.api_key, timeout=120, max_retries=0)
        out = client.chat.completions.create(
            model=srv.model_name, messages=[{"role": "user", "content": "Say hello."}], max_tokens=8
        )
        assert out.choices[0].message.content and out.usage and out.usage.completion_tokens <= 8
        assert [m.id for m in client.models.list().data] == ["qwen2.5-0.5b"]
    assert pid is not None and _gone(pid, 5), "llama child still alive after the context exited"
    assert not list(tmp_path.glob("*.log")), "log of a clean run should be removed"

    with pytest.raises(RuntimeError, match="boom"):  # an error inside the block stops the child too
        with EmbeddedServer(default_model, log_dir=tmp_path) as srv:
            pid = srv.pid
            raise RuntimeError("boom")
    assert pid is not None and _gone(pid, 5)


@pytest.mark.e2e
def test_e2e_child_dies_when_parent_is_sigkilled(default_model: Path, tmp_path: Path) -> None:
    script = tmp_path / "parent.py"
    script.write_text(
        textwrap.dedent(f"""
        import sys, time
        from doppel.tasks.llm.embedded import EmbeddedServer
        srv = EmbeddedServer({str(default_model)!r}, log_dir={str(tmp_path)!r}).start()
        print(srv.pid, flush=True)
        time.sleep(600)
    """)
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env)
    child = 0
    try:
        line = parent.stdout.readline() if parent.stdout else ""
        assert line.strip().isdigit(), f"parent script printed {line!r}"
        child = int(line)
        assert psutil.Process(child).ppid() == parent.pid
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)
        assert _gone(child, 10), "llama child outlived its SIGKILLed parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if child and not _gone(child, 0.1):  # never leave a model server behind, even on failure
            os.kill(child, signal.SIGKILL)
