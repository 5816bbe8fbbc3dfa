"""Fetching models from the Hugging Face hub (or its cache), and the error when one is missing.

A caller that wants to see downloads, or forbid them, sets a :class:`DownloadPolicy` around the
load (:func:`download_policy`); every :func:`fetch_model` inside it follows that policy, so the
loaders in between (``load_prior``, ``StableDiffusionPrior``) need not pass it along.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from ...errors import ModelUnavailable, program

DownloadProgress = Callable[[str, int, "int | None"], None]
"""progress(file in the repository, bytes done, bytes in all or None when unknown)."""


@dataclass
class DownloadPolicy:
    """How :func:`fetch_model` may use the network while it is in force."""

    allow: bool = True
    """False: the local cache only (``local_files_only``); a model that is not there raises
    :class:`DownloadsDisallowed`, and nothing is downloaded."""
    progress: DownloadProgress | None = None
    """Called as each missing file's bytes arrive (files are fetched one after the other)."""
    cancelled: Callable[[], bool] = field(default=lambda: False)
    """Checked between files and between chunks of one; True stops with :class:`DownloadCancelled`
    (the partial file stays in the cache, and the next download resumes it)."""


class DownloadCancelled(Exception):
    """The policy's ``cancelled`` said stop while a model was downloading."""


class DownloadsDisallowed(ModelUnavailable):
    """The model is not local, and the policy forbids downloading it."""

    reason = "offline"


_POLICY: ContextVar[DownloadPolicy | None] = ContextVar("sdi_download_policy", default=None)


@contextlib.contextmanager
def download_policy(policy: DownloadPolicy) -> Iterator[None]:
    """Apply ``policy`` to every :func:`fetch_model` in this thread until the block ends."""
    token = _POLICY.set(policy)
    try:
        yield
    finally:
        _POLICY.reset(token)


def quiet_hf_logging() -> None:
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    for log in (dlog, tlog):
        log.set_verbosity_error()
        log.disable_progress_bar()


# The files a Stable-Diffusion-family repository needs here: full-precision safetensors
# only (repos also carry .bin, fp16 variants and multi-GB single-file checkpoints).
MODEL_FILES = [
    "model_index.json",
    "scheduler/*",
    "tokenizer/*",
    "*/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/diffusion_pytorch_model.safetensors",
    "text_encoder/model.safetensors",
    "*.safetensors.index.json",
    "*/diffusion_pytorch_model-0*.safetensors",
    "*/model-0*.safetensors",
]


MODEL_ALTERNATIVES = "pass --model with a local diffusers directory, or --model tiny to test offline"


def unavailable(model_id: str, what: str, alternatives: str = MODEL_ALTERNATIVES) -> ModelUnavailable:
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}
    return ModelUnavailable(
        f"model '{model_id}' is not available: {what}" + (" (HF_HUB_OFFLINE is set)" if offline else ""),
        hint=f"fetch it once on a connected machine with `{program('hf')} download {model_id}`, or {alternatives}",
    )


def fetch_model(
    model_id: str, source: str, allow_patterns: list[str] | None = None, alternatives: str = MODEL_ALTERNATIVES
) -> str:
    """A local directory holding the model: ``source`` itself, or its Hugging Face cache snapshot.

    ``snapshot_download`` honours the HF cache and ``HF_HUB_OFFLINE`` and downloads only
    what is missing (``allow_patterns``, default :data:`MODEL_FILES`); it fails fast and
    quietly when the hub cannot be reached. ``alternatives`` ends the error's hint.
    """
    if os.path.isdir(source):
        return source
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    patterns, policy = allow_patterns or MODEL_FILES, _POLICY.get()
    try:
        if policy is None:
            return snapshot_download(source, allow_patterns=patterns)
        if not policy.allow:
            return snapshot_download(source, allow_patterns=patterns, local_files_only=True)
        return _download_with_progress(source, patterns, policy)
    except (OSError, ValueError, HfHubHTTPError) as exc:
        if policy is not None and not policy.allow:
            raise DownloadsDisallowed(
                f"model '{model_id}' is not on this machine, and downloads are not allowed",
                hint=f"allow downloads, or {alternatives}",
            ) from exc
        raise unavailable(model_id, "not in the Hugging Face cache and not downloadable", alternatives) from exc


def _download_with_progress(repo: str, patterns: list[str], policy: DownloadPolicy) -> str:
    """``snapshot_download`` file by file, so that each file's bytes can be reported by name
    (snapshot_download's own ``tqdm_class`` only sees the sum over all files)."""
    from huggingface_hub import hf_hub_download, snapshot_download

    plan = snapshot_download(repo, allow_patterns=patterns, dry_run=True)
    for info in plan:
        if policy.cancelled():
            raise DownloadCancelled
        if info.will_download:
            bar = _progress_bar(info.filename, policy)
            hf_hub_download(repo, info.filename, revision=info.commit_hash, tqdm_class=bar)
    revision = plan[0].commit_hash if plan else None
    return snapshot_download(repo, allow_patterns=patterns, revision=revision, local_files_only=True)


def _progress_bar(file: str, policy: DownloadPolicy) -> type:
    """A silent tqdm class that reports one file's bytes to ``policy.progress``. A file may get
    several bars (Xet: one for the transfer, one for the reconstruction): the most done counts."""
    from tqdm import tqdm

    most = [0]

    class Bar(tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.pop("name", None)
            super().__init__(*args, **{**kwargs, "disable": True})
            self.done = int(kwargs.get("initial") or 0)

        def update(self, n: float | None = 1) -> bool | None:
            if policy.cancelled():
                raise DownloadCancelled
            self.done += int(n or 0)
            most[0] = max(most[0], self.done)
            if policy.progress is not None:
                policy.progress(file, most[0], int(self.total) if self.total else None)
            return None

    return Bar
