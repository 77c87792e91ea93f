"""Label Studio task JSON as a source: ``cxrlabel ingest tasks.json``.

A Label Studio export ("JSON" format) or a task file to import into it: a list of tasks, each
``{"data": {"image": ...}, "annotations": [...], "predictions": [...]}``. Every task gives
one image; its reference label comes from the task's annotations (``choices`` results, not
cancelled): a ``ground_truth`` annotation wins, else the most common choice when they agree
on one, else none. Predictions are a model's opinion and are never taken as labels.

Where the image is:

- ``/data/local-files/?d=REL`` (Label Studio's local-files storage): REL is tried relative to
  the JSON file's folder and then its parent (``cxrlabel export --format labelstudio`` writes
  ``d=<export folder>/<file>`` with the tasks inside the export folder);
- a plain path: absolute, or relative to the JSON file's folder;
- ``http(s)://``, ``s3://``, ``/data/upload/...``: not fetched; the task is reported with the
  reason (export the project with its files, or point the tasks at files).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cxrlabel.ingest.sources import MAX_MANIFEST_BYTES, SourceError, SourceItem

LOCAL_FILES = "/data/local-files/"
IMAGE_KEYS = ("image", "img", "image_url", "url")


def read_tasks(json_path: Path, label_values: list[str]) -> list[SourceItem]:
    """One item per task, in file order; SourceError when the file is not a task list."""
    tasks = _load(json_path)
    canonical = {v.upper(): v for v in label_values}
    items = []
    for n, entry in enumerate(tasks, start=1):
        items.append(_item(entry, n, json_path, canonical))
    return items


def _load(json_path: Path) -> list[dict[str, Any]]:
    try:
        if json_path.stat().st_size > MAX_MANIFEST_BYTES:
            raise SourceError(f"{json_path}: task file larger than 64 MiB")
        body = json.loads(json_path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError:
        raise SourceError(f"{json_path}: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise SourceError(f"{json_path}: not valid JSON (line {exc.lineno})") from None
    except OSError as exc:
        raise SourceError(f"{json_path}: cannot read: {exc.strerror}") from None
    if isinstance(body, dict) and "data" in body:
        body = [body]  # a single task
    if not isinstance(body, list) or not body or not all(isinstance(t, dict) for t in body):
        raise SourceError(
            f"{json_path}: expected a Label Studio task list "
            '([{"data": {"image": ...}, "annotations": [...]}, ...])'
        )
    return body


def _item(entry: dict[str, Any], n: int, json_path: Path, canonical: dict[str, str]) -> SourceItem:
    where = f"{json_path.name}:task {entry.get('id', n)}"
    data = entry.get("data")
    if not isinstance(data, dict):
        return SourceItem(where, problem="task has no data object")
    value = next((data[k] for k in IMAGE_KEYS if isinstance(data.get(k), str)), None)
    if value is None:
        return SourceItem(where, problem=f"task data has no image ({', '.join(IMAGE_KEYS)})")
    path, problem = _resolve(value, json_path.resolve().parent)
    if problem:
        return SourceItem(where, problem=problem)
    label, label_problem = _reference_label(entry.get("annotations"), canonical)
    return SourceItem(str(path), label=label, problem=label_problem)


def _resolve(value: str, folder: Path) -> tuple[Path | None, str | None]:
    if value.startswith(LOCAL_FILES):
        rel = (parse_qs(urlsplit(value).query).get("d") or [""])[0]
        if not rel:
            return None, "local-files URL without ?d="
        candidates = [folder / rel, folder.parent / rel]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            return None, f"local file {rel} not found next to the task file or its parent"
        return found.resolve(), None
    scheme = urlsplit(value).scheme
    if scheme in ("http", "https", "s3", "gs", "azure-blob") or value.startswith("/data/"):
        return None, (
            "image is not a local file (Label Studio URL or cloud storage); "
            "export the project with its files or point the tasks at files"
        )
    path = Path(value)
    return (path if path.is_absolute() else folder / path).resolve(), None


def _reference_label(annotations: Any, canonical: dict[str, str]) -> tuple[str | None, str | None]:
    """(label, problem): a choice that is not a job label is reported, not guessed."""
    votes: Counter[str] = Counter()
    truth = None
    for annotation in annotations if isinstance(annotations, list) else []:
        if not isinstance(annotation, dict) or annotation.get("was_cancelled"):
            continue
        for choice in _choices(annotation.get("result")):
            label = canonical.get(choice.upper())
            if label is None:
                allowed = ", ".join(canonical.values())
                return None, f"annotation choice {choice!r} is not one of {allowed}"
            votes[label] += 1
            if annotation.get("ground_truth"):
                truth = label
    if truth is not None:
        return truth, None
    return (next(iter(votes)) if len(votes) == 1 else None), None


def _choices(result: Any) -> list[str]:
    out = []
    for region in result if isinstance(result, list) else []:
        if isinstance(region, dict) and region.get("type") == "choices":
            out += [str(c) for c in (region.get("value") or {}).get("choices") or []]
    return out
