"""Print the JSON Schema of pipeline specs with every installed plugin's models in it:
``python -m dicomflow.schemas.spec_schema_print`` (editors validate YAML with it)."""

from __future__ import annotations

import json

from dicomflow.schemas.spec import spec_json_schema

if __name__ == "__main__":
    print(json.dumps(spec_json_schema(), indent=2, sort_keys=True))
