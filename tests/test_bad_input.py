"""Bad input gets one clear line on stderr and a non-zero exit, never a traceback: the data and the endpoint.

Every case runs the real CLI (`python -m doppel.flows.cli run ...`) as a subprocess. Runs share the
session's Prefect API server (PREFECT_API_URL from the `prefect_server` fixture) and use the thread
runner. Keys, failing endpoints, locked files and Ctrl-C are in test_bad_input_runtime.py.
"""

from __future__ import annotations

import time

import pytest

from tests._bad_input import SYNTHETIC, assert_one_error_line, cli, closed_port, good_data_lines, run_args, write_ml100k

pytestmark = pytest.mark.slow

# (file, line number, how to spoil that line, words the message must contain)
MALFORMED = {
    "wrong_column_count": ("u.data", 3, lambda ln: "\t".join(ln.split("\t")[:3]), ["expected 4 fields"]),
    "non_integer": ("u.data", 3, lambda ln: ln.replace("\t", "\tx", 1), ["item_id is not an integer"]),
    "rating_out_of_range": (
        "u.data",
        3,
        lambda ln: "\t".join([*ln.split("\t")[:2], "9", ln.split("\t")[3]]),
        ["rating", "out of range 1..5"],
    ),
    "unknown_user": ("u.data", 3, lambda ln: "\t".join(["77", *ln.split("\t")[1:]]), ["unknown user_id '77'"]),
    "unknown_item": (
        "u.data",
        3,
        lambda ln: "\t".join([ln.split("\t")[0], "99", *ln.split("\t")[2:]]),
        ["unknown item_id '99'"],
    ),
    "duplicate_pair": ("u.data", 3, None, ["duplicate rating", "first at line 1"]),
    # dataset text is shown verbatim, never read as console markup
    "markup_in_line": ("u.data", 3, lambda ln: "1\t[/bold]\t3", ["expected 4 fields", "[/bold]"]),
}


@pytest.mark.parametrize("kind", list(MALFORMED))
def test_malformed_dataset_line_names_file_and_line(kind, tmp_path, prefect_server, llm_server):
    name, line_no, spoil, words = MALFORMED[kind]
    lines = good_data_lines(tmp_path)
    if spoil is None:  # duplicate_pair: line 3 repeats line 1's (user, item) with another rating
        first = lines[0].split("\t")
        lines[line_no - 1] = "\t".join([first[0], first[1], "1", "881250000"])
    else:
        lines[line_no - 1] = spoil(lines[line_no - 1])
    data_dir = write_ml100k(tmp_path / "bad", data_lines=lines)
    done = cli(*run_args(tmp_path, llm_server.base_url, "--dataset", "ml-100k", "--data-dir", str(data_dir)))
    assert_one_error_line(done, f"{data_dir / name}:{line_no}:", *words)
    assert llm_server.stats()["requests"] == 0


def test_fold_file_line_not_in_ratings(tmp_path, prefect_server, llm_server):
    lines = good_data_lines(tmp_path)
    test = [lines[0], "3\t3\t5\t881250000"]  # line 2: user 3 never rated item 3 in u.data
    data_dir = write_ml100k(tmp_path / "bad", test_lines=test)
    done = cli(*run_args(tmp_path, llm_server.base_url, "--dataset", "ml-100k", "--data-dir", str(data_dir)))
    assert_one_error_line(done, f"{data_dir / 'u1.test'}:2:", "not in u.data")


def test_valid_tiny_ml100k_runs(tmp_path, prefect_server, llm_server):
    """The fixture itself is valid: the malformed cases fail for their one bad line only."""
    data_dir = write_ml100k(tmp_path / "good")
    done = cli(*run_args(tmp_path, llm_server.base_url, "--dataset", "ml-100k", "--data-dir", str(data_dir)))
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.parametrize("how", ["data_dir", "dataset_path"])
def test_missing_data_path(how, tmp_path, prefect_server, llm_server):
    missing = tmp_path / "nowhere" / "ml-100k"
    args = (
        ["--dataset", "ml-100k", "--data-dir", str(missing)]
        if how == "data_dir"
        else ["--dataset", str(tmp_path / "nowhere" / "ratings.csv")]
    )
    done = cli(*run_args(tmp_path, llm_server.base_url, *args))
    assert_one_error_line(done, str(tmp_path / "nowhere"))


# ----------------------------------------------------------------------------- the endpoint


