"""Regenerate tests/fixtures/reference.npz from the original .tflite files.

Runs ttsha's front end here (to pick phone ids), then the dev-only
TensorFlow venv for the reference outputs. ``make fixtures`` calls it::

    python tools/make_fixtures.py REF_PYTHON
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from ttsha.engine.embedded import find_asset_dir
from ttsha.engine.frontend import PhoneMapper, normalize

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "reference.npz"

CASES = {
    "short": ("欢迎使用语音合成服务", 1.0, 1.0, 1.0),
    "numbers": ("今天是2026年11月23日", 1.0, 1.0, 1.0),
    "long": ("当主节点失去响应时网关会把流量切换到备用节点", 1.0, 1.0, 1.0),
    "prosody": ("我们的目标是零失败请求", 1 / 1.2, 1.25, 1.15),
}


def main(ref_python: str) -> None:
    assets = find_asset_dir()
    mapper = PhoneMapper.from_file(assets / "baker_mapper.json")
    cases = {
        name: {"ids": mapper.ids(normalize(text)), "speed": speed, "f0": f0, "energy": energy}
        for name, (text, speed, f0, energy) in CASES.items()
    }
    with tempfile.TemporaryDirectory() as tmp:
        ids = Path(tmp) / "ids.json"
        ids.write_text(json.dumps(cases))
        subprocess.run(
            [ref_python, str(ROOT / "tools" / "tflite_reference.py"), "fixtures", str(assets), str(ids), str(OUT)],
            check=True,
        )
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main(sys.argv[1])
