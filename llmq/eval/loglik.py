"""Batched log-likelihood of (context, continuation) pairs, tokenized exactly as lm-evaluation-harness
does, so task accuracies agree with the field's reference implementation.

Tokenization (lm-eval ``TemplateLM._encode_pair``): trailing whitespace of the context moves to the
continuation; ``context + continuation`` is encoded once with the tokenizer's default special tokens
and the continuation's ids are what follows the separately encoded context; an empty context is
replaced by the BOS (else EOS) token. The model sees ``(context + continuation)[:-1]`` (left-truncated
to its maximum length) and each continuation token is scored from the position before it.

Speed: requests that share a context (the choices of one multiple-choice question) run the context
once and score all continuations from its KV cache in one batch; the rest are batched by length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence


@dataclass
class LogLik:
    logprob: float
    greedy: bool  # every continuation token is the model's argmax
    tokens: int


def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    if context == "":
        cont = tokenizer.encode(continuation, add_special_tokens=False)
        prefix = prefix_token_id(tokenizer)
        return ([prefix], cont) if cont[:1] != [prefix] else (cont[:1], cont[1:])
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tokenizer.encode(context + continuation)
    ctx = tokenizer.encode(context)
    return ctx, whole[len(ctx):]


def prefix_token_id(tokenizer: Any) -> int:
    for tid in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0


def max_length(model: Any) -> int:
    cfg = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        v = getattr(cfg, key, None)
        if isinstance(v, int) and v > 0:
            return min(v, 1 << 20)
    return 2048


def model_device(model: Any) -> Any:
    import torch

    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover
        return torch.device("cpu")


def loglikelihood(model: Any, tokenizer: Any, requests: Sequence[tuple[str, str]], *, batch_size: int = 16,
                  share_context: bool = True, progress: bool = True, desc: str = "loglikelihood") -> list[LogLik]:
    """Log-probability of each continuation given its context, and whether greedy decoding reproduces it."""
    encoded = [encode_pair(tokenizer, c, x) for c, x in requests]
    return loglikelihood_tokens(model, encoded, batch_size=batch_size, share_context=share_context,
                                progress=progress, desc=desc)


def loglikelihood_tokens(model: Any, encoded: Sequence[tuple[list[int], list[int]]], *, batch_size: int = 16,
                         share_context: bool = True, progress: bool = True, desc: str = "loglikelihood"
                         ) -> list[LogLik]:
    """``batch_size``: contexts per forward pass (with their continuations) when sharing contexts,
    else whole sequences per forward pass."""
    import torch
    from tqdm.auto import tqdm

    limit = max_length(model)
    results: list[LogLik | None] = [None] * len(encoded)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (ctx, cont) in enumerate(encoded):
        groups.setdefault(tuple(ctx), []).append(i)
    shared, single = [], []
    cache_ok = share_context and _supports_cache(model)
    for ctx, idx in groups.items():
        fits = all(len(ctx) + len(encoded[i][1]) <= limit for i in idx)
        (shared if cache_ok and fits and _sharing_pays(len(ctx), [len(encoded[i][1]) for i in idx]) else single
         ).append(idx)
    # similar lengths together, little padding: by context + longest continuation (what one row costs)
    shared.sort(key=lambda idx: -len(encoded[idx[0]][0]) - max(len(encoded[i][1]) for i in idx))
    single_idx = sorted((i for idx in single for i in idx), key=lambda i: -len(encoded[i][0]) - len(encoded[i][1]))
    bar = tqdm(total=len(encoded), desc=desc, unit="req", disable=not progress)
    with torch.inference_mode():
        for j in range(0, len(shared), batch_size):
            part = shared[j:j + batch_size]
            docs = [(encoded[idx[0]][0], [encoded[i][1] for i in idx]) for idx in part]
            for i, r in zip([i for idx in part for i in idx], _score_shared(model, docs)):
                results[i] = r
            bar.update(sum(len(idx) for idx in part))
        for j in range(0, len(single_idx), batch_size):
            part = single_idx[j:j + batch_size]
            for i, r in zip(part, _score_full(model, [encoded[i] for i in part], limit)):
                results[i] = r
            bar.update(len(part))
    bar.close()
    return results  # type: ignore[return-value]


def _sharing_pays(ctx_len: int, cont_lens: list[int]) -> bool:
    """Sharing saves ``(k-1) * ctx_len`` token positions but costs a second forward and a cache copy,
    so it loses when short contexts carry long continuations (piqa: a short goal, two long solutions)
    and wins when a long question carries short answers (arc_easy). ``scripts/bench_eval.py`` times both
    paths ("no KV sharing" column). Share only when the saved positions outnumber the continuation tokens."""
    return len(cont_lens) > 1 and (len(cont_lens) - 1) * ctx_len > sum(cont_lens)


def _forward_params(model: Any) -> Any:
    """The parameters of ``model.forward`` (empty when its signature cannot be read)."""
    import inspect

    try:
        return inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return {}


def _supports_cache(model: Any) -> bool:
    params = _forward_params(model)
    return "past_key_values" in params or any(p.kind == p.VAR_KEYWORD for p in params.values())


def _score(logits_rows: list[Any], conts: list[list[int]]) -> list[LogLik]:
    import torch

    out = []
    for logits, cont in zip(logits_rows, conts):
        logp = torch.log_softmax(logits.float(), dim=-1)
        target = torch.tensor(cont, device=logp.device)
        ll = logp.gather(1, target[:, None]).sum().item()
        greedy = bool((logp.argmax(-1) == target).all())
        out.append(LogLik(ll, greedy, len(cont)))
    return out


def _score_full(model: Any, pairs: list[tuple[list[int], list[int]]], limit: int) -> list[LogLik]:
    """Right-padded batch of whole sequences, as lm-eval's ``_loglikelihood_tokens``."""
    import torch

    device = model_device(model)
    inputs = [(ctx + cont)[-(limit + 1):][:-1] for ctx, cont in pairs]
    width = max(len(x) for x in inputs)
    ids = torch.zeros(len(inputs), width, dtype=torch.long)
    for r, x in enumerate(inputs):
        ids[r, :len(x)] = torch.tensor(x)
    # No attention mask: padding sits after every real token, which causal attention never looks at
    # (lm-eval does the same); without a mask SDPA keeps its fast causal path.
    # Only the last `keep` positions hold scored tokens: skip the vocabulary projection for the rest.
    keep = max(width - (len(x) - len(cont)) for x, (_, cont) in zip(inputs, pairs))
    kw = {"logits_to_keep": keep} if _accepts(model, "logits_to_keep") else {}
    logits = model(input_ids=ids.to(device), **kw).logits
    off = width - logits.shape[1]
    rows = [logits[r, len(x) - len(cont) - off:len(x) - off] for r, (x, (_, cont)) in enumerate(zip(inputs, pairs))]
    return _score(rows, [cont for _, cont in pairs])


