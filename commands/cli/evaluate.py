"""`hashrec evaluate`: the papers' experiments on real data, and the served model's."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from commands.cli.common import TASKS, _ignored_tags, _print_table, _write_json, newest_model
from commands.cli.user import _user
from shared.data.simulated_users import SIGNATURE_PROBABILITY


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
                        help="user/retrieval: simulated users in the benchmark; served: the "
                             "simulated users whose posts route the user-derived row")
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
    from shared.config import data_root, models_dir
    from shared.data.normalize import normalize_post_hashtags
    from shared.data.readers import parse_spec, read_posts
    from shared.data.simulated_users import simulate, source_posts

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
    simulated = None  # the simulated users, made once: who posted each held-out photo
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
        if community is not None and models is not None and len(models.communities) > 1:
            simulated = simulated or simulate(source_posts(data_root()), args.users, args.seed)
            report.setdefault("user_derived", {})[spec] = _user_derived(
                models, store, train, test, simulated, ignore, community["name"], answer,
                f"{model_dir.name} on {spec}'s held-out photos that a simulated user posted")
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


def _user_derived(models: object, store: object, train: list, test: list, simulated: list,
                  ignore: frozenset[str], community: str, answer: object,
                  title: str) -> dict[str, dict]:
    """Issue #28's third row: the held-out photos a simulated user posted, routed by where
    that user posts (their other posts, each split by the gate's guess), beside the gate
    alone and the community named, on the same photos."""
    from commands.experiments.served import evaluate_served, in_process_answer, poster_priors

    posters = poster_priors(models, store, [p for p in test if p.image is not None],
                            simulated)
    posted = [p for p in test if p.image is not None and p.image.resolve() in posters]
    rows: dict[str, dict] = {}
    for name, row_answer in (
            ("served (gate)", answer),
            ("served (user-derived)", in_process_answer(models, store, posters=posters)),
            ("served (community named)", in_process_answer(models, store,
                                                           community=community))):
        for truth, row in evaluate_served(train, posted, row_answer, ignore).results.items():
            rows.setdefault(truth, {})[name] = row
    for truth, table in rows.items():
        _print_table(f"{title} ({table['served (gate)']['photos']} with a tag; truth: {truth})",
                     {name: {k: v for k, v in row.items() if k != "photos"}
                      for name, row in table.items()})
    return rows
