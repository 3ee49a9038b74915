"""The recommender arena: protocols on hand-made numbers, the plug-in protocol with a recommender
defined here, the hybrid judges and the gate on the synthetic dataset, and `doppel arena` end to end
(real Prefect, Dask LocalCluster, DuckDB, GX)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from doppel.tasks.arena import evaluate, judges, lists, protocols, tables, zoo


# ----------------------------------------------------------------------------- a researcher's recommender
class ItemIdOrder:
    """Scores items by their numeric id (lower id first); fit only remembers the train items."""

    def fit(self, train: pd.DataFrame):
        self.known = set(train["item_id"])
        return self

    def score(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        return np.array([-float(i) if i in self.known else np.nan for i in items])


def make_item_id_order() -> ItemIdOrder:
    return ItemIdOrder()


class NoScore:
    def fit(self, train):
        return self


@pytest.fixture(scope="module")
def fold():
    from doppel.tasks.data import make_synthetic

    ds = make_synthetic()
    sp = ds.splits[ds.splits["fold"] == "u1"]
    ratings = ds.ratings.astype({"user_id": str, "item_id": str})
    part = {
        s: sp[sp["split"] == s][["user_id", "item_id"]].astype(str).merge(ratings, on=["user_id", "item_id"])
        for s in ("train", "test")
    }
    return part["train"], part["test"][["user_id", "item_id", "rating"]], ds.items


# ----------------------------------------------------------------------------- protocols on known numbers
def test_ndcg_and_precision_match_hand_computed_values():
    ranked = pd.DataFrame(
        {
            "recommender": ["a"] * 3 + ["b"] * 3,
            "user_id": ["u"] * 6,
            "item_id": ["x", "y", "z"] * 2,
            "rank": [1, 2, 3, 3, 2, 1],
            "real": [5, 3, 1, 5, 3, 1],
        }
    )
    m = protocols.observed_metrics(ranked, ["real"]).set_index("recommender")
    assert m.loc["a", "ndcg@10"] == pytest.approx(1.0)
    dcg_b = 1 / np.log2(2) + 3 / np.log2(3) + 5 / np.log2(4)
    ideal = 5 / np.log2(2) + 3 / np.log2(3) + 1 / np.log2(4)
    assert m.loc["b", "ndcg@10"] == pytest.approx(dcg_b / ideal)
    assert m.loc["a", "precision@5"] == pytest.approx(1 / 3)  # one like among min(5, 3) items


def test_rank_agreement_noise_ceiling_and_calibration():
    rng = np.random.default_rng(0)
    real = rng.random((200, 6)) + np.arange(6)  # six recommenders, clearly ordered
    same = protocols.rank_agreement(real, real, n_boot=50)
    assert same["tau"] == pytest.approx(1.0) and same["rho"] == pytest.approx(1.0)
    flipped = protocols.rank_agreement(real, -real, n_boot=50)
    assert flipped["tau"] == pytest.approx(-1.0) and flipped["tau_hi"] <= -0.9
    ceiling = protocols.noise_ceiling(real, real, n_splits=10)
    assert ceiling["ratio"] == pytest.approx(1.0)
    p = np.array([0.1, 0.1, 0.9, 0.9])
    stats, bins = protocols.calibration(p, np.array([0, 0, 1, 1]))
    assert stats["ece"] == pytest.approx(0.1) and stats["brier"] == pytest.approx(0.01)
    assert bins["n"].sum() == 4
    assert protocols.like_rate_gap(np.array([4, 4, 1, 1]), np.array([4, 1, 1, 1])) == pytest.approx(25.0)


# ----------------------------------------------------------------------------- the plug-in protocol
def test_a_plugin_recommender_ranks_by_its_own_scores(fold):
    train, test, _ = fold
    entrant = zoo.plugin(f"{__name__}:make_item_id_order")
    assert entrant.family == "plugin" and entrant.name == "make_item_id_order"
    users = sorted(test["user_id"].unique())
    out = lists.recommend(entrant, train, test, users, k=5)
    for user, part in out["observed"].groupby("user_id"):
        scored = part.dropna(subset=["score"]).sort_values("rank")
        assert list(scored["item_id"].astype(int)) == sorted(scored["item_id"].astype(int)), user
    top = out["catalogue"]
    assert (top.groupby("user_id").size() == 5).all()
    seen = set(zip(train["user_id"], train["item_id"]))
    assert not any((u, i) in seen for u, i in zip(top["user_id"], top["item_id"]))  # never a train item


def test_bad_plugins_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="expected 'package.module:factory'"):
        zoo.plugin("no_colon_here")
    with pytest.raises(ValueError, match="cannot import module"):
        zoo.plugin("doppel_no_such_module:f")
    with pytest.raises(TypeError, match="lacks score"):
        zoo.build(zoo.plugin(f"{__name__}:NoScore"))


# ----------------------------------------------------------------------------- judges + evaluation + gate
@pytest.fixture(scope="module")
def judged_fold(fold):
    train, test, items = fold
    users = sorted(test["user_id"].unique())
    entrants = [e for e in zoo.DEFAULT_ZOO if e.name in ("random", "most_popular", "biased_mf", "item_knn")]
    listed = {e.name: lists.recommend(e, train, test, users, k=5) for e in entrants}
    catalogue = pd.concat([v["catalogue"][["user_id", "item_id"]] for v in listed.values()]).drop_duplicates()
    pairs = pd.concat([test[["user_id", "item_id"]], catalogue])
    ff, dists = judges.hybrid_distributions(train, items, pairs, seed=0)
    real = test.rename(columns={"rating": "real"})
    judged = {
        "observed": judges.judge_pairs(ff, dists, test).merge(real, on=["user_id", "item_id"]),
        "catalogue": judges.judge_pairs(ff, dists, catalogue).merge(real, on=["user_id", "item_id"], how="left"),
    }
    return entrants, listed, judged


def test_every_protocol_on_the_synthetic_fold(judged_fold):
    entrants, listed, judged = judged_fold
    obs = judged["observed"]
    assert set(judges.HYBRID_JUDGES) <= set(obs.columns) and {"acc_no_knn", "acc_no_mf"} <= set(obs.columns)
    assert obs[list(judges.HYBRID_JUDGES)].isin([1, 2, 3, 4, 5]).all().all()
    assert obs["p_like"].between(0, 1).all()
    ranked, top = evaluate.assemble(listed, {e.name: e.family for e in entrants}, obs, judged["catalogue"])
    # the audit judges each family by the variant blind to it
    knn = ranked[ranked["recommender"] == "item_knn"]
    assert (knn[judges.AUDIT].to_numpy() == knn.merge(obs, on=["user_id", "item_id"])["acc_no_knn"].to_numpy()).all()
    out = evaluate.evaluate_fold(ranked, top, obs, "u1", n_boot=20)
    a = out["agreement"]
    assert set(a["protocol"]) == {"observed", "catalogue"} and set(a["judge"]) == set(evaluate.JUDGES)
    assert a["tau"].between(-1, 1).all() and (a["tau_lo"] <= a["tau_hi"]).all()
    assert a[a.protocol == "observed"]["ceiling_ratio"].notna().all()
    m = out["metrics"]
    assert set(m["recommender"]) == {e.name for e in entrants}
    real_ndcg = m[(m.judge == "real") & (m.metric == "ndcg@10")].set_index("recommender")["value"]
    assert real_ndcg["biased_mf"] > real_ndcg["random"]  # a model of the ratings beats random on real gains
    c = out["calibration"]
    assert c["real_like_rate"].iloc[0] == pytest.approx((obs["real"] >= 4).mean())
    assert out["reliability"]["n"].sum() == len(obs)


def test_gate_refuses_a_rating_out_of_range_and_a_duplicated_rank(judged_fold):
    entrants, listed, judged = judged_fold
    frames = {
        "arena_lists": tables.list_rows("arena-t", "u1", listed),
        "arena_judgments": tables.judgment_rows("arena-t", "u1", judged),
    }
    assert all(o.success for o in tables.gate("arena-t", frames))
    bad_j = frames["arena_judgments"].copy()
    bad_j.loc[bad_j.index[0], "rating"] = 6
    bad_l = frames["arena_lists"].copy()
    bad_l.loc[bad_l.index[1], "rank"] = bad_l.loc[bad_l.index[0], "rank"]
    outcomes = {o.suite: o for o in tables.gate("arena-t", {"arena_lists": bad_l, "arena_judgments": bad_j})}
    assert not outcomes["arena_judgments"].success and not outcomes["arena_lists"].success


# ----------------------------------------------------------------------------- `doppel arena` end to end
@pytest.mark.slow
def test_doppel_arena_fills_its_tables_and_a_rerun_fits_nothing(prefect_server, tmp_path):
    import duckdb
    from typer.testing import CliRunner

    from doppel.flows.cli import app

    db, cache = tmp_path / "arena.duckdb", tmp_path / "cache"
    args = ["arena", "--dataset", "synthetic", "--only", "random,most_popular,biased_mf", "--recommender"]
    args += [f"{__name__}:make_item_id_order", "--n-boot", "20", "--db", str(db), "--cache-dir", str(cache)]
    first = CliRunner().invoke(app, [*args, "--run-id", "arena-a"])
    assert first.exit_code == 0, first.output
    assert first.output.startswith("arena run arena-a on synthetic, fold(s) u1: ")  # said before the work
    assert "rank agreement" in first.output and "make_item_id_order" in first.output
    assert "u1: no LLM judge" in first.output  # the judges it lacks, and why
    assert "u1: output contracts (GX gate): arena_lists: passed, " in first.output  # the gate's verdict, said
    assert "arena u1 10/10 steps · saved · " in first.stderr  # the fold's progress: 4 fits + 6 steps, all done
    with duckdb.connect(str(db), read_only=True) as con:
        gate = con.execute("select suite, success, n_rows from validation_results where run_id = 'arena-a'").fetchall()
        assert sorted(g[0] for g in gate) == ["arena_judgments", "arena_lists"] and all(g[1] and g[2] for g in gate)
        recs = con.execute("select recommender, cached from arena_recommenders where run_id = 'arena-a'").df()
        assert len(recs) == 4 and not recs["cached"].any()
        n_lists = con.execute("select count(*) from arena_lists where run_id = 'arena-a'").fetchone()[0]
        assert n_lists > 0
        assert con.execute("select count(*) from arena_scatter where run_id = 'arena-a'").fetchone()[0] > 0
        status = con.execute("select status from runs where run_id = 'arena-a'").fetchone()[0]
        assert status == "finished"
    second = CliRunner().invoke(app, [*args, "--run-id", "arena-b"])
    assert second.exit_code == 0, second.output
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("select bool_and(cached) from arena_recommenders where run_id = 'arena-b'").fetchone()[0]


def test_plugins_from_flow_parameters_need_the_operators_allow_list(monkeypatch):
    from doppel.flows.arena import PLUGINS_ENV, entrants_of
    from doppel.tasks.arena.config import ArenaSettings

    settings = ArenaSettings(recommenders=[f"{__name__}:make_item_id_order"], only=["random"])
    monkeypatch.delenv(PLUGINS_ENV, raising=False)
    with pytest.raises(ValueError, match=PLUGINS_ENV):
        entrants_of(settings)
    monkeypatch.setenv(PLUGINS_ENV, f"{__name__}:make_item_id_order")
    assert [e.name for e in entrants_of(settings)] == ["random", "make_item_id_order"]


def finished_ensemble(llm_server, run_settings, ensemble_id: str):
    """A finished `doppel ensemble` run of the arena's synthetic dataset (keywords from the test server)."""
    from doppel.flows.ensemble import ensemble
    from doppel.tasks.ensemble.config import EnsembleSettings, SASRecSettings
    from tests.test_ensemble import genre_keywords

    llm_server.app.answer_fn = genre_keywords
    try:
        settings = EnsembleSettings(
            run=run_settings(synthetic_users=60, synthetic_items=120, runner="threads"),  # the arena's synthetic
            fold="u1",
            items=30,
            ensemble_id=ensemble_id,
            sasrec=SASRecSettings(maxlen=20, dim=16, blocks=1, heads=1, epochs=3, batch_size=16),
        )
        assert ensemble(settings)["status"] == "finished"
    finally:
        llm_server.app.answer_fn = None
    return settings


