"""The ``hashrec`` command."""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

from shared.config import DATA_ROOT_ENV, setup_logging
from shared.data.simulated_users import SIGNATURE_PROBABILITY

log = logging.getLogger("hashrec")

#: where `hashrec serve` writes its pid under $HASHREC_MODELS, for `hashrec rollout`
PID_FILE = "serve.pid"
TASKS = ("h2l", "l2h", "ks", "image2tag", "user", "retrieval", "served")


def _add_evaluate(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "evaluate", help="run one of the papers' experiments on real data",
        description="Runs an experiment and prints its table; --json writes it as JSON.")
    parser.add_argument("task", choices=TASKS)
    parser.add_argument("--train", metavar="SPEC",
                        help="FORMAT:PATH, e.g. dcmr:../shared/data/mirflickr25k (user and "
                             "retrieval: default the simulated-user benchmark; a jsonl file "
                             "with real user ids works too)")
    parser.add_argument("--users", type=int, default=300,
                        help="user/retrieval: simulated users in the benchmark")
    parser.add_argument("--signature-probability", type=float,
                        default=SIGNATURE_PROBABILITY,
                        help="user/retrieval: how often a simulated user adds each of "
                             "their two signature hashtags (default calibrated to Veit et "
                             "al.'s user-frequency baseline: bench/user_calibration.py)")
    parser.add_argument("--meaning-probability", type=float, default=0.0,
                        help="user/retrieval: rule 7 of the simulated users (personal "
                             "meanings of ambiguous hashtags, Veit's #rock): how often a "
                             "user adds one to a photo of its topic; 0 (default): off")
    parser.add_argument("--test", metavar="SPEC",
                        help="test data set; without it a seeded 80/20 split of --train")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write the results here")
    parser.add_argument("--plot", type=Path, metavar="PNG",
                        help="t-SNE map of the test images' DeepWalk vectors by label")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-count", type=int, default=None,
                        help="keep terms seen at least this often (default: 5, gensim's, for "
                             "h2l/l2h; 3 for the image2tag hashtag vocabulary)")
    parser.add_argument("--hashtag-corpus", metavar="SPEC,...",
                        help="image2tag: tag-only hashtag lists the semantic method reads "
                             "(default harrison:harrison)")
    parser.add_argument("--model", type=Path, metavar="DIR",
                        help="served: the model directory (default: the newest under "
                             "$HASHREC_MODELS)")
    parser.add_argument("--target", metavar="HOST:PORT",
                        help="served: ask a running RecommenderService instead of loading "
                             "the model in process")
    parser.add_argument("--ignore-tags", default="", metavar="A,B,...",
                        help="image2tag: hashtags removed from ground truth and predictions "
                             "(e.g. the search hashtags a data set was collected by)")
    parser.add_argument("--encoder", default="minilm", choices=("minilm", "e5", "tfidf"),
                        help="user with --test: the text encoder for posts with text "
                             "(all-MiniLM-L6-v2; multilingual-e5-small, the extra 'e5'; or "
                             "TF-IDF + SVD fit on the training posts)")
    parser.add_argument("--max-vocab", type=int, default=2000,
                        help="user: at most this many hashtags (0: every hashtag seen "
                             "--min-count times)")
    parser.add_argument("--tensor-dims", default="300,300,50", metavar="D,F,E",
                        help="user: hashtag, photo and user embedding sizes (Veit et al.)")
    parser.add_argument("--tensor-epochs", type=int, default=30,
                        help="user: at most; the best epoch on held-out posts is kept")
    parser.add_argument("--tensor-seeds", type=int, default=1, metavar="N",
                        help="user: train the three-way term over the mixture with N seeds "
                             "(0..N-1; the mixture fixed) and report its gain as mean ± sd")
    parser.add_argument("--save-model", type=Path, metavar="DIR",
                        help="user: write the trained user model (arrays + manifest) here")
    parser.add_argument("--image-methods", default="frequency,knn,mlp,word,graph",
                        help="image2tag: comma-separated candidate methods (fusion of all)")
    parser.add_argument("--merge-synonyms", action="store_true",
                        help="merge hashtags through WordNet synsets (Zhong et al. §3.3)")
    parser.add_argument("--methods", default="frequency,word2vec,deepwalk",
                        help="comma-separated subset of frequency,word2vec,deepwalk")
    embedding = parser.add_argument_group("embeddings")
    embedding.add_argument("--dim", type=int, default=256)
    embedding.add_argument("--walks-per-node", type=int, default=10)
    embedding.add_argument("--walk-length", type=int, default=80)
    embedding.add_argument("--window", default="5",
                           help="DeepWalk's skip-gram window; several (5,10): the one with "
                                "the best O-F1 on a validation split of the training images")
    embedding.add_argument("--negative", type=int, default=5)
    embedding.add_argument("--walk-epochs", type=int, default=1,
                           help="skip-gram passes over the walks (10 walks/node already "
                                "repeat every node)")
    embedding.add_argument("--sample", type=float, default=1e-4,
                           help="sub-sampling threshold for frequent nodes in the walks")
    embedding.add_argument("--word-epochs", type=int, default=5)
    embedding.add_argument("--workers", type=int, default=2)
    parser.set_defaults(handler=_evaluate)


