"""Progress shows calls as they are answered, not only when a job (a user, with its chain of calls) finishes:
a chunk sends its count of answered calls through the channel ahead of its results."""

from __future__ import annotations

from doppel.flows.progress import Tally
from doppel.tasks.channel import CallsSoFar, ChannelReader, ResultChannel
from doppel.tasks.llm.session import CALLS_EVERY_S, LimitSpec, run_chunk
from doppel.tasks.settings import LLMSettings
from tests._gateway import IDS, variables


def test_a_chunk_reports_its_calls_before_its_job_finishes(llm_server, tmp_path):
    llm_server.configure(latency=0.5)
    chain = int(3 * CALLS_EVERY_S / 0.5) + 1  # one job's calls last three report periods

    async def work(gateway, job: str) -> list[int]:
        for step in range(chain):
            await gateway.ratings(variables(profile=f"{job} step {step}"), IDS)
        return [step]

    channel = ResultChannel("test-calls-so-far", "local")
    llm = LLMSettings(base_url=llm_server.base_url, model="doppel-test-model", timeout_s=10)
    done = run_chunk(
        ["u1"], work, llm, "doppel-test-model", str(tmp_path / "cache"), LimitSpec(1), channel, 1, lambda r: "u1"
    )
    reader = ChannelReader(channel)
    messages = reader.drain(timeout=1)
    reader.close()
    results = [i for i, m in enumerate(messages) if not isinstance(m, CallsSoFar)]
    assert done == ["u1"] and [messages[i] for i in results] == [[chain - 1]]
    assert isinstance(messages[0], CallsSoFar) and results[0] > 0  # a report arrived before the result
    reports = [m.calls for m in messages if isinstance(m, CallsSoFar)]
    assert reports and reports == sorted(reports) and 0 < reports[0] < chain, messages
    assert len({m.chunk for m in messages if isinstance(m, CallsSoFar)}) == 1
    assert all(m.tokens > 0 for m in messages if isinstance(m, CallsSoFar))
    line = Tally().line(calls_so_far=2, tokens_so_far=1500)  # what the bar shows before a job's calls arrive
    assert "2 calls made" in line and "1,500 tokens" in line
