"""Column types of the export table, so every file that carries it has one schema.

Why: a CSV does not say what an empty column is. Hugging Face ``datasets`` reads each split's
metadata file on its own and refuses to load an export whose validation split has an empty
``crowd_label`` (read as float64) while train has text. A Parquet file states its schema, and
the ``huggingface`` key of its Arrow metadata carries the ``datasets`` features, so ``label``
arrives as a ``ClassLabel`` with the job's labels in the job's order, in every split.

pyarrow is optional (``pip install 'cxrlabel[parquet]'``): without it the per-split files stay
CSV (loadable as long as no column is empty in one split only) and the datasheet says so.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# Column -> datasets ``Value`` dtype; ``p_<label>`` columns are float64, ``label`` a ClassLabel.
COLUMN_DTYPES = {
    "file_name": "string",
    "confidence": "float64",
    "split": "string",
    "patient_id": "string",
    "expert_reviewed": "bool",
    "reference_label": "string",
    "source_upstream_resized": "bool",
    "image_id": "string",
    "is_gold": "bool",
    "needs_review": "bool",
    "crowd_label": "string",
    "crowd_confidence": "float64",
    "aggregation_method": "string",
    "trusted_judgments": "int64",
    "width": "int64",
    "height": "int64",
    "source": "string",
}


def column_dtype(column: str) -> str:
    if column.startswith("p_"):
        return "float64"
    return COLUMN_DTYPES.get(column, "string")


def have_pyarrow() -> bool:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return False
    return True


def hf_features(columns: list[str], labels: list[str], *, class_label: bool) -> dict[str, Any]:
    """The ``datasets`` features dict (``Features.to_dict()`` form) of a metadata table."""
    features: dict[str, Any] = {}
    for column in columns:
        if column == "label" and class_label:
            features[column] = {"names": list(labels), "_type": "ClassLabel"}
        else:
            features[column] = {"dtype": column_dtype(column), "_type": "Value"}
    return features


def card_features(columns: list[str], labels: list[str]) -> list[dict[str, Any]]:
    """The ``dataset_info.features`` list of a dataset card: what ``imagefolder`` yields
    (``file_name`` becomes the ``image`` column)."""
    out: list[dict[str, Any]] = []
    for column in columns:
        if column == "file_name":
            out.append({"name": "image", "dtype": "image"})
        elif column == "label":
            out.append(
                {
                    "name": "label",
                    "dtype": {
                        "class_label": {"names": {str(i): name for i, name in enumerate(labels)}}
                    },
                }
            )
        else:
            out.append({"name": column, "dtype": column_dtype(column)})
    return out


def write_parquet(
    path: Path,
    rows: list[dict[str, Any]],
    columns: list[str],
    labels: list[str],
    *,
    class_label: bool,
) -> None:
    """Write ``rows`` with the declared schema; with ``class_label`` the label is its index."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrow_types = {
        "string": pa.string(),
        "float64": pa.float64(),
        "bool": pa.bool_(),
        "int64": pa.int64(),
    }
    fields = []
    for column in columns:
        kind = "int64" if column == "label" and class_label else column_dtype(column)
        fields.append(pa.field(column, arrow_types[kind]))
    features = hf_features(columns, labels, class_label=class_label)
    schema = pa.schema(
        fields, metadata={"huggingface": json.dumps({"info": {"features": features}})}
    )
    data = {c: [_arrow_value(c, r[c], labels, class_label) for r in rows] for c in columns}
    pq.write_table(pa.table(data, schema=schema), path)


def _arrow_value(column: str, value: Any, labels: list[str], class_label: bool) -> Any:
    if column == "label" and class_label:
        return labels.index(value)
    return value
