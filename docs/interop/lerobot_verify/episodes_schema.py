"""(either venv) The meta/episodes parquet schema of a LeRobot v3.0 dataset, one column per line as
``name<TAB>arrow type``, sorted; diff two of these to see what a writer does differently.

    python episodes_schema.py DATASET_DIR [OUT.tsv]
"""

import sys
from pathlib import Path

import pyarrow.parquet as pq

root = Path(sys.argv[1])
paths = sorted((root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
schema = pq.read_schema(paths[0])
lines = sorted(f"{field.name}\t{field.type}" for field in schema)
text = "\n".join(lines) + "\n"
if len(sys.argv) > 2:
    Path(sys.argv[2]).write_text(text)
print(text, end="")
