"""``export --format labelstudio``: tasks that Label Studio imports, and its labeling config.

Written next to the images of the export (same layout as ``imagefolder``):

- ``labelstudio-config.xml``: the project's labeling interface: an ``Image`` named ``image``
  and single-choice ``Choices`` named ``label`` with the job's labels;
- ``labelstudio-tasks.json``: one task per image (Label Studio's JSON task format):
  ``data.image`` is a local-files URL (``/data/local-files/?d=<export folder>/<file_name>``,
  served when Label Studio runs with ``LOCAL_FILES_SERVING_ENABLED=true`` and
  ``LOCAL_FILES_DOCUMENT_ROOT`` = the folder that holds the export); one *annotation* with
  the exported label (``ground_truth`` for test questions and expert reviews); one
  *prediction* with the crowd's own label and its confidence as ``score`` (model version
  ``cxrlabel-<aggregation method>``), so reviewers can sort by it.

The admin-only ``source`` column is not put into the tasks: in Label Studio every annotator
of the project can read a task's data.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

FROM_NAME, TO_NAME = "label", "image"
TASKS_FILE, CONFIG_FILE = "labelstudio-tasks.json", "labelstudio-config.xml"
LOCAL_FILES = "/data/local-files/?d="


def label_config(labels: list[str]) -> str:
    choices = "\n".join(f"    <Choice value={quoteattr(v)}/>" for v in labels)
    return (
        f'<View>\n  <Image name="{TO_NAME}" value="$image"/>\n'
        f'  <Choices name="{FROM_NAME}" toName="{TO_NAME}" choice="single" '
        f'showInLine="true">\n{choices}\n  </Choices>\n</View>\n'
    )


def choice_result(label: str) -> list[dict[str, Any]]:
    return [
        {
            "from_name": FROM_NAME,
            "to_name": TO_NAME,
            "type": "choices",
            "value": {"choices": [label]},
        }
    ]


def task(record: dict[str, Any], folder_name: str) -> dict[str, Any]:
    """One Label Studio task from one export record (see results.export)."""
    path = quote(f"{folder_name}/{record['file_name']}", safe="/")
    out: dict[str, Any] = {
        "data": {
            "image": f"{LOCAL_FILES}{path}",
            "image_id": record["image_id"],
            "split": record["split"],
        },
        "annotations": [
            {
                "result": choice_result(record["label"]),
                "ground_truth": bool(record["is_gold"] or record["expert_reviewed"]),
                "was_cancelled": False,
            }
        ],
        "predictions": [],
    }
    if record.get("crowd_label"):
        out["predictions"].append(
            {
                "model_version": f"cxrlabel-{record.get('aggregation_method') or 'crowd'}",
                "score": float(record["crowd_confidence"] or 0.0),
                "result": choice_result(record["crowd_label"]),
            }
        )
    return out


def write_labelstudio(
    root: Path, records: list[dict[str, Any]], labels: list[str], folder_name: str
) -> list[str]:
    (root / CONFIG_FILE).write_text(label_config(labels), encoding="utf-8")
    tasks = [task(r, folder_name) for r in records]
    (root / TASKS_FILE).write_text(
        json.dumps(tasks, indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    return [TASKS_FILE, CONFIG_FILE]
