"""Atomic saves: nothing the library writes can leave a half-written or mixed checkpoint behind.

Every save writes its files beside their final names first and renames them only once all of them were written,
so an exception (bad metadata, a full disk, Ctrl-C) leaves the earlier checkpoint loadable bit for bit.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from typing import Any, Iterator

PRUNED_CONFIG_NAME = "pruned_config.json"  # save_pruned's width specification, beside model.safetensors
WEIGHT_FILE = re.compile(r"(model|pytorch_model)(-\d{5}-of-\d{5})?\.(safetensors|bin)(\.index\.json)?")


@contextmanager
def atomic_files(directory: str | os.PathLike, names: list[str]) -> Iterator[dict[str, str]]:
    """Yield ``{name: temporary path}`` inside ``directory``; on success rename each onto ``directory/name``.

    On any exception the temporary files are removed and the existing files are left as they were.
    """
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    tmp = {n: os.path.join(directory, f".{n}.{os.getpid()}.tmp") for n in names}
    try:
        yield tmp
        for n, path in tmp.items():
            if not os.path.exists(path):
                raise RuntimeError(f"internal error: '{n}' was not written")
        for n, path in tmp.items():
            os.replace(path, os.path.join(directory, n))
    finally:
        for path in tmp.values():
            if os.path.exists(path):
                os.remove(path)


def write_json(path: str | os.PathLike, value: Any, indent: int | None = 2) -> None:
    """Write ``value`` as JSON to ``path`` through :func:`atomic_files`: an interrupted write leaves the earlier file
    (a benchmark's record, whose presence marks a finished stage, is never half written)."""
    directory, name = os.path.split(os.path.abspath(os.fspath(path)))
    with atomic_files(directory, [name]) as tmp, open(tmp[name], "w") as f:
        json.dump(value, f, indent=indent)


@contextmanager
def atomic_directory(directory: str | os.PathLike) -> Iterator[str]:
    """Yield an empty temporary folder beside ``directory``; on success it replaces ``directory`` whole.

    For writers that produce a whole folder (``datasets.save_to_disk``, ``save_pretrained``): the old folder is
    moved aside only after the new one is complete, and removed only after the swap.
    """
    directory = os.path.abspath(os.fspath(directory))
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.", suffix=".tmp", dir=parent)
    try:
        yield tmp
        old = None
        if os.path.exists(directory):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.", suffix=".old", dir=parent)
            os.rmdir(old)
            os.replace(directory, old)
        os.replace(tmp, directory)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def atomic_update(directory: str | os.PathLike) -> Iterator[str]:
    """Yield an empty temporary folder inside ``directory``; on success move every file written there into
    ``directory`` (replacing files of the same name, leaving all other files alone).

    For writers that produce several files into a folder that may also hold other things (``save_pretrained`` next
    to a tokenizer, a Trainer's output_dir): nothing in ``directory`` changes until all new files are complete.
    Subfolders are moved as a whole (an existing subfolder of the same name is swapped with
    :func:`atomic_directory`'s move-aside-then-remove).
    """
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".staged.", suffix=".tmp", dir=directory)
    try:
        yield tmp
        for name in sorted(os.listdir(tmp)):
            src, dst = os.path.join(tmp, name), os.path.join(directory, name)
            if os.path.isdir(src) and os.path.isdir(dst):
                old = tempfile.mkdtemp(prefix=f".{name}.", suffix=".old", dir=directory)
                os.rmdir(old)
                os.replace(dst, old)
                os.replace(src, dst)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(src, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


LOADING_PROBLEMS = ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")


def check_loading_info(info: dict, what: str, source: object = None) -> None:
    """Refuse a ``from_pretrained(..., output_loading_info=True)`` result whose weights did not all fit.

    transformers re-initialises missing (and, with ``ignore_mismatched_sizes``, mismatched) weights and drops
    unexpected ones with only a warning; for hf_metaprune's models that is a silently different model. Tied
    weights are not reported as missing by transformers (they are re-tied), so they pass.
    Raises ``ValueError`` naming ``what`` (the class), ``source`` (the checkpoint) and up to 5 keys per problem.
    """
    problems = {k: sorted(map(str, info[k]))[:5] for k in LOADING_PROBLEMS if info.get(k)}
    if problems:
        detail = "; ".join(f"{k.replace('_', ' ')} ({len(info[k])}): {v}" for k, v in problems.items())
        where = f" in {source}" if source is not None else ""
        raise ValueError(f"the checkpoint{where} does not match the {what} its config describes (missing, unexpected "
                         f"or wrongly shaped weights would be re-initialised or dropped): {detail}")


def remove_stale_weights(directory: str, written: set[str]) -> None:
    """After a ``save_pretrained`` into ``directory``: remove safetensors weights of an earlier save that the new
    one did not replace (transformers loads ``model.safetensors`` before a sharded index, so a stale single file
    beside a new sharded save would load the old weights). Pickle files are left alone: never loaded here."""
    if not any(WEIGHT_FILE.fullmatch(n) for n in written):
        return
    for name in os.listdir(directory):
        if (WEIGHT_FILE.fullmatch(name) and name.startswith("model") and name not in written
                and os.path.isfile(os.path.join(directory, name))):
            os.remove(os.path.join(directory, name))


# a Hub repo id: 'name' or 'namespace/name' (huggingface_hub's rules, loosely)
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def looks_like_local_path(original: Any, path: str) -> bool:
    """Whether a ``from_pretrained`` argument that does not exist was meant as a local path, not a Hub repo id:
    a ``pathlib.Path``; a string starting with '.', '/' or '~'; one that cannot be a repo id ('a/b/c', spaces);
    or 'a/b' where the folder 'a' exists here."""
    if not isinstance(original, str):
        return True
    if path.startswith((".", "/", "~", os.sep)) or "\\" in path or (os.altsep and os.altsep in path):
        return True
    if not _REPO_ID.fullmatch(path) or "--" in path or ".." in path or path.endswith("."):
        return True
    return "/" in path and os.path.isdir(path.split("/")[0])


def missing_local_path(where: str, path: str) -> FileNotFoundError:
    parent = os.path.dirname(os.path.abspath(os.path.expanduser(path)))
    while not os.path.isdir(parent) and os.path.dirname(parent) != parent:
        parent = os.path.dirname(parent)
    return FileNotFoundError(f"{where}: the local folder '{path}' does not exist (the nearest existing folder is "
                             f"'{parent}'); expected a folder written by save_pretrained, or a Hub repo id "
                             "('namespace/name')")