def _load(args: argparse.Namespace) -> tuple[list, list]:
    from shared.config import models_dir
    from shared.data.normalize import SynonymMerger, normalize_post_hashtags
    from shared.data.readers import read_posts
    from shared.data.split import seeded_split

    merge = SynonymMerger(models_dir() / "nltk_data") if args.merge_synonyms else None
    train = normalize_post_hashtags(read_posts(args.train), merge)
    if args.test:
        return train, normalize_post_hashtags(read_posts(args.test), merge)
    return seeded_split(train, args.seed)


def _print_table(title: str, results: dict[str, dict[str, float]],
                 seconds: dict[str, float] | None = None) -> None:
    columns = list(next(iter(results.values())))
    width = max(20, *(len(method) + 2 for method in results))
    header = f"{'method':<{width}}" + "".join(f"{c:>9}" for c in columns)
    if seconds:
        header += f"{'seconds':>10}"
    print(title)
    print(header)
    print("-" * len(header))
    for method, row in results.items():
        line = f"{method:<{width}}" + "".join(f"{row[c]:>9.2f}" for c in columns)
        if seconds:
            line += f"{seconds.get(method, 0.0):>10.1f}"
        print(line)


def _evaluate(args: argparse.Namespace) -> int:
    from commands.experiments.zhong import Example, choose_window, ks_test, run_bidirectional
    from services.graph.model import DeepWalkParams, SkipGramParams
    from services.word.model import Word2VecParams

    if args.task in ("user", "retrieval"):
        return _user(args)
    if args.task == "served":
        return _served(args)
    if not args.train:
        raise SystemExit(f"evaluate {args.task} needs --train FORMAT:PATH")
    train, test = _load(args)
    report: dict = {"task": args.task, "train": args.train, "test": args.test or
                    f"{args.train} (seeded 80/20 split, seed {args.seed})"}
    if args.task == "image2tag":
        return _image2tag(args, train, test, report)
    if args.task == "ks":
        posts = [*train, *test]
        result = ks_test([p.hashtags for p in posts], [p.labels or () for p in posts])
        report.update(vars(result))
        print(f"two-sample KS test over {result.n_hashtags} hashtags x {result.n_labels} labels "
              f"({result.n_images} images): statistic {result.statistic:.4f}, "
              f"p-value {result.p_value:.3g} (asymptotic, as Zhong et al.), "
              f"permutation p-value {result.permutation_p_value:.3g} "
              f"({result.n_permutations} shuffles of hashtags across images)")
    else:
        if not any(p.labels for p in train):
            raise SystemExit(f"{args.train} has no labels: {args.task} needs labelled images "
                             "(a dcmr or jsonl data set with labels)")
        if args.task == "h2l":
            make = lambda p: Example(p.hashtags, p.labels or ())  # noqa: E731
        else:
            make = lambda p: Example(p.labels or (), p.hashtags)  # noqa: E731
        try:
            windows = [int(w) for w in args.window.split(",")]
        except ValueError as error:
            raise SystemExit(f"--window must be integers separated by commas, got "
                             f"{args.window!r}") from error
        walks = DeepWalkParams(
            walks_per_node=args.walks_per_node, walk_length=args.walk_length, seed=args.seed,
            skipgram=SkipGramParams(dim=args.dim, window=windows[0], negative=args.negative,
                                    epochs=args.walk_epochs, sample=args.sample,
                                    seed=args.seed, workers=args.workers))
        words = Word2VecParams(dim=args.dim, epochs=args.word_epochs, seed=args.seed,
                               workers=args.workers)
        frequency_name = "label_frequency" if args.task == "h2l" else "hashtag_frequency"
        train_examples = [make(p) for p in train]
        if len(windows) > 1:
            window, validation = choose_window(train_examples, windows, frequency_name,
                                               words, walks, args.min_count or 5, args.seed)
            print(f"skip-gram window {window}, by DeepWalk's O-F1 on a validation split of "
                  f"the training images: {validation}")
            report["window_choice"] = {"chosen": window, "validation_o_f1": validation}
            walks = replace(walks, skipgram=replace(walks.skipgram, window=window))
        result = run_bidirectional(
            train_examples, [make(p) for p in test], frequency_name, words, walks,
            min_input_count=args.min_count or 5, seed=args.seed,
            methods=args.methods.split(","))
        report.update(n_train=result.n_train, n_test=result.n_test, results=result.results,
                      seconds=result.seconds)
        _print_table(f"{args.task.upper()} on {report['test']}: top {3}, "
                     f"{result.n_train} train / {result.n_test} test images",
                     result.results, result.seconds)
        if args.plot:
            from shared.eval.plots import tsne_by_label

            method = "deepwalk" if "deepwalk" in result.image_vectors else \
                next(iter(result.image_vectors))
            tsne_by_label(result.image_vectors[method], result.test_targets, args.plot,
                          title=f"{args.task.upper()}: test images, {method} vectors",
                          seed=args.seed)
            print(f"plot written to {args.plot}")
    _write_json(args.json, report)
    return 0


