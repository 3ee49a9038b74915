"""Degenerate profile text: one check (tasks/llm/profile_text.py) for the gateway's repair and the profiles contract."""

from __future__ import annotations

import pytest

from doppel.tasks import validate as v
from doppel.tasks.llm.gateway import REASK_TEMPERATURE
from doppel.tasks.llm.profile_text import judged_profile, profile_problems, salvaged_profile
from tests._validate import _set, check, failed, profiles

LOOP = "Loves " + "Star Wars (1977), Fargo (1996), Contact (1997), Scream (1996), " * 8 + "and more."
DEGENERATE = {
    "loop": (LOOP, "repeats 'star wars 1977 fargo 1996' 8 times"),
    "cut off": ("Likes slow dramas, and dislikes loud action films and sill", "stops mid-sentence"),
    "dangling comma": ("- likes dramas\n- dislikes horror,", "stops mid-sentence"),
    "tag": ("<profile>Likes slow dramas.</profile>", "template tags '<profile>', '</profile>'"),
    "chat token": ("Likes slow dramas.<|im_end|>", "template tags '<|im_end|>'"),
    "jinja": ("Likes {{ genre }} films.", "template tags '{{', '}}'"),
    "doubled header": ("User Profile:\nUser Profile: likes slow dramas.", "the header 'User Profile' appears"),
    "doubled markdown header": ("## Profile\n## Profile\nLikes slow dramas.", "the header 'Profile' appears"),
    "empty": ("   ", "empty answer"),
}
FINE = {
    "prose": "This viewer enjoys slow, character-driven dramas and rates comedies generously. Horror bores them.",
    "ends in a quote": 'They call most thrillers "too loud."',
    "bullets": "- likes dramas\n- dislikes horror\n- rates generously",
    "labels": "Likes: dramas, comedies\nDislikes: horror\nRating habits: mean 3.4",
    "one header": "Profile: Likes slow dramas and rates them highly. Avoids horror.",
}


@pytest.mark.parametrize("name", list(DEGENERATE))
def test_degenerate_profile_text_is_named(name: str) -> None:
    text, expected = DEGENERATE[name]
    assert any(expected in p for p in profile_problems(text)), profile_problems(text)


@pytest.mark.parametrize("name", list(FINE))
def test_ordinary_profile_text_passes(name: str) -> None:
    assert profile_problems(FINE[name]) == []


def test_the_test_servers_profiles_pass() -> None:
    from doppel.testing.llm_faults import profile_answer

    for text in ("Drama Comedy Drama Thriller Horror Romance", "Action", ""):
        answer = profile_answer({"messages": [{"role": "user", "content": text}]})
        assert profile_problems(answer) == [], answer


def test_contract_names_the_degenerate_profile() -> None:
    df = profiles()
    df.loc[4, "text"] = LOOP
    (f,) = check(df, "profiles").failures
    assert f["column"] == "text_problems" and f["details"]["unexpected_count"] == 1
    assert "repeats 'star wars 1977 fargo 1996' 8 times" in f["details"]["partial_unexpected_list"][0]


def _profile(server, tmp_path):
    import asyncio

    from doppel.tasks.llm.cache import ResponseCache
    from doppel.tasks.llm.gateway import LLMGateway
    from doppel.tasks.llm.limits import CallLimiter
    from doppel.tasks.records import HistoryItem
    from doppel.tasks.settings import LLMSettings

    settings = LLMSettings(base_url=server.base_url, model="doppel-test-model", timeout_s=5, max_retries=0)
    items = [HistoryItem("1", "Heat", 1995, "Action", "A heist.", 4, 1)]
    variables = {"demographics": "30, writer", "max_words": 80, "items": items, "mean_rating": 4.0, "profile": None}

    async def go():
        gw = LLMGateway(settings, ResponseCache(tmp_path / "cache"), CallLimiter(2), "doppel-test-model")
        try:
            return await gw.text("profile_create", variables)
        finally:
            await gw.aclose()

    return asyncio.run(go())


def test_gateway_re_asks_a_degenerate_profile_quoting_the_problem(tmp_path) -> None:
    from doppel.testing.llm_server import LLMTestServer

    good = "Likes tense heist films and rates them generously. Avoids slow romances."
    answers, bodies = iter([LOOP, good]), []

    def answer(kind, body):
        bodies.append(body)
        return next(answers)

    with LLMTestServer(answer_fn=answer) as server:
        out = _profile(server, tmp_path)
    assert out.text == good and [c.status for c in out.calls] == ["invalid", "ok"]
    assert "repeats 'star wars 1977 fargo 1996' 8 times" in out.calls[0].error
    assert [c.prompt_name for c in out.calls] == ["profile_create", "profile_repair"]
    repair = bodies[1]["messages"]  # the re-ask: the bad answer, then the problem quoted
    assert repair[:2] == bodies[0]["messages"] and repair[2] == {"role": "assistant", "content": LOOP}
    assert "repeats 'star wars 1977 fargo 1996' 8 times" in repair[3]["content"]
    # greedy decoding loops the same way twice: the first ask keeps the run's temperature, a re-ask samples
    assert bodies[0]["temperature"] == 0.0 and bodies[1]["temperature"] == REASK_TEMPERATURE > 0


def test_a_profile_cut_off_every_time_keeps_its_whole_sentences(tmp_path) -> None:
    from doppel.testing.llm_server import LLMTestServer

    cut = "Likes tense heist films and rates them generously. Avoids slow romances. Enjoys the occasional wes"
    with LLMTestServer(answer_fn=lambda kind, body: cut) as server:
        out = _profile(server, tmp_path)
    assert out.text == "Likes tense heist films and rates them generously. Avoids slow romances."
    assert out.error is None and all(c.status == "invalid" for c in out.calls) and len(out.calls) > 1


