"""`crowd-gateway review export|import`: human review in the labelling tool people already use.

`export` writes the gateway's review queue (`--strategy queue`, the items flagged by `review.below`; or
`uncertain`, where one label helps most) for Label Studio or Argilla: per schema, the items' texts, the label
set, the crowd's answer as a pre-annotation (suggestion) with its confidence, the distribution and each
member's vote as metadata. `import` reads what the tool exports once people labelled, and posts each label to
the gateway as human feedback (`POST /v1/annotations/feedback`, source human, the person as annotator): the
labels join every later answer on their items and resolve their queue entries.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

from gateway.tools import HelpFormatter, UsageError
from gateway.tools.embedded import v1_url
from gateway.tools.review_formats import FORMATS, HumanLabel, ReviewItem

MAX_BULK = 1000
"""Lines per feedback request: the route's bulk limit (gateway/annotations/protocol.py)."""


def _client(args: argparse.Namespace) -> Any:
    import openai

    return openai.OpenAI(base_url=v1_url(args.gateway), api_key=args.api_key, max_retries=2, timeout=args.timeout)


def _call(what: str, request: Any) -> Any:
    """Run one gateway request; its refusal is a one-line usage error, not a traceback."""
    import openai

    try:
        return request()
    except openai.APIStatusError as exc:
        message = exc.body.get("message", exc.message) if isinstance(exc.body, dict) else exc.message
        raise UsageError(f"{what}: the gateway answered {exc.status_code}: {message}") from None
    except openai.APIConnectionError as exc:
        raise UsageError(f"{what}: cannot reach the gateway ({exc.message})") from None


def fetch_queue(client: Any, strategy: str, limit: int) -> list[ReviewItem]:
    """The queued items, each with its stored text, votes and current answer."""
    queue = _call("review queue", lambda: client.get("/review", cast_to=object,
                                                     options={"params": {"strategy": strategy, "limit": limit}}))
    items = []
    for entry in queue["data"]:
        stored = _call(f"item {entry['item_id']}", lambda: client.get(
            f"/annotations/{quote(entry['item_id'], safe='')}", cast_to=object))
        votes = {v["member"]: v["label"] for v in stored["votes"] if v.get("label") is not None}
        items.append(ReviewItem(entry["item_id"], stored["schema"], stored["text"], stored["labels"], votes,
                                stored["aggregate"]))
    return items


def export(args: argparse.Namespace) -> int:
    items = fetch_queue(_client(args), args.strategy, args.limit)
    if not items:
        print(f"no items to review (--strategy {args.strategy}): nothing written")
        return 0
    out = Path(args.out)
    by_schema: dict[str, list[ReviewItem]] = {}
    for item in items:
        by_schema.setdefault(re.sub(r"[^A-Za-z0-9_.-]", "_", item.schema), []).append(item)
    for schema, mine in sorted(by_schema.items()):
        for relative, content in FORMATS[args.format].export(schema, mine).items():
            path = out / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
        print(f"{schema}: {len(mine)} items -> {out / schema}.{args.format}*")
    return 0


def post_labels(client: Any, labels: list[HumanLabel]) -> int:
    """Post the people's labels as human feedback, MAX_BULK a request; returns how many queue entries they resolved."""
    resolved = 0
    for start in range(0, len(labels), MAX_BULK):
        lines = [{"item_id": h.item_id, "label": h.label, "source": "human", "annotator": h.annotator}
                 for h in labels[start:start + MAX_BULK]]
        answer = _call("feedback", lambda: client.post("/annotations/feedback", body={"data": lines}, cast_to=object))
        resolved += sum(line["resolved_review"] for line in answer["data"])
    return resolved


def import_labels(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if not path.exists():
        raise UsageError(f"{path} does not exist")
    labels = FORMATS[args.format].human_labels(path)
    if not labels:
        print(f"{path}: no submitted labels: nothing posted")
        return 0
    resolved = post_labels(_client(args), labels)
    people = len({h.annotator for h in labels})
    print(f"posted {len(labels)} human labels by {people} annotators on {len({h.item_id for h in labels})} items; "
          f"{resolved} review entries resolved")
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("review", help="export the review queue to Label Studio or Argilla, import people's labels",
                       description=__doc__, formatter_class=HelpFormatter)
    steps = p.add_subparsers(dest="step", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--format", required=True, choices=sorted(FORMATS), help="the labelling tool")
    common.add_argument("--gateway", default="http://127.0.0.1:8080",
                        help="gateway URL, with or without /v1")
    common.add_argument("--api-key", default=os.environ.get("CROWD_GATEWAY_API_KEY", "unused"),
                        help="the gateway's API key (default: $CROWD_GATEWAY_API_KEY, else 'unused')")
    common.add_argument("--timeout", type=float, default=60.0, help="seconds per request")

    e = steps.add_parser("export", parents=[common], formatter_class=HelpFormatter,
                         help="write the review queue for the tool, one project (dataset) per label set",
                         description="Write the queued items for the tool: per label set, Label Studio's tasks "
                                     "(pre-annotated) and labelling config, or an Argilla dataset directory "
                                     "(rg.Dataset.from_disk) with the crowd's answer as a suggestion.")
    e.add_argument("--out", required=True, help="directory to write into")
    e.add_argument("--strategy", choices=("queue", "uncertain"), default="queue",
                   help="queue: items flagged by review.below; uncertain: where one label helps most")
    e.add_argument("--limit", type=int, default=1000, help="items at most (1 to 1000)")
    e.set_defaults(func=export)

    i = steps.add_parser("import", parents=[common], formatter_class=HelpFormatter,
                         help="post the labels people gave in the tool as human feedback",
                         description="Read the tool's export and post every submitted label as human feedback "
                                     "(the person as annotator): it joins later answers and resolves the queue.")
    i.add_argument("path", help="Label Studio: the project's JSON export; Argilla: records.json "
                                "(dataset.records.to_json) or the directory of dataset.to_disk")
    i.set_defaults(func=import_labels)