def _ignored_tags(text: str) -> frozenset[str]:
    """--ignore-tags "A,B,..." as normalised hashtags ("#Food" and "food" are one)."""
    from shared.data.normalize import normalize_hashtag

    return frozenset(filter(None, (normalize_hashtag(t) for t in text.split(",") if t.strip())))


def _image2tag(args: argparse.Namespace, train: list, test: list, report: dict) -> int:
    from commands.experiments.image2tag import run_image2tag
    from services.vision.store import FeatureStore
    from shared.config import models_dir

    ignore = _ignored_tags(args.ignore_tags)
    methods = args.image_methods.split(",")
    text = None
    if "semantic" in methods:
        from commands.train import hashtag_knowledge

        # HARRISON never shares a post with a test set; another corpus might.
        text = hashtag_knowledge((args.hashtag_corpus or "harrison:harrison").split(","))
    result = run_image2tag(train, test, FeatureStore(models_dir() / "features"), ignore,
                           methods=methods, min_count=args.min_count or 3, seed=args.seed,
                           text=text)
    report.update(n_train=result.n_train, n_test=result.n_test, vocab=len(result.vocabulary),
                  ignored=sorted(ignore), results=result.results, seconds=result.seconds,
                  fusion_weights=result.fusion_weights, fusion_mode=result.fusion_mode,
                  top5_agreement_with_best=result.agreement,
                  instahash_similarity=result.similarity)
    _print_table(f"image -> hashtags on {report['test']}: {result.n_train} train / "
                 f"{result.n_test} test photos, vocabulary {len(result.vocabulary)}"
                 + (f", ignoring {', '.join(sorted(ignore))}" if ignore else ""),
                 result.results, result.seconds)
    print(f"fusion ({result.fusion_mode}) weights, fit on out-of-fold scores of the training "
          f"photos: {result.fusion_weights}")
    print(f"top-5 agreement (Jaccard) with the best single method: {result.agreement}")
    _print_table("InstaHash's measure: the top 5 against the truth in the training hashtags' "
                 "Word2Vec space (cosine of the means; shares and Jaccard in %)",
                 result.similarity)
    _write_json(args.json, report)
    return 0


def _served(args: argparse.Namespace) -> int:
    from commands.experiments.served import (
        evaluate_served,
        grpc_answer,
        in_process_answer,
        own_community_probability,
    )
    from commands.train import held_out_split
    from services.image_models import load_image_models
    from services.vision.store import FeatureStore
    from shared.config import models_dir
    from shared.data.normalize import normalize_post_hashtags
    from shared.data.readers import parse_spec, read_posts

    if not args.test:
        raise SystemExit("evaluate served needs --test SPEC[,SPEC...]")
    model_dir = args.model or newest_model(models_dir())
    if model_dir is None:
        raise SystemExit(f"no trained model under {models_dir()}: run `hashrec train`")
    manifest = json.loads((model_dir / "manifest.json").read_text())
    trained = {str(parse_spec(spec)): community for spec, community in
               zip(manifest.get("data", ()), manifest.get("communities", ()), strict=False)}
    hold_out = manifest.get("hold_out")
    store = FeatureStore(models_dir() / "features")
    models = None if args.target else load_image_models(model_dir)  # loaded once
    answer = grpc_answer(args.target) if args.target else in_process_answer(models, store)
    report: dict = {"task": "served", "model": model_dir.name, "hold_out": hold_out,
                    "target": args.target, "results": {}}
    for spec in args.test.split(","):
        posts = normalize_post_hashtags(read_posts(spec))
        community = trained.get(str(parse_spec(spec)))
        if community is not None and hold_out is None:
            raise SystemExit(f"{spec} trained {model_dir.name} in full: no photo of it is "
                             "unseen (train with --hold-out SEED)")
        seed = hold_out["seed"] if community is not None else args.seed
        train, test = held_out_split(posts, seed)
        ignore = (frozenset(community["ignored"]) if community is not None
                  else _ignored_tags(args.ignore_tags))
        result = evaluate_served(train, test, answer, ignore)
        report["results"][spec] = result.results
        rows = {truth: {"served (gate)": row} for truth, row in result.results.items()}
        if community is not None and len(manifest.get("communities", ())) > 1:
            # the same photos, each posted to its own set (RecommendRequest.community)
            named = evaluate_served(train, test, grpc_answer(
                args.target, community=community["name"]) if args.target else
                in_process_answer(models, store, community=community["name"]),
                ignore).results
            report.setdefault("community_named", {})[spec] = named
            for truth, row in named.items():
                rows[truth]["served (community named)"] = row
        if not args.target:  # in process, the same photos without outside hashtags
            vocabulary_only = evaluate_served(train, test, in_process_answer(
                models, store, with_outside=False), ignore).results
            report.setdefault("vocabulary_only", {})[spec] = vocabulary_only
            for truth, row in vocabulary_only.items():
                rows[truth]["vocabulary only"] = row
        for truth, table in rows.items():
            _print_table(f"{model_dir.name} on {spec}'s held-out photos "
                         f"({table['served (gate)']['photos']} with a tag; truth: {truth})",
                         {name: {k: v for k, v in row.items() if k != "photos"}
                          for name, row in table.items()})
        if community is not None and not args.target:
            index = [c["name"] for c in manifest["communities"]].index(community["name"])
            gate = own_community_probability(models, store,
                                             [p for p in test if p.image], index)
            if gate is not None:
                report.setdefault("gate", {})[spec] = gate
                print(f"the gate on these photos: P(own photo set) {gate['mean_probability']}"
                      f" on average; own set most probable for {gate['argmax_right']} %")
    _write_json(args.json, report)
    return 0