def _score_shared(model: Any, docs: list[tuple[list[int], list[list[int]]]]) -> list[LogLik]:
    """Contexts run once (left-padded batch, explicit positions), then every continuation of every
    context in one batch from the KV cache, rows of the cache repeated per continuation. Continuations
    are right-padded: a padded position comes after every real token of its row, so it changes nothing."""
    import torch

    device = model_device(model)
    width = max(len(c) for c, _ in docs)
    ids = torch.zeros(len(docs), width, dtype=torch.long)
    mask = torch.zeros(len(docs), width, dtype=torch.long)
    for b, (ctx, _) in enumerate(docs):
        ids[b, width - len(ctx):] = torch.tensor(ctx, dtype=torch.long)
        mask[b, width - len(ctx):] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    kw = {"logits_to_keep": 1} if _accepts(model, "logits_to_keep") else {}
    out = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device),
                use_cache=True, **kw)
    last = out.logits[:, -1]
    owner = [b for b, (_, conts) in enumerate(docs) for _ in conts]
    conts = [c for _, cs in docs for c in cs]
    tails = [c[:-1] for c in conts]
    w = max(len(t) for t in tails)
    if w == 0:
        return _score([last[b:b + 1] for b in owner], conts)
    cache = out.past_key_values
    counts = {len(cs) for _, cs in docs}
    if hasattr(cache, "batch_select_indices"):
        cache.batch_select_indices(torch.tensor(owner, device=device))
    elif len(counts) == 1 and hasattr(cache, "batch_repeat_interleave"):  # older/custom caches
        cache.batch_repeat_interleave(counts.pop())
    else:  # pragma: no cover - a cache we cannot expand: score whole sequences instead
        return _score_full(model, [(docs[b][0], c) for b, c in zip(owner, conts)], max_length(model))
    cids = torch.zeros(len(conts), w, dtype=torch.long)
    cmask = torch.zeros(len(conts), w, dtype=torch.long)
    for r, t in enumerate(tails):
        cids[r, :len(t)] = torch.tensor(t, dtype=torch.long)
        cmask[r, :len(t)] = 1
    ctx_len = torch.tensor([len(docs[b][0]) for b in owner])
    cpos = ctx_len[:, None] + torch.arange(w)[None]
    full_mask = torch.cat([mask[owner], cmask], dim=1)
    logits = model(input_ids=cids.to(device), attention_mask=full_mask.to(device), position_ids=cpos.to(device),
                   past_key_values=cache, use_cache=True).logits
    rows = [torch.cat([last[b:b + 1], logits[r, :len(t)]]) for r, (b, t) in enumerate(zip(owner, tails))]
    return _score(rows, conts)


def _accepts(model: Any, name: str) -> bool:
    return name in _forward_params(model)
