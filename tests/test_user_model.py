"""Veit et al.'s tensor model: loss, negative mining, lookup, cold users, online profiles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from services.user.lookup import COLD_START_POSTS, UserHashtagLookup, _softmax_adam
from services.user.model import (
    Offsets,
    TensorModel,
    TensorParams,
    ranking_loss,
    softmax_loss,
)
from services.user.profiles import KEPT_EXPECTED, SparseProfiles
from tests.lookups import small_lookup

ONE = TensorParams(hashtag_dim=1, photo_dim=1, user_dim=1)


def _scalar_model(hashtags: list[float], users: list[float]) -> TensorModel:
    """D = F = E = 1, W = 1, P = identity: s(h, x, u) = h · x · u, computable by hand."""
    model = TensorModel(len(hashtags), len(users), 1, ONE)
    with torch.no_grad():
        model.hashtags.weight.copy_(torch.tensor(hashtags)[:, None])
        model.users.weight.copy_(torch.tensor(users)[:, None])
        model.project.weight.fill_(1.0)
        model.project.bias.zero_()
        model.core.fill_(1.0)
    return model


def test_ranking_loss_matches_a_hand_computed_batch() -> None:
    # t0 = (h=1, x=1, u=1): s = 1;  t1 = (h=2, x=3, u=0.5): s = 3.
    model = _scalar_model([1.0, 2.0], [1.0, 0.5])
    loss = ranking_loss(model, torch.tensor([0, 1]), torch.tensor([[1.0], [3.0]]),
                        torch.tensor([0, 1]), torch.tensor([0, 1]),
                        torch.zeros(2, 2, dtype=torch.bool), torch.Generator().manual_seed(0))
    # t0's negatives (hard = intermediate with two in the batch): hashtag 2·1·1 = 2,
    # photo 1·3·1 = 3, user 1·1·0.5 = 0.5 → 2·(1−1+2) + 2·(1−1+3) + 2·(1−1+0.5) = 11.
    # t1's: hashtag 1·3·0.5 = 1.5 → 0; photo 2·1·0.5 = 1 → 0; user 2·3·1 = 6 → 2·(1−3+6) = 8.
    assert loss.item() == pytest.approx((11 + 8) / 2)


def test_hard_negatives_never_use_an_observed_triplet() -> None:
    # Three posts by distinct users; hashtag 2 scores highest everywhere.
    model = _scalar_model([1.0, 1.0, 5.0], [1.0, 1.0, 1.0])
    args = (torch.tensor([0, 1, 2]), torch.ones(3, 1), torch.tensor([0, 1, 2]),
            torch.tensor([0, 1, 2]))
    free = torch.zeros(3, 3, dtype=torch.bool)
    observed = free.clone()
    observed[0, 2] = True  # post 0 also carries hashtag 2: (h2, x0, u0) is no negative
    loss_free = ranking_loss(model, *args, free, torch.Generator().manual_seed(0))
    loss_observed = ranking_loss(model, *args, observed, torch.Generator().manual_seed(0))
    assert loss_observed < loss_free


@pytest.fixture()
def lookup() -> UserHashtagLookup:
    return small_lookup(with_effects=True)


@pytest.mark.parametrize("with_effects", [True, False])
def test_faiss_lookup_equals_brute_force_ranking(with_effects: bool) -> None:
    lookup = small_lookup(with_effects)
    features = np.random.default_rng(1).normal(size=(25, 8)).astype(np.float32)
    users = ["ann", "bob", "cy", None, "stranger"] * 5
    scores, ids = lookup.top_k(features, users, k=10)
    brute = lookup.scores(features, users)
    expected = np.argsort(-brute, axis=1, kind="stable")[:, :10]
    np.testing.assert_allclose(scores, np.take_along_axis(brute, expected, axis=1), atol=1e-4)
    assert (ids == expected).mean() > 0.98  # equal up to float ties


def test_cold_user_rule(lookup: UserHashtagLookup) -> None:
    np.testing.assert_allclose(lookup.user_vector("never-seen"), lookup.mean_user)
    assert not lookup.log_lift("never-seen").any()  # a stranger's lift is 1: the photo alone
    expected = (100 * lookup.user_vectors[2] + COLD_START_POSTS * lookup.mean_user) \
        / (100 + COLD_START_POSTS)
    np.testing.assert_allclose(lookup.user_vector("cy"), expected, rtol=1e-5)  # 100 posts
    # cy's lift: her uses against what her photos predict, both smoothed by a.
    counts, uses, a = lookup.hashtag_counts[2], lookup.expected_uses[2], 0.5
    np.testing.assert_allclose(lookup.log_lift("cy"), np.log((counts + a) / (uses + a)))
    # A stranger is scored by the agnostic model: ū and the photo model.
    features = np.ones((1, 8), np.float32)
    np.testing.assert_allclose(lookup.scores(features, ["never-seen"]),
                               lookup.scores(features, ["cy"], agnostic=True))


def test_offsets_enter_every_score_of_both_losses() -> None:
    # One user, two posts: post 0 = {0}, post 1 = {1}. The tensor is zero, so the scores
    # are the offsets alone: post 0's logits (0, log 2), post 1's (log 2, 0).
    model = TensorModel(2, 1, 1, TensorParams(1, 1, 1), zero_core=True)
    log2 = float(np.log(2))
    offsets = Offsets.from_arrays(habit=np.array([[0.0, 0.0], [log2, 0.0]]),
                                  content=np.array([[0.0, log2], [0.0, 0.0]]),
                                  user_habit=np.zeros((1, 2)))
    loss = softmax_loss(model, torch.zeros(2, 1), torch.tensor([0, 0]), torch.tensor([0, 1]),
                        torch.tensor([[True, False], [False, True]]), offsets)
    assert loss.item() == pytest.approx(np.log(3), rel=1e-5)  # each post's P = 1/3
    # Ranking: each positive scores 0. Post 0: hashtag negative (h1, x0) = log 2, photo
    # negative (h0, x1) = own habit 0 + photo[1, 0] = 0. Post 1: hashtag negative log 2,
    # photo negative (h1, x0) = 0 + photo[0, 1] = log 2. Hard = intermediate with two in
    # the batch, one user: no user negative. (2(1 + log 2) + 2 + 4(1 + log 2)) / 2.
    ranking = ranking_loss(model, torch.tensor([0, 1]), torch.zeros(2, 1),
                           torch.tensor([0, 0]), torch.tensor([0, 1]),
                           torch.tensor([[True, False], [False, True]]),
                           torch.Generator().manual_seed(0), offsets=offsets)
    assert ranking.item() == pytest.approx(4 + 3 * log2, rel=1e-5)


def test_one_term_offsets_are_the_logits_of_a_zero_tensor() -> None:
    # The mixture's log-probabilities as the only offsets: post 0's (log 2, 0) for its
    # hashtag 0 gives P = 2/3, post 1's (0, 0) for hashtag 1 gives 1/2.
    model = TensorModel(2, 1, 1, TensorParams(1, 1, 1), zero_core=True)
    offsets = Offsets.one_term(np.array([[np.log(2), 0.0], [0.0, 0.0]]))
    loss = softmax_loss(model, torch.zeros(2, 1), torch.tensor([0, 0]), torch.tensor([0, 1]),
                        torch.tensor([[True, False], [False, True]]), offsets)
    assert loss.item() == pytest.approx(-(np.log(2 / 3) + np.log(1 / 2)) / 2, rel=1e-5)
    with pytest.raises(ValueError, match="ranking loss"):
        ranking_loss(model, torch.tensor([0, 1]), torch.zeros(2, 1), torch.tensor([0, 0]),
                     torch.tensor([0, 1]), torch.tensor([[True, False], [False, True]]),
                     torch.Generator().manual_seed(0), offsets=offsets)


def test_mixture_weights_let_each_expert_decide_where_it_knows() -> None:
    from services.user.effects import Mixture, user_shares

    # Post a (truth h0): the user says h1, the photo h0. Post b (truth h1): the user says
    # h1 firmly, the photo h0 or h2. Neither alone ranks both first; a mixture does.
    user = np.array([[0.45, 0.55, 0.0], [0.1, 0.9, 0.0]])
    photo = np.array([[0.55, 0.0, 0.45], [0.4, 0.2, 0.4]])
    neighbours = np.array([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])  # always wrong
    mixture = Mixture.fit((user, photo, neighbours), [[0], [1]])
    assert mixture.weights[0] > 0 and mixture.weights[1] > 0
    mixed = mixture.probabilities((user, photo, neighbours))
    assert list(mixed.argmax(axis=1)) == [0, 1]
    np.testing.assert_allclose(mixed.sum(axis=1), 1.0, rtol=1e-6)
    # A user's shares; one with no use yet is the global share.
    np.testing.assert_allclose(user_shares(np.array([[1.0, 3.0], [0.0, 0.0]]),
                                           np.array([0.5, 0.5])), [[0.25, 0.75], [0.5, 0.5]])


def test_online_update_changes_that_user_only(lookup: UserHashtagLookup) -> None:
    features = np.random.default_rng(2).normal(size=(4, 8)).astype(np.float32)
    before = {u: lookup.scores(features, [u] * 4) for u in ("ann", "bob", "cy", None)}
    target = 7
    before_counts = lookup.hashtag_counts[0, target]
    before_uses = lookup.expected_uses[0].copy()
    tensor_before = lookup.scores(features[:1], ["ann"], effects=False)[0]
    for _ in range(3):
        lookup.update("ann", features[0], [target])
    after = {u: lookup.scores(features, [u] * 4) for u in ("ann", "bob", "cy", None)}
    rank = lambda s: int((s[0] > s[0, target]).sum())  # noqa: E731
    assert rank(after["ann"]) < rank(before["ann"])
    # The embedding moved too, not only the counts: the three-way term alone now ranks
    # the chosen hashtag higher against the rest.
    tensor_after = lookup.scores(features[:1], ["ann"], effects=False)[0]
    assert (tensor_after[target] - tensor_after.mean()
            > tensor_before[target] - tensor_before.mean() + 0.5)
    assert lookup.post_counts[0] == 4 and lookup.hashtag_counts[0, target] == \
        before_counts + 3
    photo = np.exp(lookup.effects.content.log_probabilities(features[:1])[0])
    # E grows by n P(h | x), kept for the hashtags used and the KEPT_EXPECTED largest
    # (services/user/profiles.py): the rest read as 0, never more than they are
    exact, kept = before_uses + 3 * photo, lookup.expected_uses[0]
    top = np.argsort(-exact)[:KEPT_EXPECTED // 2]  # well above the cut: exact
    np.testing.assert_allclose(kept[top], exact[top], rtol=1e-5)
    assert (kept <= exact + 1e-6).all()
    used = np.flatnonzero(lookup.hashtag_counts[0])
    assert np.count_nonzero(kept) == len(np.union1d(used, np.argsort(-kept)[:KEPT_EXPECTED]))
    assert np.count_nonzero(kept) < len(exact)
    for other in ("bob", "cy", None):  # everyone else, the agnostic fallback too
        np.testing.assert_array_equal(after[other], before[other])


def test_online_step_equals_torch_adam_on_the_softmax_likelihood() -> None:
    rng = np.random.default_rng(4)
    start, per_coordinate = rng.normal(size=4), rng.normal(size=(4, 16))
    hashtags, offset = rng.normal(size=(40, 16)), rng.normal(size=40)
    vector = torch.tensor(start, requires_grad=True)
    optimizer = torch.optim.Adam([vector], lr=0.05)
    for _ in range(30):
        optimizer.zero_grad()
        logits = torch.from_numpy(hashtags) @ (vector @ torch.from_numpy(per_coordinate)) \
            + torch.from_numpy(offset)
        (-torch.log_softmax(logits, dim=0)[[2, 9]].mean()).backward()
        optimizer.step()
    ours = _softmax_adam(start, per_coordinate, hashtags, offset, [2, 9], 30, 0.05)
    np.testing.assert_allclose(ours, vector.detach().numpy(), rtol=1e-4, atol=1e-5)


def test_with_a_zero_core_an_update_moves_counts_not_the_embedding() -> None:
    lookup = small_lookup(with_effects=True)
    assert lookup.tensor_active and lookup.update("ann", np.ones(8, np.float32), [5])
    lookup.core[:] = 0.0  # early stopping kept epoch 0: the three-way term is off
    assert not lookup.tensor_active
    vector, counts = lookup.user_vectors[0].copy(), lookup.hashtag_counts[0, 5]
    assert not lookup.update("ann", np.ones(8, np.float32), [5])
    np.testing.assert_array_equal(lookup.user_vectors[0], vector)
    assert lookup.hashtag_counts[0, 5] == counts + 1


def test_a_new_user_gets_a_profile_from_their_first_post(lookup: UserHashtagLookup) -> None:
    assert not lookup.log_lift("dee").any()
    lookup.update("dee", np.ones(8, np.float32), [3, 4])
    assert lookup.known("dee")
    mine = lookup.log_lift("dee")
    # used: above 1; the rest at most 1 (exactly 1 where the photo predicts them least)
    assert (mine[[3, 4]] > 0).all() and (np.delete(mine, [3, 4]) <= 0).all()
    assert (np.delete(mine, [3, 4]) < 0).sum() >= KEPT_EXPECTED - 2


def test_many_new_users_each_keep_their_own_rows(lookup: UserHashtagLookup) -> None:
    before = lookup.hashtag_counts.copy()
    for number in range(40):  # past every buffer's spare room, twice
        lookup.update(f"new{number}", np.ones(8, np.float32), [number % 40])
    np.testing.assert_array_equal(lookup.hashtag_counts[:3], before)
    for number in range(40):
        row = lookup.user_index[f"new{number}"]
        assert lookup.hashtag_counts[row].sum() == 1
        assert lookup.hashtag_counts[row, number % 40] == 1 and lookup.post_counts[row] == 1
    arrays, lists = lookup.profiles()
    again = small_lookup(with_effects=True)
    again.restore_profiles(arrays, lists)
    again.update("new41", np.ones(8, np.float32), [2])
    assert again.hashtag_counts.shape == (3 + 41, 40)
    np.testing.assert_array_equal(again.hashtag_counts[:43], lookup.hashtag_counts)


def test_update_rejects_empty_and_unknown_hashtags(lookup: UserHashtagLookup) -> None:
    with pytest.raises(ValueError, match="at least one accepted hashtag"):
        lookup.update("ann", np.ones(8, np.float32), [])
    with pytest.raises(ValueError, match=r"hashtag ids must lie in \[0, 40\)"):
        lookup.update("ann", np.ones(8, np.float32), [40])


def test_profiles_persist_and_tampering_is_caught(lookup: UserHashtagLookup,
                                                  tmp_path: Path) -> None:
    lookup.update("ann", np.ones(8, np.float32), [5])
    lookup.add_photos(["a", "b"], np.random.default_rng(5).normal(size=(2, 8)))
    lookup.save(tmp_path)
    again = UserHashtagLookup.load(tmp_path)
    features = np.random.default_rng(3).normal(size=(5, 8)).astype(np.float32)
    users = ["ann", "bob", None, "cy", "zed"]
    np.testing.assert_allclose(again.scores(features, users), lookup.scores(features, users),
                               atol=1e-5)
    (first, score), (second, _) = lookup.retrieve(3, "ann")
    assert [p for p, _ in again.retrieve(3, "ann")] == [first, second]
    assert again.retrieve(3, "ann")[0][1] == pytest.approx(score, abs=1e-5)
    core = np.load(tmp_path / "core.npy")
    core[0, 0, 0] += 1.0
    np.save(tmp_path / "core.npy", core)
    with pytest.raises(ValueError, match="checksum does not match"):
        UserHashtagLookup.load(tmp_path)


def test_real_user_ids_in_jsonl_work_end_to_end(tmp_path: Path, data_dir: Path,
                                                monkeypatch) -> None:
    import json

    from commands.cli import main
    from services.user.recency import RECENCY_HALF_LIVES
    from shared.data.simulated_users import simulate, source_posts

    monkeypatch.setenv("HASHREC_MODELS", str(tmp_path / "models"))
    posts = simulate(source_posts(data_dir)[::20], n_users=12, seed=3)
    data = tmp_path / "posts.jsonl"
    data.write_text("".join(json.dumps({
        "id": p.id, "image": str(p.image), "hashtags": list(p.hashtags), "user": p.user,
        "time": p.time.isoformat()}) + "\n" for p in posts))
    out = tmp_path / "user.json"
    assert main(["evaluate", "user", "--train", f"jsonl:{data}", "--json", str(out),
                 "--tensor-dims", "16,16,4", "--tensor-epochs", "2",
                 "--save-model", str(tmp_path / "user-model")]) == 0
    report = json.loads(out.read_text())
    assert set(report["results"]) == {"global_frequency", "user_frequency", "content_knn",
                                      "content_knn+user_frequency", "agnostic", "mcll",
                                      "habit_x_photo", "lift_x_photo", "mlp", "tensor",
                                      "mixture", "mixture+tensor", "recommender_form",
                                      "served", "recency", "cooccurrence",
                                      "mixture+recency"}
    assert report["recency"]["half_life"] in RECENCY_HALF_LIVES
    assert sum(report["recency"]["weights"].values()) == pytest.approx(1.0)
    assert report["recommender_form"]["user_weight"] in {
        row["weight"] for row in report["recommender_form"]["accuracy"]}
    assert report["served"]["user_weight"] in {
        row["weight"] for row in report["served"]["accuracy"]}
    assert report["served"]["user_mix"] in {row["user_mix"] for row in report["served"]["by_mix"]}
    assert set(report["habit_x_photo"]) == {"beta", "gamma"}
    assert set(report["mixture"]) == {"user", "photo", "neighbours"}
    assert sum(report["mixture"].values()) == pytest.approx(1.0)
    assert set(report["three_way"]["gain_over_mixture"]) == {"A@1", "A@10"}
    assert set(report["lift_x_photo"]) == {"smoothing", "beta", "gamma"}
    assert set(report["results"]["tensor"]) == {"A@1", "A@10"}
    assert set(report["retrieval"]["tensor"]) == {"P@10"}
    trained = UserHashtagLookup.load(tmp_path / "user-model")
    assert trained.known(posts[0].user)
    # The exact lookup on real vectors: trained main effects and real photo features.
    from services.vision.store import FeatureStore

    store = FeatureStore(tmp_path / "models" / "features")
    embedding, _ = store.embed_paths(sorted({p.image for p in posts})[:12])
    users = [p.user for p in posts[:12]]
    scores, ids = trained.top_k(embedding.features, users, k=10)
    brute = trained.scores(embedding.features, users)
    expected = np.argsort(-brute, axis=1, kind="stable")[:, :10]
    np.testing.assert_allclose(scores, np.take_along_axis(brute, expected, axis=1), atol=1e-4)
    assert (ids == expected).mean() > 0.98  # equal up to float ties


def _howyoutag_slice(data_dir: Path, out: Path, n_users: int) -> dict[str, int]:
    """The first n_users users' lines of the real train.csv and valid.csv, copied to out/;
    the number of lines kept in each."""
    kept: list[str] = []
    lines = {}
    for name in ("train", "valid"):
        rows = (data_dir / "howyoutag" / f"{name}.csv").read_text(encoding="utf-8")
        lines[name] = rows.splitlines()
    for line in lines["train"]:
        user = line.split("\t")[1]
        if user not in kept and len(kept) < n_users:
            kept.append(user)
    chosen = set(kept)
    out.mkdir()
    sizes = {}
    for name, rows in lines.items():
        mine = [line for line in rows if line.split("\t")[1] in chosen]
        (out / f"{name}.csv").write_text("\n".join(mine) + "\n", encoding="utf-8")
        sizes[name] = len(mine)
    return sizes


def test_real_users_text_posts_run_end_to_end_on_the_authors_split(
        tmp_path: Path, data_dir: Path, monkeypatch) -> None:
    """#HowYouTagTweets: real users' hashtag habits, content from the tweets' text."""
    import json

    from commands.cli import main

    monkeypatch.setenv("HASHREC_MODELS", str(tmp_path / "models"))
    sizes = _howyoutag_slice(data_dir, tmp_path / "tweets", 40)
    out = tmp_path / "user.json"
    assert main(["evaluate", "user", "--train", f"howyoutag:{tmp_path / 'tweets/train.csv'}",
                 "--test", f"howyoutag:{tmp_path / 'tweets/valid.csv'}", "--encoder", "tfidf",
                 "--min-count", "1", "--max-vocab", "0", "--tensor-dims", "16,16,4",
                 "--tensor-epochs", "2", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["content"] == "tfidf" and report["n_users"] == 40
    assert report["n_test_all"] == sizes["valid"]  # the authors' valid posts, every one
    assert report["n_train"] <= sizes["train"] and report["n_test"] < report["n_test_all"]
    results, everything = report["results"], report["results_all_posts"]
    assert {"content_knn", "content_knn+user_frequency", "tensor"} <= set(results)
    # Real people repeat their own hashtags: their history beats the crowd's by far, and
    # the content's neighbours find hashtags the crowd's top 10 does not.
    assert results["user_frequency"]["A@10"] > 2 * results["global_frequency"]["A@10"]
    assert results["content_knn"]["A@10"] > results["global_frequency"]["A@10"] + 10
    # Posts with no vocabulary hashtag count as misses over all posts.
    share = report["n_test"] / report["n_test_all"]
    for name, row in results.items():
        assert everything[name]["A@10"] == pytest.approx(row["A@10"] * share, abs=0.01)


def test_the_trained_tensor_recovers_each_users_favourite_hashtag() -> None:
    from services.user.model import Triplets, train_tensor

    rng = np.random.default_rng(0)
    n_users, n_posts = 6, 240
    users = rng.integers(0, n_users, n_posts)
    # Each user always writes their favourite hashtag (= their id) plus two random ones.
    hashtags = [[int(u), *rng.choice(range(6, 20), 2, replace=False).tolist()] for u in users]
    features = rng.normal(size=(n_posts, 8)).astype(np.float32)
    params = TensorParams(hashtag_dim=12, photo_dim=6, user_dim=6, epochs=30, batch_size=64,
                          learning_rate=0.02)  # Veit's tensor alone: no main effects
    model = train_tensor(features, Triplets.from_posts(hashtags, users), 20, n_users,
                         params, progress=False)
    counts = np.zeros((n_users, 20))
    for user, ids in zip(users, hashtags, strict=True):
        counts[user, ids] += 1
    lookup = UserHashtagLookup(model.weights(), [f"t{i}" for i in range(20)],
                               [f"u{i}" for i in range(n_users)],
                               np.bincount(users, minlength=n_users), counts)
    mean_photo = np.tile(features.mean(axis=0), (n_users, 1))
    top = lookup.scores(mean_photo, [f"u{i}" for i in range(n_users)])
    assert (top.argmax(axis=1) == np.arange(n_users)).all()


def test_retrieval_ranks_photos_by_the_users_tensor_score(lookup: UserHashtagLookup) -> None:
    features = np.random.default_rng(4).normal(size=(30, 8)).astype(np.float32)
    lookup.add_photos([f"p{i}" for i in range(20)], features[:20])
    lookup.add_photos([f"p{i}" for i in range(20, 30)], features[20:])  # added later
    for user in ("ann", "cy", None):
        found = lookup.retrieve(5, user, k=7)
        brute = lookup.scores(features, [user] * 30)[:, 5]  # the lift: same for all
        assert [p for p, _ in found] == [f"p{i}" for i in np.argsort(-brute)[:7]]
    with pytest.raises(ValueError, match="hashtag id"):
        lookup.retrieve(40, "ann")


def _one_tag_posts(n: int, vocabulary: int, seed: int) -> tuple[np.ndarray, list[list[int]]]:
    rng = np.random.default_rng(seed)
    truth = rng.integers(vocabulary, size=n)
    return truth, [[int(t)] for t in truth]


def test_expert_weights_weigh_the_expert_that_predicts_and_drops_the_one_that_does_not(
        ) -> None:
    from services.user.effects import fit_expert_weights

    rng = np.random.default_rng(0)
    truth, tags = _one_tag_posts(1000, 20, seed=0)
    # An expert whose favourite (probability 0.5) is right half the time: calibrated, so the
    # likelihood wants it at weight ≈ 1.
    favourite = np.where(rng.random(1000) < 0.5, truth, rng.integers(20, size=1000))
    informative = np.full((1000, 20), np.log(0.5 / 19))
    informative[np.arange(1000), favourite] = np.log(0.5)
    noise = rng.normal(size=(1000, 20))
    beta, gamma = fit_expert_weights(informative, noise, tags)
    assert 0.6 < beta < 1.5 and gamma < 0.1  # the habit predicts, the photo is noise
    beta, gamma = fit_expert_weights(noise, informative, tags)
    assert 0.6 < gamma < 1.5 and beta < 0.1  # and the other way round
    beta, gamma = fit_expert_weights(informative, noise, tags, max_rows=300)
    assert 0.5 < beta < 1.7 and gamma < 0.15  # a sample of the posts says the same


def test_habit_lift_is_one_for_what_the_photos_explain_above_for_habits_below_for_avoided(
        ) -> None:
    from services.user.effects import expected_uses, habit_lift

    # Two posts whose photo alone predicts food 0.6, the signature 0.01, beach 0.39, with
    # three hashtags each: expected uses 3.6, 0.06, 2.34.
    photo = np.log(np.array([[0.6, 0.01, 0.39]] * 2))
    expected = expected_uses(photo, [[0, 1, 2], [0, 1, 2]]).sum(axis=0)
    assert np.allclose(expected, [3.6, 0.06, 2.34])
    # The user wrote food 3.6 times (as predicted), the signature twice, beach never.
    lift = habit_lift(np.array([3.6, 2.0, 0.0]), expected, smoothing=0.5)
    assert lift[0] == pytest.approx(0.0)
    assert lift[1] == pytest.approx(np.log(2.5 / 0.56))
    assert lift[2] == pytest.approx(np.log(0.5 / 2.84))


def test_mcll_scores_each_training_post_with_a_model_that_never_saw_it() -> None:
    from services.user.effects import out_of_fold_content_model

    # Each photo is pure noise and its hashtag a coin of its own: a model that saw the post
    # memorises it; one that did not can only guess.
    rng = np.random.default_rng(0)
    features = rng.normal(size=(200, 400)).astype(np.float32)
    truth, tags = _one_tag_posts(200, 10, seed=2)
    out_of_fold, model = out_of_fold_content_model(features, tags, 10)
    held_out = (out_of_fold.argmax(axis=1) == truth).mean()
    memorised = (model.log_probabilities(features).argmax(axis=1) == truth).mean()
    assert held_out < 0.3 < memorised - held_out  # chance is 0.1


# --- the evaluation's numbers, on a population whose answers are known ---------------------

KINDS = ("beach", "pasta", "dog", "car", "tree")


def planted_posts(n_users: int = 24, posts_per_user: int = 30, seed: int = 0,
                  ) -> tuple[list, dict[str, np.ndarray]]:
    """Five kinds of photo (well-separated feature clusters); each user prefers one kind
    and writes every kind in one of two dialects ("beach0" or "beach1", as rule 5's
    languages). The photo decides the kind, the user the dialect: only a model of both
    ranks the one true hashtag first nearly always."""
    from datetime import UTC, datetime, timedelta

    from shared.data.readers import Post

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(KINDS), 32)) * 4
    posts, features = [], {}
    start = datetime(2024, 1, 1, tzinfo=UTC)
    for user in range(n_users):
        for index in range(posts_per_user):
            kind = user % len(KINDS) if rng.random() < 0.5 else int(rng.integers(len(KINDS)))
            post_id = f"u{user}-{index:02d}"
            posts.append(Post(id=post_id, image=None, hashtags=(f"{KINDS[kind]}{user % 2}",),
                              user=f"u{user}", time=start + timedelta(hours=index)))
            features[post_id] = (centres[kind] + rng.normal(size=32)).astype(np.float32)
    return posts, features


