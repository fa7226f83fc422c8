"""`hashrec evaluate user` / `retrieval`: the user-conditional experiments and their tables."""

from __future__ import annotations

import argparse

from commands.cli.common import _print_table, _write_json


def _user(args: argparse.Namespace) -> int:
    from commands.experiments.user import run_user
    from services.user.task import post_features, split_with_features
    from services.vision.store import FeatureStore
    from shared.config import data_root, models_dir
    from shared.data.normalize import normalize_post_hashtags
    from shared.data.readers import read_posts
    from shared.data.simulated_users import drop_spammers, simulate, source_posts
    from shared.eval.content import text_features

    def content_features(train: list, test: list, encoder: str) -> dict:
        """Photo features for posts with a photo, the encoder's text vectors for the rest."""
        photos = [p for p in (*train, *test) if p.image is not None]
        features = post_features(photos, FeatureStore(models_dir() / "features")) \
            if photos else {}
        texts = [p for p in train if p.image is None], [p for p in test if p.image is None]
        if any(texts):
            features |= text_features(*texts, encoder, models_dir() / "text-features",
                                      args.seed)
        return features

    if args.train:
        posts = normalize_post_hashtags(read_posts(args.train))
        test_posts = normalize_post_hashtags(read_posts(args.test)) if args.test else []
        for spec, given in ((args.train, posts), (args.test, test_posts)):
            missing = sum(p.user is None or (p.image is None and not p.text) for p in given)
            if missing:
                raise SystemExit(f"{spec}: {missing} posts lack a user id or content (a "
                                 "photo or a text); the user task needs both")
        source = args.train
    else:
        posts = simulate(source_posts(data_root()), n_users=args.users, seed=args.seed,
                         signature_probability=args.signature_probability,
                         meaning_probability=args.meaning_probability)
        source = (f"simulated users (n={args.users}, seed={args.seed}, signature "
                  f"probability {args.signature_probability}"
                  + (f", meaning probability {args.meaning_probability}"
                     if args.meaning_probability else "") + ")")
    if args.test:  # the authors' split (e.g. each user's earliest 80 % / next 10 %)
        kept = {p.id for p in drop_spammers([*posts, *test_posts])}
        train = [p for p in posts if p.id in kept]
        test = [p for p in test_posts if p.id in kept]
        features = content_features(train, test, args.encoder)
        train = [p for p in train if p.id in features]
        test = [p for p in test if p.id in features]
    else:
        train, test, features = split_with_features(posts,
                                                    FeatureStore(models_dir() / "features"))
    from services.user.model import TensorParams

    try:
        hashtag_dim, photo_dim, user_dim = (int(v) for v in args.tensor_dims.split(","))
    except ValueError as error:
        raise SystemExit(f"--tensor-dims must be three integers D,F,E, got "
                         f"{args.tensor_dims!r}") from error
    params = TensorParams(hashtag_dim, photo_dim, user_dim, epochs=args.tensor_epochs,
                          seed=args.seed)
    result = run_user(train, test, features, params, seed=args.seed,
                      min_count=args.min_count or 3, max_vocab=args.max_vocab or None,
                      tensor_seeds=range(args.tensor_seeds))
    report = {"task": args.task, "train": source,
              "test": args.test or "last 10 % of each user's posts",
              "n_users": result.n_users, "n_train": result.n_train, "n_test": result.n_test,
              "n_test_all": result.n_test_all, "vocab": result.vocab,
              "content": args.encoder if args.test else "photo", "results": result.results,
              "results_all_posts": result.results_all_posts, "retrieval": result.retrieval,
              "habit_x_photo": result.habit_x_photo, "lift_x_photo": result.lift_x_photo,
              "by_photo": result.by_photo, "mixture": result.mixture,
              "three_way": result.three_way, "by_user_posts": result.by_user_posts,
              "recommender_form": result.recommender_form, "served": result.served,
              "recency": result.recency}
    if args.task == "user":
        _print_table(f"user-conditional tagging on {source}: {result.n_users} users, "
                     f"{result.n_train} train / {result.n_test} test posts, vocabulary "
                     f"{result.vocab}", result.results)
        if result.n_test_all > result.n_test:
            _print_table(f"the same over all {result.n_test_all} test posts (the "
                         f"{result.n_test_all - result.n_test} with no hashtag in the "
                         "vocabulary count as misses)", result.results_all_posts)
        for part in ("seen", "unseen"):
            if "results" in result.by_photo[part] and result.by_photo["seen"]["posts"]:
                _print_table(f"the {result.by_photo[part]['posts']} test posts whose content "
                             f"was {'' if part == 'seen' else 'not '}a training post's",
                             result.by_photo[part]["results"])
        print(f"test posts whose content (photo or text) is a training post's: "
              f"{result.by_photo['seen']['posts']}"
              f" of {result.n_test}")
        print("habit_x_photo: β log P_user(h) + γ log P_mcll(h | photo) / P(h), fit on "
              f"out-of-fold training posts: β {result.habit_x_photo['beta']}, "
              f"γ {result.habit_x_photo['gamma']}")
        lift = result.lift_x_photo
        print("lift_x_photo: β log lift_user(h) + γ log P_mcll(h | photo), lift = (uses + a) / "
              f"(uses the user's photos predict + a), fit on out-of-fold training posts: "
              f"a {lift['smoothing']}, β {lift['beta']}, γ {lift['gamma']}")
        print("mixture: w_user P_user(h) + w_photo P_mcll(h | content) + w_neighbours "
              "P_knn(h | content), weights chosen on held-out training posts: "
              + ", ".join(f"{k} {v:.1f}" for k, v in result.mixture.items()))
        form = result.recommender_form
        print("recommender_form: the recommender's combination, content (P_mcll + P_knn "
              "scaled to [0, 1]) + w · P_user(h) / max P_user, w chosen on held-out training "
              f"posts: w {form['user_weight']} (held-out A@1 / A@10 by w: "
              + ", ".join(f"{row['weight']:g}: {row['a1']:.1f}/{row['a10']:.1f}"
                          for row in form["accuracy"]) + ")")
        recency = result.recency
        print(f"recency: half-life {recency['half_life']:g} posts; mixture+recency: weights "
              + ", ".join(f"{k} {v:.2f}" for k, v in recency["weights"].items())
              + " (chosen on held-out training posts)")
        served = result.served
        print("served: the services' combination, content + w · u(h), u the served user "
              "model's answer mixed with the user's habits (user model's share m), m and w "
              f"chosen on held-out training posts: m {served['user_mix']}, w "
              f"{served['user_weight']} (held-out A@1 / A@10 by m, at its best w: "
              + ", ".join(f"{row['user_mix']:g} (w {row['user_weight']:g}): "
                          f"{row['chosen_on']['a1']:.1f}/{row['chosen_on']['a10']:.1f}"
                          for row in served["by_mix"]) + ")")
        three_way = result.three_way
        _print_table("the three-way term over the mixture, per seed (tensor_kept: early "
                     "stopping kept a trained tensor, not epoch 0)", {
                         f"seed {seed}": row for seed, row in three_way["per_seed"].items()})
        print("its gain over the mixture alone, mean ± sd over seeds: " + ", ".join(
            f"{metric} {g['mean']:+.2f} ± {g['sd']:.2f}"
            for metric, g in three_way["gain_over_mixture"].items()))
        for part, table in result.by_user_posts.items():
            if "results" in table:
                _print_table(f"the {table['posts']} test posts whose user has {part} "
                             "training posts", table["results"])
    _print_table("hashtag (+ user) -> photos retrieval", result.retrieval)
    example = dict(result.example)
    if not args.train:  # the planted habits of that simulated user
        from shared.data.simulated_users import users_of

        planted = users_of(posts, args.seed, args.users,
                           args.meaning_probability > 0)[example["user"]]
        example["planted"] = {"signatures": list(planted.signatures),
                              "language": planted.language,
                              "synonyms": sorted(set(planted.synonyms.values())),
                              **({"meanings": planted.meanings} if planted.meanings else {})}
    report["example"] = example
    print(f"user {example['user']}, one test post: hashtags {example['truth']}")
    print(f"  before conditioning (agnostic): {example['agnostic']}")
    print(f"  after conditioning (tensor):    {example['tensor']}")
    print(f"  habit x photo:                  {example['habit_x_photo']}")
    print(f"  lift x photo:                   {example['lift_x_photo']}")
    if "planted" in example:
        print(f"  planted habits: {example['planted']}")
    if args.save_model:
        print(f"user model written to {result.lookup.save(args.save_model).parent}")
    _write_json(args.json, report)
    return 0
