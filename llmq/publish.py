"""Publish an llmq folder: write its model card (``llmq.modelcard`` content, ``llmq.cardrender``
rendering) and push the folder to the Hugging Face Hub.

Quantizers stopped writing cards (GPTQModel dropped ``upload_to_hub``, torchao its release script),
so cards on the Hub are often empty or wrong; llmq's card holds only what was recorded. Heavy
imports stay inside functions so ``llmq --help`` stays fast.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from llmq.cardrender import GENERATED_MARK, card_parts, load_template, render_card, template_path, write_card
from llmq.errors import ConfigError, LlmqError, ModelNotFoundError
from llmq.hub import check_repo_id, hub_error
from llmq.modelcard import (  # noqa: F401 - the card's pieces, under their old address
    CARD_FILE, META_FILE, REPORT_FILE, eval_rows, install_spec, limitations, original_label,
    read_folder, reproduce_command, tags_for, usage,
)

#: files a push never uploads: the Hub's own defaults (.git, .cache/huggingface) plus hidden files
#: (llmq's atomic writes leave ``.name.*`` temporaries only if a process is killed mid-write)
IGNORE_PATTERNS = [".*", "*/.*"]

#: remote files that do not count as "other content" in an existing repo (the Hub creates them)
HUB_DEFAULT_FILES = {".gitattributes", "README.md"}

#: above this, ``upload_large_folder`` (huggingface_hub 1.x) so an interrupted upload resumes;
#: huggingface_hub 2.x removed it because ``upload_folder`` itself resumes (with hf_xet)
LARGE_FOLDER_BYTES = 5 * 1000**3


# -- push -------------------------------------------------------------------------------------
@dataclass
class PushResult:
    repo_id: str
    url: str
    files: list[tuple[str, int]]
    dry_run: bool
    card: Path
    card_written: bool
    revision: str | None = None
    commit_url: str | None = None
    method: str | None = None  # "upload_folder" | "upload_large_folder" | None (dry run)
    notes: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.files)

def upload_files(folder: str | os.PathLike) -> list[tuple[str, int]]:
    """``(path in repo, bytes)`` for every file a push uploads: the same filter ``upload_folder`` applies."""
    from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects

    root = Path(folder).expanduser().resolve()
    rel = {p.relative_to(root).as_posix(): p for p in sorted(root.glob("**/*")) if p.is_file()}
    keep = filter_repo_objects(rel, ignore_patterns=IGNORE_PATTERNS + DEFAULT_IGNORE_PATTERNS)
    return [(name, rel[name].stat().st_size) for name in keep]

def resolve_token(token: str | None) -> str:
    """``token``, else ``HF_TOKEN``, else the stored login. Never printed or written anywhere."""
    if token:
        return token
    from huggingface_hub import get_token

    found = os.environ.get("HF_TOKEN") or get_token()
    if not found:
        raise LlmqError("No Hugging Face token: set HF_TOKEN or run `hf auth login` (or use --dry-run).")
    return found

def push(folder: str | os.PathLike, repo_id: str, *, private: bool = False, token: str | None = None,
         revision: str | None = None, overwrite: bool = False, dry_run: bool = False,
         commit_message: str | None = None, license: str | None = None, quantized_by: str | None = None,
         template: str | os.PathLike | None = None) -> PushResult:
    """Write the model card into ``folder`` and upload the folder to ``repo_id`` on the Hub.

    Every check (llmq folder, repo id, token, network, existing repo content) runs before the card is
    written, so a refused push leaves the folder as it was. ``dry_run``: write the card and list what
    would be uploaded, with no network and no token. An existing repo holding files this folder does
    not have is refused unless ``overwrite`` (which deletes them) or ``revision`` (a branch) is given."""
    path, meta, _ = read_folder(folder)
    check_repo_id(repo_id)
    if template is not None:
        load_template(template)  # a broken template fails before the network and the folder are touched
    if revision is not None and (not isinstance(revision, str) or not revision.strip()):
        raise ConfigError("revision must be a branch name.")
    notes: list[str] = []
    existing = path / CARD_FILE
    ours = not existing.is_file() or GENERATED_MARK in existing.read_text(encoding="utf-8", errors="replace")
    if not ours:
        notes.append(f"{existing} was not written by llmq; kept it as the card (delete it to get llmq's card).")
    url = f"https://huggingface.co/{repo_id}" + (f"/tree/{revision}" if revision else "")

    if dry_run:
        card_path = existing
        if ours:
            text = render_card(path, repo_id=repo_id, license=license, quantized_by=quantized_by, template=template,
                               lookup_license=False)
            card_path = write_card(path, text)
            notes.append("Dry run: the license lookup on the Hub was skipped; a real push reads it from the base model.")
        return PushResult(repo_id, url, upload_files(path), True, card_path, ours, revision, notes=notes)

    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        raise LlmqError(f"HF_HUB_OFFLINE is set; unset it to push to {repo_id} (or use --dry-run).")
    tok = resolve_token(token)
    from llmq.models import check_hub_reachable

    try:
        check_hub_reachable(repo_id)
    except ModelNotFoundError:
        raise LlmqError(f"Cannot reach the Hugging Face Hub to push to {repo_id}: offline or no network; "
                        "nothing was uploaded (--dry-run writes the card without network).") from None
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    api = HfApi(token=tok)
    files = upload_files(path)
    local_names = {name for name, _ in files} | {CARD_FILE}
    try:
        remote = api.list_repo_files(repo_id, revision=revision)
    except RepositoryNotFoundError:
        remote = []
    except RevisionNotFoundError:
        remote = []  # the branch is created below
    except Exception as e:  # noqa: BLE001
        raise hub_error(e, repo_id, writing="reading the repo", token=tok) from e
    foreign = sorted(set(remote) - HUB_DEFAULT_FILES - local_names)
    if foreign and not overwrite and revision is None:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise LlmqError(f"{repo_id} already holds other files ({shown}); pass --overwrite to replace them "
                        "or --revision BRANCH to push to a branch.")

    old_card = existing.read_bytes() if existing.is_file() else None
    if ours:
        text = render_card(path, repo_id=repo_id, license=license, quantized_by=quantized_by, template=template,
                           token=tok)
        write_card(path, text)
        files = upload_files(path)
    total = sum(size for _, size in files)
    message = commit_message or f"Upload {meta['scheme']} quantization of {meta['source'].get('base_model')} (llmq)"
    try:
        try:
            api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            if revision:
                api.create_branch(repo_id, branch=revision, exist_ok=True)
        except Exception as e:  # noqa: BLE001
            raise hub_error(e, repo_id, writing="creating the repo", token=tok) from e
        try:
            if total > LARGE_FOLDER_BYTES and hasattr(api, "upload_large_folder") and not (overwrite and foreign):
                method = "upload_large_folder"
                api.upload_large_folder(repo_id=repo_id, folder_path=str(path), repo_type="model", revision=revision,
                                        private=private, ignore_patterns=IGNORE_PATTERNS)
                commit_url = None
            else:
                method = "upload_folder"
                info = api.upload_folder(repo_id=repo_id, folder_path=str(path), repo_type="model", revision=revision,
                                         commit_message=message, ignore_patterns=IGNORE_PATTERNS,
                                         delete_patterns=foreign if overwrite and foreign else None)
                commit_url = getattr(info, "commit_url", None)
        except Exception as e:  # noqa: BLE001
            raise hub_error(e, repo_id, writing="uploading", token=tok) from e
    except BaseException:
        if ours:  # a failed push leaves the folder as it was
            if old_card is None:
                existing.unlink(missing_ok=True)
            else:
                write_card(path, old_card.decode("utf-8"))
        raise
    if foreign and overwrite:
        notes.append(f"Deleted {len(foreign)} remote file(s) this folder does not have.")
    return PushResult(repo_id, url, files, False, existing, ours, revision, commit_url, method, notes)


__all__ = ["push", "render_card", "write_card", "upload_files", "PushResult", "reproduce_command"]