def test_unreachable_base_url(tmp_path, prefect_server):
    url = f"http://127.0.0.1:{closed_port()}/v1"
    started = time.monotonic()
    done = cli(*run_args(tmp_path, url, *SYNTHETIC))
    assert_one_error_line(done, "cannot reach", url)
    assert time.monotonic() - started < 90


def test_unknown_model(tmp_path, prefect_server, llm_server):
    """A server that lists several models and rejects unknown names (as vLLM does): one clear line."""
    llm_server.configure(other_models="other-model")
    args = run_args(tmp_path, llm_server.base_url, *SYNTHETIC)
    args[args.index("doppel-test-model")] = "no-such-model"
    done = cli(*args)
    assert_one_error_line(done, "'no-such-model'", "doppel-test-model")
    assert llm_server.stats()["requests"] == 0


def test_llama_cpp_serves_its_model_under_any_name(tmp_path, prefect_server, llm_server):
    """The README's llama.cpp example: the server lists its .gguf path and answers to any model name. The
    run sends, caches and records the model the server serves, so the cached answers of another server
    asked under the same --model are never taken for this one's."""
    import duckdb

    gguf = "/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
    llm_server.configure(llama_cpp=True, model=gguf)
    args = run_args(tmp_path, llm_server.base_url, *SYNTHETIC)
    args[args.index("doppel-test-model")] = "local"
    done = cli(*args)
    assert done.returncode == 0, done.stderr[-3000:]
    note = f"--model 'local': {llm_server.base_url} (a llama.cpp server) answers with {gguf!r}"
    assert done.stderr.count(note) == 1, done.stderr[-3000:]
    first = llm_server.stats()["requests"]
    assert first > 0
    assert {e["request"]["model"] for e in llm_server.log()} == {gguf}
    with duckdb.connect(str(tmp_path / "d.duckdb"), read_only=True) as con:
        assert con.sql("select distinct model from llm_calls").fetchall() == [(gguf,)]
        assert con.sql("select distinct model from runs").fetchall() == [(gguf,)]
    llm_server.configure(model="/models/another-model.gguf")  # another server, the same --model and cache
    again = cli(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert llm_server.stats()["requests"] > first  # asked anew: the first server's answers are not its
    # resuming the first run against it (a finished run with a user added) would mix two models' answers in
    # one run: refused, before any call (a finished run's rerun answers from the database, asking no one)
    with duckdb.connect(str(tmp_path / "d.duckdb"), read_only=True) as con:
        first_run = con.execute("select run_id from runs where model = ?", [gguf]).fetchall()[0][0]
    asked = llm_server.stats()["requests"]
    resumed = cli(*args, "--run-id", first_run, "--users", "3")  # one more user: work left, the endpoint asked
    error = f"error: run {first_run} was answered by model {gguf!r}; {llm_server.base_url} serves '/models/another"
    assert resumed.returncode == 2 and error in resumed.stderr and "Traceback" not in resumed.stderr, resumed.stderr
    assert llm_server.stats()["requests"] == asked


def test_unknown_prompt_set(tmp_path, llm_server):
    done = cli(*run_args(tmp_path, llm_server.base_url, *SYNTHETIC, "--prompts", str(tmp_path / "my-prompts")))
    assert_one_error_line(done, "--prompts", "my-prompts", "compact, seed")
    assert llm_server.stats()["requests"] == 0


def test_resume_with_other_simulation_settings_is_refused(tmp_path, prefect_server, llm_server):
    first = cli(*run_args(tmp_path, llm_server.base_url, *SYNTHETIC, "--run-id", "r1"))
    assert first.returncode == 0, first.stderr[-2000:]
    before = llm_server.stats()["requests"]
    for change, names in (
        (("--rate-batch", "5"), ("sim.rate_batch", "10 -> 5")),
        (("--target", "slice"), ("sim.target", "'test' -> 'slice'")),
        (("--temperature", "0.7"), ("llm.temperature",)),
    ):
        done = cli(*run_args(tmp_path, llm_server.base_url, *SYNTHETIC, "--run-id", "r1", *change))
        assert_one_error_line(done, "run r1 was started with other settings", *names, "--run-id")
    assert llm_server.stats()["requests"] == before  # refused before any call
    # what does not change the answers may change: concurrency, timeout
    same = cli(
        *run_args(tmp_path, llm_server.base_url, *SYNTHETIC, "--run-id", "r1", "--concurrency", "3", "--timeout", "30")
    )
    assert same.returncode == 0, same.stderr[-2000:]