@pytest.fixture(scope="module")
def planted_result():
    from commands.experiments.user import run_user
    from shared.data.simulated_users import split_by_user_time

    posts, features = planted_posts()
    train, test = split_by_user_time(posts)
    params = TensorParams(hashtag_dim=8, photo_dim=8, user_dim=4, epochs=4)
    return run_user(train, test, features, params, min_count=1, progress=False), \
        (train, test, features)


def test_user_evaluation_finds_what_was_planted(planted_result) -> None:
    result, _ = planted_result
    table = result.results
    # The photo alone knows the kind, the user alone the dialect (and favourite kind).
    alone = max(table["mcll"]["A@1"], table["user_frequency"]["A@1"])
    assert alone > table["global_frequency"]["A@1"] + 20
    for method in ("tensor", "lift_x_photo", "habit_x_photo"):  # photo and user together
        assert table[method]["A@1"] > alone + 15, method  # measured +21 to +24
    # The planted hashtag is an AND (this user's word for this kind): a mixture says OR,
    # so it beats each signal alone (measured +11) but not the products; the three-way
    # term over it learns some of the AND (measured +4).
    assert table["mixture"]["A@1"] > alone + 5
    assert table["mixture+tensor"]["A@1"] > table["mixture"]["A@1"]
    # The recommender's form (content scaled to [0, 1] + w · the user's relative share,
    # w fitted on held-out training posts) is also an OR: measured +13.9 over each alone.
    assert table["recommender_form"]["A@1"] > alone + 5
    assert 0 < result.recommender_form["user_weight"] < 100
    # The served form (the served lookup's answer mixed with the user's habits, added to
    # the content) holds the AND of the lookup and the OR of the habits.
    assert table["served"]["A@1"] > alone + 15
    assert result.by_photo["seen"]["posts"] == 0
    assert result.by_photo["unseen"]["posts"] == result.n_test