def _write_json(path: Path | None, report: dict) -> None:
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")


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


def _add_train(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "train", help="train the photo -> hashtag models and write a versioned artifact",
        description="Fits every photo -> hashtag method and the fusions and writes "
                    "OUT/<version>/ (plain arrays, JSON, a checksummed manifest). Without "
                    "--train: the served default, every shipped photo set as a community "
                    "and the tag-only corpora as hashtag knowledge.")
    parser.add_argument("--train", metavar="SPEC",
                        help="one data set (FORMAT:PATH); default: the shipped photo sets")
    parser.add_argument("--out", type=Path, help="default: $HASHREC_MODELS (./models)")
    parser.add_argument("--ignore-tags", default="", metavar="A,B,...")
    parser.add_argument("--min-count", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", default=None, metavar="A,B,...",
                        help="photo -> hashtag methods (default: frequency,knn,mlp,word,graph "
                             "with --train; the default model adds semantic, autorec_masked)")
    parser.add_argument("--hashtag-corpus", default=None, metavar="SPEC,...",
                        help="tag-only hashtag lists for hashtag knowledge (default model: "
                             "harrison:harrison,dcmr:mirflickr25k)")
    parser.add_argument("--hold-out", type=int, default=None, metavar="SEED",
                        help="keep the seeded 20 %% of each data set out of training, as "
                             "`evaluate image2tag` does, for `evaluate served`")
    parser.add_argument("--engine", choices=("local", "ray"), default="local",
                        help="where feature extraction and the independent fits run: this "
                             "process, or Ray (the same artifact either way)")
    parser.add_argument("--address", default=None, metavar="ADDR",
                        help="with --engine ray: an existing cluster (e.g. KubeRay's head, "
                             "ray://HOST:10001); default: a local Ray started here")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="local: processes the independent fits run in (default: the "
                             "usable cores; 1: this process alone); ray: vision actors, "
                             "and the local Ray's CPUs (default: every CPU, or every GPU)")
    parser.set_defaults(handler=_train)


def _train(args: argparse.Namespace) -> int:
    from commands.engine import make_engine
    from commands.train import DEFAULT_CORPORA, DEFAULT_METHODS, train_default, train_from_spec
    from services.vision.store import FeatureStore
    from shared.config import models_dir

    out = args.out or models_dir()
    workers = args.workers
    if workers is None and args.engine == "local":
        from shared.batching import usable_cores

        workers = usable_cores()
    engine = make_engine(args.engine, args.address, workers)
    if args.train:
        if args.hold_out is not None or args.hashtag_corpus:
            raise SystemExit("--hold-out and --hashtag-corpus go with the default model "
                             "(no --train)")
        models = train_from_spec(args.train, out, _ignored_tags(args.ignore_tags),
                                 args.min_count, args.seed,
                                 args.methods.split(",") if args.methods else None,
                                 engine)
    else:
        corpora = args.hashtag_corpus.split(",") if args.hashtag_corpus else DEFAULT_CORPORA
        methods = args.methods.split(",") if args.methods else DEFAULT_METHODS
        models = train_default(out, FeatureStore(models_dir() / "features"), args.hold_out,
                               corpora=corpora, methods=methods, seed=args.seed,
                               engine=engine)
    fusion = (f"learned ({models.ranker.weights})" if models.ranker is not None
              else f"{models.fusion.mode} {models.fusion.weights}")
    print(f"model {models.version}: {len(models.vocabulary)} hashtags, methods "
          f"{', '.join(models.methods)}, fusion {fusion}")
    print(f"written to {models.directory}")
    return 0