@pytest.mark.parametrize(
    "text",
    ["Enjoys the occasional wes", "Loves " + "Star Wars (1977), Fargo (1996), Contact (1997), Scream (1996), " * 8],
)
def test_only_whole_sentences_without_problems_are_kept(text: str) -> None:
    assert salvaged_profile(text) is None  # no whole sentence before the problem


def test_a_looping_profile_keeps_what_it_said_before_the_loop() -> None:
    loop = "Likes dark comedies. Loves " + "horror action comedy drama romance " * 11
    assert salvaged_profile(loop) == "Likes dark comedies."
    assert salvaged_profile("<profile>Likes heist films.</profile>") == "Likes heist films."  # our delimiters, echoed
    # the 0.5B model's usual answer (ML-100K u1, qwen2.5-0.5b): the viewer line echoed, the profile inside our
    # tags, then more of the prompt echoed until the token limit: the profile is what the tags hold
    echoed = (
        "Viewer: 31 years old, male, engineer\n<profile>Viewer: 31 years old, male, engineer Genres: Crime, "
        "Film-Noir, Mystery Themes: corrupt police of the 1950s. Likes: Comedy Dislikes: Action Rating Habits: "
        "Mean: 4.2 stars</profile>\n\nRating:\n- Godfather: Part II, The (1974) | Action, Crime, Drama =>"
    )
    assert salvaged_profile(echoed) == (
        "Viewer: 31 years old, male, engineer Genres: Crime, Film-Noir, Mystery Themes: corrupt police of the "
        "1950s. Likes: Comedy Dislikes: Action Rating Habits: Mean: 4.2 stars"
    )
    assert judged_profile(echoed)[1] is None  # long enough: kept after one call
    # seen from the 0.5B model on a synthetic user, at temperature 0 and 0.7 alike: a genre list that loops
    listed = "Viewer: 55, healthcare\nGenres: Romance, Drama, " + "Adventure, Sci-Fi, Horror, Animation, Comedy, " * 12
    assert (
        salvaged_profile(listed)
        == "Viewer: 55, healthcare\nGenres: Romance, Drama, Adventure, Sci-Fi, Horror, Animation, Comedy"
    )


def test_profile_calls_carry_the_loop_penalty_and_rating_calls_do_not(llm_server, tmp_path) -> None:
    from doppel.tasks.settings import LLMSettings
    from tests._gateway import _rate, gateway, run

    _profile(llm_server, tmp_path / "profile")
    assert llm_server.log()[-1]["request"]["frequency_penalty"] == 0.5
    run(_rate(gateway(llm_server, tmp_path / "rating")))
    assert "frequency_penalty" not in llm_server.log()[-1]["request"]
    assert "frequency_penalty" not in LLMSettings(profile_frequency_penalty=0).profile_params()  # 0: not sent


def test_a_long_enough_degenerate_profile_is_trimmed_without_a_re_ask(tmp_path) -> None:
    """The 0.5B model's usual shape: our delimiters echoed, then a list that loops to the token limit.
    What it said before the loop is a profile: kept after one call, the record saying what was cut."""
    from doppel.testing.llm_server import LLMTestServer

    said = (
        "The viewer is a 22-year-old student who enjoys war dramas and romances from the late eighties. "
        "They rate slow character studies highly and give loud action films low marks."
    )
    answer = f"<profile>{said}\nEras: " + "1986, " * 30 + "19"
    with LLMTestServer(answer_fn=lambda kind, body: answer) as server:
        out = _profile(server, tmp_path)
    assert out.text == f"{said}\nEras: 1986" and out.error is None  # a list ends at its last entry before the loop
    assert [(c.prompt_name, c.status) for c in out.calls] == [("profile_create", "ok")]
    assert out.calls[0].error.startswith("trimmed: contains template tags '<profile>'")
    assert "repeats '1986 1986 1986 1986 1986'" in out.calls[0].error
    # --profile-keep-words 0 (or a salvage shorter than it) re-asks instead
    assert judged_profile(answer, keep_words=0) == (answer, out.calls[0].error.removeprefix("trimmed: "), None)
    assert judged_profile(answer, keep_words=40)[1] is not None


def test_a_profile_that_stays_degenerate_fails_with_the_reason(tmp_path) -> None:
    from doppel.testing.llm_server import LLMTestServer

    loop = "horror action comedy drama romance " * 10  # nothing whole before the loop: nothing to keep
    with LLMTestServer(answer_fn=lambda kind, body: loop) as server:
        out = _profile(server, tmp_path)
    assert out.text is None and "repeats 'horror action comedy drama romance'" in out.error
    assert all(c.status == "invalid" for c in out.calls) and len(out.calls) > 1


PROFILE_BREAKS = {
    "looping profile": (
        "profiles",
        _set("text", "Loves " + "Star Wars (1977), Fargo (1996), Contact (1997), Scream (1996), " * 8 + "and more."),
        {("expect_column_values_to_be_null", "text_problems")},
    ),
    "cut-off profile": (
        "profiles",
        _set("text", "Likes slow dramas and dislikes loud action films and sill"),
        {("expect_column_values_to_be_null", "text_problems")},
    ),
    "profile with template tags and a doubled header": (
        "profiles",
        _set("text", "User profile:\nUser profile: <profile>Likes slow dramas.</profile>"),
        {("expect_column_values_to_be_null", "text_problems")},
    ),
}


@pytest.mark.parametrize("name", list(PROFILE_BREAKS))
def test_the_profiles_contract_rejects_degenerate_text(name: str) -> None:
    suite, corrupt, expected = PROFILE_BREAKS[name]
    out = check(corrupt(profiles()), suite)
    assert not out.success and failed(out) == expected, v.format_failures(out)
