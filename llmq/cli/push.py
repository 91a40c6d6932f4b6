"""``llmq push``: write the model card and upload an llmq folder (``llmq.publish.push``)."""

from __future__ import annotations

import argparse
from typing import Any

from llmq.fmt import human_bytes
from llmq.publish import push


# -- CLI --------------------------------------------------------------------------------------
def add_push(sub: Any) -> None:
    p = sub.add_parser(
        "push", help="write the model card and push an llmq folder to the Hugging Face Hub",
        description="Writes README.md (the model card, from llmq.json and report.json) into FOLDER and uploads "
                    "the folder. The token comes from HF_TOKEN or `hf auth login`; it is never printed.",
    )
    p.add_argument("folder", help="a folder written by `llmq run` (has llmq.json)")
    p.add_argument("--repo", required=True, metavar="ID", help="Hub repo id, owner/name")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--dry-run", action="store_true", help="write the card and list the files; no network")
    p.add_argument("--overwrite", action="store_true", help="replace a repo that holds other files")
    p.add_argument("--revision", metavar="BRANCH", help="push to this branch (created if missing)")
    p.add_argument("--commit-message", help="commit message (default names the scheme and base model)")
    p.add_argument("--license", help="license for the metadata (default: the base model's, read from its card)")
    p.add_argument("--template", help="your own Jinja model card template (default: llmq's)")
    p.set_defaults(func=cmd_push)


def cmd_push(args: argparse.Namespace) -> int:
    res = push(args.folder, args.repo, private=args.private, revision=args.revision, overwrite=args.overwrite,
               dry_run=args.dry_run, commit_message=args.commit_message, license=args.license, template=args.template)
    for note in res.notes:
        print(note)
    if res.dry_run:
        print(f"Dry run: would upload {len(res.files)} files ({human_bytes(res.total_bytes)}, "
              f"{res.total_bytes:,} bytes) to {res.url}")
        width = max(len(n) for n, _ in res.files)
        for name, size in res.files:
            print(f"  {name:<{width}}  {size:>14,}")
        print(f"Model card: {res.card}" + ("" if res.card_written else " (kept)"))
    else:
        print(f"Pushed {len(res.files)} files ({human_bytes(res.total_bytes)}) to {res.url}")
        if res.commit_url:
            print(f"Commit: {res.commit_url}")
    return 0