def _add_recommend(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("recommend", help="ask a running recommender for hashtags",
                                 description="Sends IMAGE to RecommenderService at --target.")
    parser.add_argument("image", type=Path)
    parser.add_argument("--target", default="127.0.0.1:50050", metavar="HOST:PORT")
    parser.add_argument("--user", default="", help="the poster's id, when known")
    parser.add_argument("--community", default="",
                        help="where the photo is posted (one of the model's photo sets, "
                             "e.g. instagram, food, flickr); default: read from the photo")
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--json", action="store_true", help="print the answer as JSON")
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.set_defaults(handler=_recommend)


def _read_image(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError as error:
        print(f"hashrec: cannot read {path}: {error.strerror}", file=sys.stderr)
        return None


def _call(target: str, rpc: str, request, timeout: float):
    """One RecommenderService call; on an error prints ``CODE: message``, returns None."""
    import grpc
    from hashrec.v1 import recommender_pb2_grpc

    from shared.grpc_server import blocking_channel

    with blocking_channel(target) as channel:
        try:
            return getattr(recommender_pb2_grpc.RecommenderServiceStub(channel), rpc)(
                request, timeout=timeout)
        except grpc.RpcError as error:
            print(f"{error.code().name}: {error.details()}", file=sys.stderr)
            return None


def _as_json(reply) -> str:
    from google.protobuf.json_format import MessageToDict

    return json.dumps(MessageToDict(reply, preserving_proto_field_name=True,
                                    always_print_fields_with_no_presence=True),
                      ensure_ascii=False, indent=2)


def _recommend(args: argparse.Namespace) -> int:
    from hashrec.v1 import recommender_pb2

    image = _read_image(args.image)
    if image is None:
        return 2
    reply = _call(args.target, "Recommend", recommender_pb2.RecommendRequest(
        image=image, user_id=args.user, k=args.k, community=args.community), args.timeout)
    if reply is None:
        return 1
    if args.json:
        print(_as_json(reply))
    else:
        print(f"model {reply.model_version}" + (" (degraded)" if reply.degraded else ""))
        if reply.communities:
            mix = ", ".join(f"{c.name} {c.weight:.2f}" for c in reply.communities)
            print(f"community from the {reply.community_from}: {mix}")
        for tag in reply.hashtags:
            support = ", ".join(f"{s.method} #{s.rank}" for s in tag.signals)
            print(f"#{tag.hashtag:<24}{tag.score:8.3f}  {support}")
    return 0


def _add_feedback_and_retrieve(commands: argparse._SubParsersAction) -> None:
    feedback = commands.add_parser(
        "feedback", help="tell a running recommender which hashtags a user chose for a photo",
        description="RecommenderService.Feedback: the user's profile learns from them.")
    feedback.add_argument("image", type=Path)
    feedback.add_argument("hashtags", nargs="+")
    feedback.add_argument("--user", required=True)
    feedback.add_argument("--community", default="",
                          help="where the photo was posted (counted in the user's "
                               "communities); default: read from the photo")
    retrieve = commands.add_parser(
        "retrieve", help="photos for a hashtag, as a user would tag them",
        description="RecommenderService.Retrieve (Veit et al. section 4.3).")
    retrieve.add_argument("hashtag")
    retrieve.add_argument("--user", default="")
    retrieve.add_argument("-k", type=int, default=10)
    for parser, handler in ((feedback, _feedback), (retrieve, _retrieve)):
        parser.add_argument("--target", default="127.0.0.1:50050", metavar="HOST:PORT")
        parser.add_argument("--timeout", type=float, default=30.0)
        parser.set_defaults(handler=handler)


def _feedback(args: argparse.Namespace) -> int:
    from hashrec.v1 import recommender_pb2

    image = _read_image(args.image)
    if image is None:
        return 2
    return _printed(_call(args.target, "Feedback", recommender_pb2.FeedbackRequest(
        image=image, user_id=args.user, hashtags=args.hashtags, community=args.community),
        args.timeout))


def _retrieve(args: argparse.Namespace) -> int:
    from hashrec.v1 import user_pb2

    return _printed(_call(args.target, "Retrieve", user_pb2.RetrieveRequest(
        hashtag=args.hashtag, user_id=args.user, k=args.k), args.timeout))


def _printed(reply) -> int:
    """The exit status of a call: 0 with the reply printed as JSON, 1 after an error."""
    if reply is None:
        return 1
    print(_as_json(reply))
    return 0





def _add_serve(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "serve", help="run the five services on this machine, training models first if none "
                      "exist",
        description="RecommenderService on PORT; VisionService, WordEmbeddingService, "
                    "GraphEmbeddingService and UserProfileService on PORT+1..PORT+4; the "
                    "page on --http-port. Each service is its own process (python -m "
                    "services.<name>.server), supervised: restarted with backoff when it "
                    "dies; SIGTERM or Ctrl-C drains them all (commands/supervisor.py). "
                    "Cache: Redis when HASHREC_REDIS_URL is set, else in-process per service.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--metrics-port", type=int, default=None,
                        help="the first of the five services' Prometheus ports (default: "
                             "9100 at --port 50050, moved with --port)")
    parser.add_argument("--http-port", type=int, default=8080,
                        help="the web page and JSON API (services/gateway); 0: not served")
    parser.add_argument("--models", type=Path,
                        help="a model directory from `hashrec train`; default: the newest "
                             "under $HASHREC_MODELS, trained from --train when there is none")
    parser.add_argument("--user-model", type=Path,
                        help="a user model directory (services/user/train.py); default: the "
                             "newest under $HASHREC_MODELS/user, trained on the simulated-user "
                             "benchmark when there is none")
    parser.add_argument("--train", default=None, metavar="SPEC",
                        help="data to train on when no model exists (default: the default "
                             "model, every shipped photo set: `hashrec train`)")
    parser.add_argument("--single-process", action="store_true",
                        help="every service in this one process (small machines, tests)")
    parser.set_defaults(handler=_serve)


def newest_model(root: Path) -> Path | None:
    """The most recent `hashrec train` output under ``root``."""
    from services.image_models import KIND
    from shared.artifacts import newest_artifact

    return newest_artifact(root, KIND, verified=True)


def _serve(args: argparse.Namespace) -> int:
    import asyncio

    from commands.train import train_default, train_from_spec
    from services.gateway.server import Settings as GatewaySettings
    from services.gateway.server import serve as serve_gateway
    from services.graph.server import serve as serve_graph
    from services.image_models import KIND as IMAGE_KIND
    from services.recommender.server import serve as serve_recommender
    from services.user.lookup import KIND as USER_KIND
    from services.user.server import serve as serve_user
    from services.user.train import newest_user_model, train_user_model
    from services.vision.server import serve as serve_vision
    from services.vision.store import FeatureStore
    from services.word.server import serve as serve_word
    from shared.artifacts import resolve_artifact
    from shared.cache import make_cache
    from shared.config import models_dir

    try:  # the flags take what the services' environment variables take
        model_dir = resolve_artifact(args.models, IMAGE_KIND) if args.models \
            else newest_model(models_dir())
        user_dir = resolve_artifact(args.user_model, USER_KIND) if args.user_model else None
    except (FileNotFoundError, ValueError) as error:
        print(f"hashrec serve: {error}", file=sys.stderr)
        return 2
    if model_dir is None:
        print(f"no trained model under {models_dir()}: training "
              f"{args.train or 'the default model'} first", flush=True)
        from commands.engine import LocalEngine
        from shared.batching import usable_cores

        engine = LocalEngine(usable_cores())  # the fits side by side, one a core
        model_dir = (train_from_spec(args.train, models_dir(), engine=engine) if args.train
                     else train_default(models_dir(), FeatureStore(models_dir() / "features"),
                                        engine=engine)).directory
    user_dir = user_dir or newest_user_model(models_dir() / "user")
    if user_dir is None:
        print("no user model: training one on the simulated-user benchmark first", flush=True)
        _, user_dir = train_user_model(models_dir() / "user",
                                       FeatureStore(models_dir() / "features"),
                                       image_model=model_dir)

    if not args.single_process:
        return _serve_processes(args, model_dir, user_dir)
    busy = ports_in_use(args.host, [args.port + offset for offset in range(5)]
                        + ([args.http_port] if args.http_port else []))
    if busy:
        print(f"hashrec serve: {busy}; stop it first (or choose --port / --http-port)",
              file=sys.stderr)
        return 2

    async def run() -> None:
        host, port = args.host, args.port
        cache = make_cache(os.environ.get("HASHREC_REDIS_URL"))
        vision = await serve_vision(host, port + 1, cache=cache)
        word = await serve_word(host, port + 2, model_dir)
        graph = await serve_graph(host, port + 3, model_dir)
        user = await serve_user(host, port + 4, user_dir)
        recommender = await serve_recommender(host, port, model_dir, vision.address,
                                              word.address, graph.address, user.address,
                                              cache=cache)
        backends = (vision, word, graph, user)
        gateway = None
        if args.http_port:
            settings = GatewaySettings.from_environment()
            settings.recommender = recommender.address
            gateway = await serve_gateway(host, args.http_port, settings)
        print(f"serving hashrec.v1.RecommenderService on {recommender.address} (vision, "
              f"word, graph, user on {', '.join(b.address for b in backends)}; model "
              f"{model_dir.name}, user model {user_dir.name})", flush=True)
        if gateway is not None:
            print(f"the page: http://{host}:{args.http_port}/", flush=True)
        stopped = asyncio.Event()

        async def shutdown() -> None:
            if gateway is not None:  # first: no new requests reach the recommender
                gateway.should_exit = True
                await gateway.task
            await recommender.stop()  # then no new calls reach the backends
            await asyncio.gather(*(backend.stop() for backend in backends))
            stopped.set()

        async def roll_out() -> None:  # the recommender waits for word and graph
            await asyncio.gather(*(server.reload() for server in (word, graph, recommender)
                                   if server.reload is not None))

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: asyncio.ensure_future(shutdown()))
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(roll_out()))
        await stopped.wait()

    with _pid_file():
        asyncio.run(run())
    return 0