@pytest.mark.slow
def test_a_finished_ensemble_run_of_the_fold_judges_too(prefect_server, llm_server, run_settings, tmp_path):
    import duckdb

    from doppel.flows.arena import run_arena
    from doppel.tasks.arena.config import ArenaSettings

    settings = finished_ensemble(llm_server, run_settings, "ens-arena")
    db = settings.run.db
    summary = run_arena(
        ArenaSettings(
            db=db, only=["random", "most_popular"], n_boot=10, runner="threads", run_id="arena-ens",
            cache_dir=str(tmp_path / "cache"),
        )
    )  # fmt: skip
    result = summary["folds"]["u1"]
    assert "ens-arena" in result["ensemble_note"]
    assert "ensemble:vote" in set(result["agreement"]["judge"])
    calib = result["calibration"].set_index("judge")
    assert 0 <= calib.loc["ensemble:vote", "like_rate"] <= 1 and calib.loc["ensemble:vote", "n"] > 0
    with duckdb.connect(db, read_only=True) as con:
        votes = con.execute(
            "select count(*), count(rating), bool_and(p_like in (0, 1)) from arena_judgments "
            "where run_id = 'arena-ens' and judge = 'ensemble:vote'"
        ).fetchone()
    assert votes[0] > 0 and votes[1] == 0 and votes[2]


