"""Real rows through the ``datasets`` library: from the Hugging Face Hub or a local copy.

``datasets`` is an optional dependency (``pip install 'pytest-lbbench[hf]'``) and is imported
only when real rows are asked for, so importing a workload never touches the network or the
package. A local ``--dataset-path`` (a ``.jsonl``/``.json``/``.parquet``/``.csv`` file, or a
directory such as a ``git clone`` of the dataset repository) goes through the very same
``datasets.load_dataset`` call as the Hub, so tests exercise the real library on small files.

The token is read by ``huggingface_hub`` itself from ``HF_TOKEN``; this module only checks
that one is set and never prints, logs or stores it.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    # Only a type: the package imports this module lazily, so a runtime import would be a cycle.
    from pytest_lbbench.workloads.sources import Row

# Datasets whose files are behind "accept the terms" on the Hub: a token is required.
GATED_DATASETS = frozenset({"lmsys/chatbot_arena_conversations", "lmsys/lmsys-chat-1m"})

TOKEN_VARIABLES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")

_BUILDER_BY_SUFFIX = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}

_INSTALL_HINT = "Install it with `pip install 'pytest-lbbench[hf]'` (or `pip install datasets`)."


class DatasetUnavailable(ValueError):
    """Real rows were asked for but cannot be loaded; the message says how to fix it.

    A ``ValueError``, so the client reports it as a usage error (exit status 2).
    """


def _token_set(environ: Mapping[str, str]) -> bool:
    return any(environ.get(name) for name in TOKEN_VARIABLES)


def preflight(dataset_id: str, dataset_path: str | None, environ: Mapping[str, str]) -> None:
    """Raise :class:`DatasetUnavailable` unless real rows of ``dataset_id`` can be loaded.

    Checks, without any network access: that ``datasets`` is installed; that a local path,
    if given, exists; and that a gated dataset read from the Hub has a token in ``environ``.
    """
    if importlib.util.find_spec("datasets") is None:
        where = f"the local copy {dataset_path!r}" if dataset_path else f"{dataset_id!r} from the Hugging Face Hub"
        raise DatasetUnavailable(
            f"Reading {where} needs the `datasets` package, which is not installed. "
            f"{_INSTALL_HINT} Or run with `--dataset-source synthetic` to use the offline generator."
        )
    if dataset_path:
        if not Path(dataset_path).exists():
            raise DatasetUnavailable(
                f"--dataset-path {dataset_path!r} does not exist. Point it at a file "
                f"({', '.join(sorted(_BUILDER_BY_SUFFIX))}) or a directory holding {dataset_id!r} "
                "rows in their Hugging Face format, or leave it out to read the Hub."
            )
        return
    if dataset_id in GATED_DATASETS and not _token_set(environ):
        raise DatasetUnavailable(
            f"{dataset_id!r} is a gated dataset on the Hugging Face Hub and no token is set. "
            f"Accept its terms at https://huggingface.co/datasets/{dataset_id} with your account, "
            "create a read token at https://huggingface.co/settings/tokens and export it as "
            f"HF_TOKEN; the `datasets` package must be installed ({_INSTALL_HINT}). Alternatively "
            "pass --dataset-path with a local copy in the dataset's row format, or use "
            "--dataset-source synthetic for the offline generator."
        )


def load_rows(
    dataset_id: str,
    *,
    config: str | None = None,
    split: str = "train",
    dataset_path: str | None = None,
    environ: Mapping[str, str],
    cache_dir: str | None = None,
) -> Iterable[Row]:
    """Rows of ``dataset_id`` (or of the local copy at ``dataset_path``) as dicts.

    ``split`` may slice, as the original did (``"train[:50000]"``). A local file is read with
    the builder for its suffix; a local directory the way ``load_dataset(dir)`` reads a dataset
    repository. Errors from ``datasets`` (no access, no such dataset) become
    :class:`DatasetUnavailable`.
    """
    preflight(dataset_id, dataset_path, environ)
    import datasets

    kwargs: dict[str, Any] = {"split": split}
    if cache_dir is not None:
        kwargs["cache_dir"] = cache_dir
    if dataset_path:
        path = Path(dataset_path)
        if path.is_dir():
            target, where = str(path), f"the local directory {dataset_path!r}"
        else:
            builder = _BUILDER_BY_SUFFIX.get(path.suffix.lower())
            if builder is None:
                raise DatasetUnavailable(
                    f"--dataset-path {dataset_path!r}: cannot tell the format from its suffix; "
                    f"use one of {', '.join(sorted(_BUILDER_BY_SUFFIX))} or a directory."
                )
            target, where = builder, f"the local file {dataset_path!r}"
            kwargs["data_files"] = str(path)
    else:
        target, where = dataset_id, f"{dataset_id!r} from the Hugging Face Hub"
        if config is not None:
            kwargs["name"] = config
    try:
        dataset = datasets.load_dataset(target, **kwargs)
    except DatasetUnavailable:
        raise
    except Exception as exc:  # datasets raises many kinds; the user needs one message
        hint = (
            f" If the dataset is gated, accept its terms at https://huggingface.co/datasets/{dataset_id}"
            " and set HF_TOKEN." if not dataset_path else ""
        )
        raise DatasetUnavailable(
            f"Could not load {where} (split {split!r}): {type(exc).__name__}: {exc}.{hint}"
        ) from exc
    rows: Iterable[Row] = dataset
    return rows