#: each service's offset from the metrics base port (9100: 9100 to 9104, as deploy/ uses)
METRICS_OFFSETS = {"recommender": 0, "vision": 1, "word": 2, "graph": 3, "user": 4}
DEFAULT_PORT, DEFAULT_METRICS_PORT = 50050, 9100


def metrics_ports(port: int, base: int | None) -> dict[str, int]:
    """The services' Prometheus ports: from ``base`` (--metrics-port), or moved with
    --port (9100 at the default 50050), so two instances on one host do not collide. A
    service whose HASHREC_<NAME>_METRICS_PORT is set keeps that."""
    if base is None:
        base = DEFAULT_METRICS_PORT + port - DEFAULT_PORT
    if not 1024 <= base <= 65535 - len(METRICS_OFFSETS):
        base = DEFAULT_METRICS_PORT  # --port far from the default: the documented ports
    return {name: base + offset for name, offset in METRICS_OFFSETS.items()
            if not os.environ.get(f"HASHREC_{name.upper()}_METRICS_PORT")}


def _metrics_env(name: str, metrics: dict[str, int]) -> dict[str, str]:
    return {f"HASHREC_{name.upper()}_METRICS_PORT": str(metrics[name])} \
        if name in metrics else {}


def ports_in_use(host: str, ports: list[int]) -> str | None:
    """What holds one of ``ports`` already (a live `hashrec serve` from the pid file, or
    another program), or None: checked before any child starts, so a second start is
    refused at once instead of restarting children against a taken port."""
    import socket

    from shared.config import models_dir

    running = _live_serve_pid(models_dir() / PID_FILE)
    if running is not None:
        return f"hashrec serve is already running (pid {running}, {models_dir() / PID_FILE})"
    for port in ports:
        if port == 0:
            continue
        with socket.socket() as probe:
            # as the servers bind: a port whose old connections linger (TIME_WAIT) is free
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host if host not in ("", "::") else "0.0.0.0", port))
            except OSError:
                return f"port {port} is in use by another program"
    return None