@pytest.mark.slow
def test_an_llm_run_of_the_arena_lists_judges_them(prefect_server, llm_server, run_settings, tmp_path):
    """`doppel run --target arena` rates exactly the listed items of its users (held-out and catalogue,
    no profile update), through the gateway and cache; the arena then judges with it on those users."""
    import duckdb

    from doppel.flows.arena import run_arena
    from doppel.flows.simulate import simulate
    from doppel.tasks.arena.config import ArenaSettings
    from doppel.tasks.preflight import check_arena_run
    from doppel.tasks.records import DataError
    from doppel.tasks.settings import SimulationSettings

    db = str(tmp_path / "arena.duckdb")
    arena = ArenaSettings(
        db=db, only=["random", "most_popular", "biased_mf"], n_boot=10, runner="threads", run_id="arena-llm",
        cache_dir=str(tmp_path / "cache"),
    )  # fmt: skip
    first = run_arena(arena)["folds"]["u1"]
    assert "no LLM judge" in first["llm_note"] and "llm" not in set(first["agreement"]["judge"])

    with pytest.raises(DataError, match="arena-nope"):
        check_arena_run(run_settings(db=db, synthetic_users=60, synthetic_items=120, sim=SimulationSettings(
            target="arena", arena_run="arena-nope")))  # fmt: skip
    with pytest.raises(ValueError, match="--arena-run"):
        SimulationSettings(target="arena")
    settings = run_settings(
        db=db, synthetic_users=60, synthetic_items=120, users=3, run_id="llm-judge",
        sim=SimulationSettings(target="arena", arena_run="arena-llm", rate_batch=8),
    )  # fmt: skip
    check_arena_run(settings)
    assert settings.sim.update_profile is False  # an update would show the judge the held-out ratings
    summary = simulate(settings)
    assert summary["status"] == "finished"
    with duckdb.connect(db, read_only=True) as con:
        listed = con.execute(
            "select distinct l.user_id, l.item_id from arena_lists l join run_users u using (user_id) "
            "where l.run_id = 'arena-llm' and u.run_id = 'llm-judge' order by all"
        ).fetchall()
        rated = con.execute(
            "select user_id, item_id from simulated_ratings where run_id = 'llm-judge' and status = 'ok' order by all"
        ).fetchall()
        stages = {r[0] for r in con.execute("select stage from profiles where run_id = 'llm-judge'").fetchall()}
        scored = con.execute(
            "select value from metrics where run_id = 'llm-judge' and simulator = 'llm' and metric = 'n'"
        ).fetchone()
        held_out = con.execute(
            "select count(*) from simulated_ratings s join splits t on t.dataset = 'synthetic' and t.fold = 'u1' "
            "and t.split = 'test' and t.user_id = s.user_id and t.item_id = s.item_id where s.run_id = 'llm-judge'"
        ).fetchone()[0]
    assert rated == listed and len({u for u, _ in rated}) == 3
    assert "update" not in stages
    assert scored[0] == held_out < len(rated)  # scored on the held-out pairs; the catalogue's have no truth

    second = run_arena(arena)["folds"]["u1"]  # the same arena run again: lists from the cache, the LLM judges
    assert "llm-judge" in second["llm_note"] and "3 users" in second["llm_note"]
    assert {("observed", "llm"), ("catalogue", "llm")} <= set(
        zip(second["agreement"]["protocol"], second["agreement"]["judge"])
    )
    m = second["metrics"]
    real_llm = m[(m.judge == "real@llm") & (m.metric == "ndcg@10")]
    assert len(real_llm) == 3 and real_llm["value"].between(0, 1).all()
    calib = second["calibration"].set_index("judge")
    assert calib.loc["llm", "n"] == held_out and 0 <= calib.loc["llm", "ece"] <= 1
    with duckdb.connect(db, read_only=True) as con:
        judged = dict(
            con.execute(
                "select protocol, count(*) from arena_judgments where run_id = 'arena-llm' and judge = 'llm' "
                "and p_like between 0 and 1 group by protocol"
            ).fetchall()
        )
        scatter = con.execute(
            "select count(*) from arena_scatter where run_id = 'arena-llm' and judge = 'llm'"
        ).fetchone()[0]
    assert judged["observed"] == held_out and judged["catalogue"] > 0 and scatter > 0