def test_the_tensor_row_is_the_served_lookups_ranking_of_the_test_posts(planted_result,
                                                                        ) -> None:
    from services.user.task import accuracies, prepare_user_task

    result, (train, test, features) = planted_result
    task = prepare_user_task(train, test, features, min_count=1)
    scores = result.lookup.scores(task.x_test, task.test_users)
    assert result.results["tensor"] == accuracies(scores, task.truth)
    without_tensor = result.lookup.scores(task.x_test, task.test_users, tensor=False)
    assert result.results["lift_x_photo"] == accuracies(without_tensor, task.truth)


def test_retrieval_precision_by_hand() -> None:
    from commands.experiments.user import retrieval_precision

    # hashtag 0 ranks photos 0, 2 first: one relevant of two; hashtag 1 ranks 1, 2: both.
    scores = np.array([[0.9, 0.1], [0.1, 0.9], [0.8, 0.8], [0.2, 0.3]])
    truth = [frozenset({0}), frozenset({1}), frozenset({1}), frozenset()]
    assert retrieval_precision(scores, truth, k=2) == pytest.approx(75.0)


def test_user_frequency_counts_the_users_posts_and_strangers_get_everyones() -> None:
    from commands.experiments.user import user_frequency_scores
    from services.user.task import prepare_user_task
    from shared.data.readers import Post

    train = [Post(id="1", image=None, hashtags=("a", "b"), user="ann"),
             Post(id="2", image=None, hashtags=("b",), user="ann"),
             Post(id="3", image=None, hashtags=("c",), user="bob"),
             Post(id="4", image=None, hashtags=("c",), user="bob"),
             Post(id="5", image=None, hashtags=("c",), user="bob")]
    test = [Post(id="6", image=None, hashtags=("a",), user="ann"),
            Post(id="7", image=None, hashtags=("a",), user="zed")]
    features = {p.id: np.zeros(2, np.float32) for p in (*train, *test)}
    task = prepare_user_task(train, test, features, min_count=1)
    scores = user_frequency_scores(task)
    column = {term: task.vocab.terms.index(term) for term in "abc"}
    ann, stranger = scores
    assert ann[column["b"]] > ann[column["a"]] > ann[column["c"]]  # 2, 1, 0 (+ tie-break)
    assert ann[column["a"]] == pytest.approx(1.0, abs=0.1)
    assert [stranger[column[t]] for t in "abc"] == [1.0, 2.0, 3.0]