def _live_serve_pid(path: Path) -> int | None:
    try:
        pid = int(path.read_text())
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None  # no pid file, or a stale one: nobody to collide with
    return pid if pid != os.getpid() and _is_hashrec_serve(command) else None


def verified_newest(folder: Path, kind: str) -> Path:
    """The newest version of ``kind`` in ``folder``, its every file checked against its
    manifest (ValueError naming what does not match)."""
    from shared.artifacts import ArtifactReader, newest_artifact

    newest = newest_artifact(folder, kind)
    if newest is None:
        raise FileNotFoundError(f"{folder}: no {kind} model to roll out")
    try:
        ArtifactReader(newest)
    except (OSError, ValueError) as error:
        raise ValueError(f"model {newest.name}: {error}") from None
    return newest


def child_threads() -> dict[str, dict[str, str]]:
    """Each child's HASHREC_THREADS when the operator set none: the vision model's passes
    take every core; the scoring services, whose batches are small matrix products, take
    one each, so five processes' thread pools do not spin against each other on the same
    cores (bench/serving.py, 64 cold calls in flight on 2 cores: 27 → 40 answers/s)."""
    from shared.batching import THREADS_ENV

    if os.environ.get(THREADS_ENV):
        return collections.defaultdict(dict)
    return collections.defaultdict(lambda: {THREADS_ENV: "1"}, vision={})


def _serve_processes(args: argparse.Namespace, model_dir: Path, user_dir: Path) -> int:
    """Every service its own supervised child process (commands/supervisor.py)."""
    import asyncio

    from commands.supervisor import ChildSpec, Supervisor, grpc_ready, http_ready
    from services.image_models import KIND as IMAGE_KIND
    from services.user.lookup import KIND as USER_KIND

    host, port = args.host, args.port
    probe = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    backends = {"vision": port + 1, "word": port + 2, "graph": port + 3, "user": port + 4}
    # A rollout (SIGHUP: `hashrec rollout`) is of the newest version in the folder, once
    # it verifies; a restarted service then starts on it, the one the others switched to,
    # and never on a version that was refused.
    def rolled_out() -> dict[str, str]:
        return {"HASHREC_MODEL_DIR": str(verified_newest(model_dir.parent, IMAGE_KIND)),
                "HASHREC_USER_MODEL_DIR": str(verified_newest(user_dir.parent, USER_KIND))}
    threads = child_threads()
    metrics = metrics_ports(port, args.metrics_port)
    busy = ports_in_use(host, [port, *backends.values(), *metrics.values(),
                               *([args.http_port] if args.http_port else [])])
    if busy:
        print(f"hashrec serve: {busy}; stop it first (or choose --port / --http-port / "
              "--metrics-port)", file=sys.stderr)
        return 2
    specs = [ChildSpec(name, f"services.{name}.server",
                       {**threads[name], f"HASHREC_{name.upper()}_HOST": host,
                        f"HASHREC_{name.upper()}_PORT": str(backend_port),
                        **_metrics_env(name, metrics),
                        "HASHREC_MODEL_DIR": str(model_dir),
                        "HASHREC_USER_MODEL_DIR": str(user_dir),
                        "OTEL_SERVICE_NAME": f"hashrec-{name}"},
                       grpc_ready(f"{probe}:{backend_port}"),
                       reloads=name in ("word", "graph", "user"), rollout_env=rolled_out)
             for name, backend_port in backends.items()]
    specs.append(ChildSpec(
        "recommender", "services.recommender.server",
        {**threads["recommender"], "HASHREC_RECOMMENDER_HOST": host,
         "HASHREC_RECOMMENDER_PORT": str(port), **_metrics_env("recommender", metrics),
         "HASHREC_MODEL_DIR": str(model_dir), "OTEL_SERVICE_NAME": "hashrec-recommender",
         **{f"HASHREC_{name.upper()}_TARGET": f"{probe}:{backend_port}"
            for name, backend_port in backends.items()}},
        grpc_ready(f"{probe}:{port}"), after=tuple(backends), reloads=True,
        rollout_env=rolled_out))
    if args.http_port:
        specs.append(ChildSpec(
            "gateway", "services.gateway.server",
            {"HASHREC_GATEWAY_HOST": host, "HASHREC_GATEWAY_PORT": str(args.http_port),
             "OTEL_SERVICE_NAME": "hashrec-gateway",
             "HASHREC_RECOMMENDER_TARGET": f"{probe}:{port}"},
            http_ready(f"http://{probe}:{args.http_port}/readyz"), after=("recommender",)))

    def announce() -> None:
        print(f"serving hashrec.v1.RecommenderService on {host}:{port} (vision, word, graph, "
              f"user on {', '.join(f'{host}:{p}' for p in backends.values())}, one process "
              f"each; model {model_dir.name}, user model {user_dir.name})", flush=True)
        if args.http_port:
            print(f"the page: http://{host}:{args.http_port}/", flush=True)

    with _pid_file():
        return asyncio.run(Supervisor(specs).run(on_ready=announce))


