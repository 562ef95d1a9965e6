"""``modalities``: which feature stores the fusion model reads, reduced to what decides their rows.

Writes ``data/modalities.json``::

    {"format": "va-pipeline-modalities/1", "modalities": ["iresnet", "vggish", "mfcc"],
     "stores": {"iresnet": {"extractor", "kind", "weights", "row_shape", "dtype", "fingerprint"}, ...}}

one entry per name in ``model.modalities``, in that order, ``fingerprint`` being the sha256 of the store's own
fingerprint (extractor parameters, weights digest, code version, digests of the prepared inputs it read). The
stages that read the stores (``train@<k>``, ``evaluate``, ``predict``) depend on this file instead of on the stores:
DVC cannot take a list parameter as a list of dependencies, and a dependency on the whole ``features/`` folder would
re-train whenever a store the model does not read is added or rebuilt. This stage depends on the folder; when it
re-runs for such a store its file comes out byte-identical, and DVC re-runs nothing after it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.common.outputs import write_json
from pipeline.io.features import FeatureStore, StoreError

FORMAT = "va-pipeline-modalities/1"


def store_record(path: Path) -> dict[str, Any]:
    """What decides a complete store's rows: extractor, kind, weights digest, row shape, dtype and the sha256 of
    its fingerprint (the store's provenance, which names the commit, is left out: a new commit alone changes
    nothing)."""
    store = FeatureStore.open(path)
    a = store.attrs
    fp = json.dumps(a.get("fingerprint"), sort_keys=True, separators=(",", ":"))
    return {
        "extractor": a.get("extractor"),
        "kind": a.get("kind", a.get("extractor")),
        "weights": a.get("weights"),
        "row_shape": list(store.row_shape),
        "dtype": a.get("dtype"),
        "fingerprint": hashlib.sha256(fp.encode()).hexdigest(),
    }


def run(modalities: Sequence[str], features: Path, out: Path) -> dict[str, Any]:
    """Write ``out`` for the stores ``features/<m>.zarr`` of ``modalities``; returns the document."""
    stores = {}
    for m in modalities:
        path = Path(features) / f"{m}.zarr"
        try:
            stores[m] = store_record(path)
        except StoreError as e:
            raise StoreError(f"model.modalities: {m!r}: {e}") from None
    doc = {"format": FORMAT, "modalities": list(modalities), "stores": stores}
    write_json(Path(out), doc)
    print(f"modalities: {', '.join(modalities)} -> {out}")
    return doc