def test_main_effects_weigh_a_habit_and_a_photo_that_both_inform() -> None:
    from services.user.effects import mean_log_likelihood
    from services.user.task import prepare_user_task

    posts, features = planted_posts(seed=1)
    task = prepare_user_task(posts, [], features, min_count=1)
    effects, held = task.main_effects()
    assert effects.beta > 0.3 and effects.gamma > 0.3
    both = mean_log_likelihood(effects.beta * held.lift + effects.gamma * held.out_of_fold,
                               task.fit_ids)
    for alone in (effects.beta * held.lift, effects.gamma * held.out_of_fold):
        assert both > mean_log_likelihood(alone, task.fit_ids) + 0.1
    # The habit lift of a user's dialect is above 1; of the other dialect, far below.
    ann = task.user_row["u0"]
    lift = effects.log_lift(task.counts[ann], effects.expected[ann])
    assert lift[task.vocab.terms.index("beach0")] > np.log(1.5)
    assert lift[task.vocab.terms.index("beach1")] < np.log(1 / 3)


def test_out_of_fold_photo_scores_come_from_a_model_that_never_saw_the_photo() -> None:
    from services.user.effects import out_of_fold_content_model

    rng = np.random.default_rng(2)
    photos = rng.normal(size=(150, 16)).astype(np.float32)
    features = np.repeat(photos, 2, axis=0)  # every photo posted twice, one after the other
    hashtags = [[int(i)] for i in rng.integers(0, 10, 300)]
    out_of_fold, _ = out_of_fold_content_model(features, hashtags, 10)
    # Both posts of a photo are scored by the one model that saw neither.
    np.testing.assert_array_equal(out_of_fold[0::2], out_of_fold[1::2])