@contextlib.contextmanager
def _pid_file() -> Iterator[None]:
    """$HASHREC_MODELS/serve.pid while `hashrec serve` runs: `hashrec rollout` finds it."""
    from shared.config import models_dir

    path = models_dir() / PID_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{os.getpid()}\n")
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            if path.read_text().strip() == str(os.getpid()):
                path.unlink()


def _is_hashrec_serve(command: list[bytes]) -> bool:
    """Whether a process's argv is `hashrec serve` (the console script, or the module)."""
    words = [Path(w.decode(errors="replace")).name for w in command if w]
    return "serve" in words and any(w in ("hashrec", "commands.cli") for w in words)


def _rollout(args: argparse.Namespace) -> int:
    from shared.config import models_dir

    path = models_dir() / PID_FILE
    try:
        pid = args.pid or int(path.read_text())
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError) as error:
        print(f"hashrec rollout: no running `hashrec serve` found ({path}: {error}); give "
              "--pid", file=sys.stderr)
        return 2
    if not _is_hashrec_serve(command):  # a stale pid file: the pid is someone else's now
        print(f"hashrec rollout: pid {pid} ({path}) is not a `hashrec serve` (it runs "
              f"{b' '.join(command).decode(errors='replace').strip()!r}); a stale pid "
              "file? nothing was signalled", file=sys.stderr)
        return 2
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as error:
        print(f"hashrec rollout: cannot signal pid {pid}: {error}", file=sys.stderr)
        return 2
    print(f"asked hashrec serve (pid {pid}) to switch to the newest verified models under "
          f"its model folder; its log shows each service's switch (or why it refused one)")
    return 0


def _verify(args: argparse.Namespace) -> int:
    """Waits for a model directory to appear, then checks every file against its manifest:
    the initContainer that keeps a pod from starting on a version not yet (or badly)
    written."""
    import time

    from shared.artifacts import MANIFEST, ArtifactReader

    deadline = time.monotonic() + args.wait
    while not (args.directory / MANIFEST).is_file():
        if time.monotonic() >= deadline:
            print(f"hashrec verify: {args.directory}: no {MANIFEST} after {args.wait:.0f} s",
                  file=sys.stderr)
            return 1
        time.sleep(min(5.0, max(deadline - time.monotonic(), 0.1)))
    try:
        manifest = ArtifactReader(args.directory).manifest
    except (OSError, ValueError) as error:
        print(f"hashrec verify: {error}", file=sys.stderr)
        return 1
    if args.kind and manifest.get("kind") != args.kind:
        print(f"hashrec verify: {args.directory}: a {manifest.get('kind')!r} model, not "
              f"{args.kind!r}", file=sys.stderr)
        return 1
    print(f"verified {args.directory}: {len(manifest['files'])} files match their checksums")
    return 0


def _add_verify(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "verify", help="wait for a model directory, then check its files' checksums",
        description="Exit 0 once DIRECTORY's manifest exists and every file matches its "
                    "sha256; 1 (with the reason) when it never appears within --wait or a "
                    "file does not match.")
    parser.add_argument("directory", type=Path)
    parser.add_argument("--wait", type=float, default=0.0,
                        help="seconds to wait for the directory to be written (default 0)")
    parser.add_argument("--kind", default=None,
                        help="the manifest's kind, e.g. image-to-hashtag, user-tensor-effects")
    parser.set_defaults(handler=_verify)


def _add_rollout(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "rollout", help="switch a running `hashrec serve` to the newest trained models",
        description="Sends SIGHUP to the running `hashrec serve` (its pid from "
                    "$HASHREC_MODELS/serve.pid): word and graph load and verify the newest "
                    "version beside the one they serve and keep the old one for callers "
                    "still on it; the recommender switches once they serve the new one. A "
                    "version that fails verification is refused with the reason in the log, "
                    "and the old one keeps serving. Answers name the version that served "
                    "them (model_version).")
    parser.add_argument("--pid", type=int, default=None,
                        help="the `hashrec serve` process (default: from its pid file)")
    parser.set_defaults(handler=_rollout)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hashrec", description=__doc__)
    parser.add_argument("--data-root", type=Path,
                        help=f"where FORMAT:PATH specs are looked up (env {DATA_ROOT_ENV}; "
                             "default ../shared/data beside the repository)")
    parser.add_argument("--log-level", default=None)
    commands = parser.add_subparsers(dest="command", required=True)
    _add_evaluate(commands)
    _add_train(commands)
    _add_recommend(commands)
    _add_feedback_and_retrieve(commands)
    _add_serve(commands)
    _add_rollout(commands)
    _add_verify(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    if args.data_root:
        os.environ[DATA_ROOT_ENV] = str(args.data_root)
    try:
        return args.handler(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"hashrec: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
