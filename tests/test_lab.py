from __future__ import annotations

import pytest

from ttsha import lab as lab_module
from ttsha.lab import Lab, LabError, find_binary


def test_missing_binary_names_the_debian_package(monkeypatch):
    monkeypatch.setattr(lab_module.shutil, "which", lambda name: None)
    monkeypatch.setattr(lab_module.os.path, "exists", lambda path: False)
    with pytest.raises(LabError, match="apt-get install -y nginx"):
        find_binary("nginx", "nginx")


def test_commands_on_a_missing_lab_explain(tmp_path):
    with pytest.raises(LabError, match="ttsha lab up --dir"):
        Lab(tmp_path / "none").layout()
    assert Lab(tmp_path / "none").down() == []