@pytest.mark.slow
def test_agents_trained_on_the_hybrid_reward_enter_the_arena(prefect_server, llm_server, run_settings, tmp_path):
    """Sim-to-real: `doppel rl --reward hybrid` (P(like) of the calibrated hybrid, drawn with the env's
    seed) trains PPO and DQN; `doppel arena --rl-run` enters them on their fold, judged on real ratings."""
    import duckdb

    from doppel.flows.arena import run_arena
    from doppel.flows.rl import rl
    from doppel.tasks.arena.config import ArenaSettings
    from doppel.tasks.rl.config import RLSettings
    from doppel.tasks.rl.env import DoppelRecEnv
    from doppel.tasks.rl.hybrid_reward import cached_hybrid_likes
    from doppel.tasks.rl.rewards import build_world, read_ensemble_inputs

    db = finished_ensemble(llm_server, run_settings, "ens-rl").run.db
    inputs = read_ensemble_inputs(db, "ens-rl")
    likes, info = cached_hybrid_likes(inputs, 4, n_users=12, seed=0)
    assert likes.p_like.shape == (12, len(inputs.item_ids)) and 0 < likes.p_like.mean() < 1
    assert cached_hybrid_likes(inputs, 4, n_users=12, seed=0)[1]["cached"] and not info["cached"]
    world = build_world(inputs.train, likes, inputs.embeddings, inputs.has_embedding, 4, 8)

    def rewards(seed: int) -> list[float]:
        env = DoppelRecEnv(world, leave_after=None, horizon=30)
        env.reset(seed=seed)
        return [env.step(a)[1] for a in np.argsort(-world.likes.p_like[env._user])[:30]]

    assert rewards(3) == rewards(3) and 0 < sum(rewards(3)) < 30  # drawn per step, fixed by the seed
    with pytest.raises(ValueError, match="letters, digits"):
        rl(RLSettings(db=db, ensemble_id="ens-rl", reward="hybrid", algos=["ppo"], rl_id="../escape", steps=64))
    summary = rl(
        RLSettings(
            db=db, ensemble_id="ens-rl", reward="hybrid", reward_users=12, algos=["ppo", "dqn", "popular"],
            steps=256, episodes=3, rl_id="rl-hybrid",
        )
    )  # fmt: skip
    assert summary["reward"] == "hybrid" and summary["users"] == 12 and set(summary["agents"]) == {"ppo", "dqn"}
    result = run_arena(
        ArenaSettings(
            db=db, only=["random", "most_popular"], n_boot=10, runner="threads", run_id="arena-rl",
            rl_run="rl-hybrid", cache_dir=str(tmp_path / "cache"),
        )
    )  # fmt: skip
    assert {"rl_ppo", "rl_dqn"} <= set(result["entrants"])
    u1 = result["folds"]["u1"]
    real = u1["metrics"].query("judge == 'real' and metric == 'ndcg@10'").set_index("recommender")["value"]
    assert {"rl_ppo", "rl_dqn", "most_popular"} <= set(real.index) and real.between(0, 1).all()
    with duckdb.connect(db, read_only=True) as con:
        family = dict(
            con.execute("select recommender, family from arena_recommenders where run_id = 'arena-rl'").fetchall()
        )
        listed = con.execute(
            "select count(distinct user_id), count(score) = count(*) from arena_lists "
            "where run_id = 'arena-rl' and recommender = 'rl_ppo' and protocol = 'observed'"
        ).fetchone()
    assert family["rl_ppo"] == family["rl_dqn"] == "rl"
    assert listed[0] > 0 and listed[1]  # every held-out pair of every test user has a policy score
