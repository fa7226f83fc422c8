"""`hashrec recommend`, `feedback` and `retrieve`: calls to a running recommender."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


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
        print(f"model {reply.model_version}" + (
            f" (degraded: {'; '.join(reply.degraded_reasons)})" if reply.degraded else ""))
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
