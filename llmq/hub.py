"""The Hugging Face Hub seen from llmq: what a repo id may be, and one translation of Hub errors
into one-line errors, for reading a model (``resolve_model``, downloads), reading a dataset
(calibration, perplexity and task text) and writing a repo (``push``)."""

from __future__ import annotations

import re

from llmq.errors import ConfigError, LlmqError, ModelNotFoundError

NETWORK_WORDS = ("connect", "resolve", "network", "timed out", "timeout", "offline", "couldn't reach",
                 "localentrynotfound")
#: ``owner/name`` in the Hub's alphabet
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def check_repo_id(repo_id: str | None) -> None:
    """A repo id the Hub accepts (``owner/name``; letters, digits, ``-_.``; no ``..``; not ending in
    ``.`` or ``-``; at most 96 characters), checked before anything is quantized or uploaded: a typo
    must not cost a quantization. ``None`` (no push) passes."""
    if repo_id is None:
        return
    if (not isinstance(repo_id, str) or not HUB_ID.match(repo_id) or ".." in repo_id
            or repo_id.endswith((".", "-")) or len(repo_id) > 96):
        raise ConfigError(f"Invalid Hub repo id {repo_id!r}: not a Hub repo id (owner/name, letters, digits, -_., "
                          "no '..', not ending in '.' or '-', at most 96 characters), e.g. me/SmolLM2-135M-GPTQ-Int4.")


def _chain(e: BaseException) -> list[BaseException]:
    chain = [e]
    while chain[-1].__cause__ is not None or chain[-1].__context__ is not None:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)  # type: ignore[arg-type]
        if len(chain) > 8:
            break
    return chain


def hub_error(e: BaseException, name: str, *, writing: str | None = None, token: str | None = None,
              data: bool = False) -> LlmqError:
    """``e`` as one line. ``name``: the model read, the dataset read (``data=True``), or the repo
    written; ``writing``: what a push was doing (``"uploading"``, ...), None when reading. ``token``
    is scrubbed from the message."""
    from huggingface_hub.errors import (  # type: ignore[attr-defined]
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    chain = _chain(e)
    kinds = []
    for err in chain:
        status = getattr(getattr(err, "response", None), "status_code", None)
        if isinstance(err, GatedRepoError):
            kinds.append("gated")
        elif isinstance(err, RepositoryNotFoundError):
            kinds.append("not found")
        elif isinstance(err, RevisionNotFoundError):
            kinds.append("revision")
        elif isinstance(err, OfflineModeIsEnabled):
            kinds.append("offline mode")
        elif isinstance(err, LocalEntryNotFoundError):
            kinds.append("offline")
        elif isinstance(err, HfHubHTTPError) and status in (401, 403):
            kinds.append(str(status))
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    if token:
        msg = msg.replace(token, "***")
    network = any(w in f"{type(e).__name__} {msg}".lower() for w in NETWORK_WORDS)
    kind = kinds[0] if kinds else ("offline" if network else None)

    if data:
        if kind in ("offline", "offline mode"):
            return LlmqError(f"Cannot download {name} from the Hugging Face Hub (offline or no network); pass a local "
                             "file or set LLMQ_DATA_DIR to a local copy.")
        return LlmqError(f"Cannot load {name}: {msg}")
    if writing is None:
        tip = "pass a local model folder or a .gguf file instead"
        if kind == "gated":
            return ModelNotFoundError(f"{name} is gated: accept its licence on the Hub and log in (hf auth login).")
        if kind == "not found":
            return ModelNotFoundError(f"Model {name!r} was not found on the Hub (check the id; private models need a token).")
        if kind == "revision":
            return ModelNotFoundError(f"Revision not found for {name!r}.")
        if kind in ("offline", "offline mode"):
            return ModelNotFoundError(f"Cannot reach the Hugging Face Hub for {name!r} (offline or no network); {tip}.")
        return ModelNotFoundError(f"Cannot load the config of {name!r}: {msg}")
    if kind == "offline mode":
        return LlmqError(f"HF_HUB_OFFLINE is set; unset it to push to {name} (or use --dry-run).")
    if kind == "401":
        return LlmqError("The Hugging Face Hub rejected the token (401): log in again with `hf auth login` or set HF_TOKEN.")
    if kind == "403":
        return LlmqError(f"The token cannot write to {name} (403): use a token with write access to that namespace.")
    if network:
        return LlmqError(f"Lost the connection to the Hugging Face Hub while {writing} for {name}; run the push again "
                         "(uploaded files are not sent twice).")
    return LlmqError(f"Push to {name} failed while {writing}: {msg}")
