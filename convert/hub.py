"""Hugging Face repository ids as sources: `hf://org/name`, `org/name`, either with `@revision`.

Every `from_pretrained` user has models in the Hugging Face cache, and names them by id rather than by
the snapshot folder the cache keeps them in. An id resolves through `huggingface_hub` (the `hf`
extra) to that folder: the local cache first, then a download when the machine is online (its
progress on stderr); `HF_HUB_OFFLINE=1` keeps it to the cache. The folder is then read like any
other, under the same rules (links included). A bare `org/name` is an id only when no such file or
folder exists here, so a local path always wins.
"""

from __future__ import annotations

import re
from pathlib import Path

from .errors import SourceNotFoundError, UsageError, missing_extra

SCHEME = "hf://"
# Hugging Face's own rules for repo ids (huggingface_hub validate_repo_id): letters, digits, "-", "_",
# "." in each part, at most 96 characters; a revision is a branch, tag or commit (branches hold "/").
_REPO_ID = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95})(?:@(?P<revision>[\w.][\w./-]{0,255}))?")


def repo_reference(source: str | Path) -> tuple[str, str | None] | None:
    """(repo id, revision or None) when `source` names a Hugging Face repository, else None."""
    text = str(source)
    explicit = text.startswith(SCHEME)
    if not explicit and _names_a_local_path(text):
        return None
    found = _REPO_ID.fullmatch(text[len(SCHEME) :] if explicit else text)
    if found is None:
        if explicit:
            raise UsageError(f"{text!r} is not a Hugging Face repository id (hf://ORG/NAME or hf://ORG/NAME@REVISION)")
        return None
    return found["repo"], found["revision"]


def _names_a_local_path(text: str) -> bool:
    """A file or folder here (or a TF checkpoint prefix) by that name wins over a repository id; a name
    the system cannot even look up (too long) is a path too, for the reader to refuse."""
    try:
        return Path(text).exists() or Path(f"{text}.index").is_file()
    except OSError:
        return True


def resolve(source: str | Path) -> Path:
    """The local folder a source names: itself, or the cache snapshot of the repository it names."""
    reference = repo_reference(source)
    if reference is None:
        return Path(source)
    repo, revision = reference
    try:
        import huggingface_hub
        from huggingface_hub import constants, errors
    except ImportError:
        raise missing_extra("huggingface_hub", f"{source}: a Hugging Face repository id") or UsageError(str(source)) from None
    failures = (OSError, ValueError, errors.HfHubHTTPError)
    named = f"{repo}@{revision}" if revision else repo
    try:
        return Path(huggingface_hub.snapshot_download(repo, revision=revision, local_files_only=True))
    except failures:
        pass  # not in the cache
    if constants.HF_HUB_OFFLINE:
        raise SourceNotFoundError(
            f"{source}: no such file or folder, and {named} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}); "
            "HF_HUB_OFFLINE is set, so it is not downloaded"
        )
    try:
        return Path(huggingface_hub.snapshot_download(repo, revision=revision))
    except failures as exc:
        detail = " ".join(str(exc).split())[:300]
        raise SourceNotFoundError(
            f"{source}: no such file or folder, and {named} is neither in the Hugging Face cache nor downloadable ({detail})"
        ) from None