def test_sparse_profiles_read_as_the_dense_rows_they_keep_and_survive_a_snapshot() -> None:
    rng = np.random.default_rng(4)
    counts = rng.integers(0, 3, size=(5, 100)) * (rng.random((5, 100)) < 0.1)
    expected = rng.gamma(0.3, 1.0, size=(5, 100))
    profiles = SparseProfiles.from_dense(counts.astype(float), expected, kept_expected=8)
    dense_counts, dense_expected = profiles.dense()
    np.testing.assert_array_equal(dense_counts, counts)
    for row in range(5):
        kept = np.union1d(np.flatnonzero(counts[row]), np.argsort(-expected[row])[:8])
        np.testing.assert_allclose(dense_expected[row, kept], expected[row, kept], rtol=1e-6)
        assert not np.delete(dense_expected[row], kept).any()
        ids = np.array([0, 7, 50, 99])
        c, e = profiles.at(row, ids)
        np.testing.assert_array_equal(c, dense_counts[row, ids])
        np.testing.assert_array_equal(e, dense_expected[row, ids])
        np.testing.assert_array_equal(profiles.used(row), np.flatnonzero(counts[row]))
    again = SparseProfiles.from_arrays(100, profiles.arrays(), kept_expected=8)
    np.testing.assert_array_equal(again.dense()[1], dense_expected)
    row = again.append()
    again.add_post(row, [3, 9], np.linspace(0.01, 0.02, 100))  # the top 8: 92-99
    assert again.used(row).tolist() == [3, 9] and np.count_nonzero(again.expected(row)) == 10
    assert profiles.nbytes < dense_counts.nbytes  # the point of it


def test_a_snapshot_from_before_profiles_were_sparse_is_restored(
        lookup: UserHashtagLookup) -> None:
    lookup.update("dee", np.ones(8, np.float32), [3, 4])
    arrays, lists = lookup.profiles()
    old = {name: arrays[name] for name in ("user_vectors", "post_counts")}
    old["hashtag_counts"], old["expected_uses"] = lookup.hashtag_counts, lookup.expected_uses
    again = small_lookup(with_effects=True)
    again.restore_profiles(old, lists)
    np.testing.assert_array_equal(again.hashtag_counts, lookup.hashtag_counts)
    np.testing.assert_allclose(again.log_lift("dee"), lookup.log_lift("dee"))
