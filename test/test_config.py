"""fide.config: at most 50 settings in the tree, unknown keys rejected, removed settings named as such."""

import dataclasses
import json
import re
from pathlib import Path

import pytest

from fide import config
from fide.config import FideConfig, config_from_dict

REPO = Path(__file__).resolve().parents[1]


def _settings(node) -> list[str]:
    """Dotted names of every leaf setting of a dataclass instance, through its nested dataclasses."""
    names = []
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        names += [f"{f.name}.{name}" for name in _settings(value)] if dataclasses.is_dataclass(value) else [f.name]
    return names


def test_the_config_holds_at_most_50_settings():
    names = _settings(FideConfig())
    assert len(names) == len(set(names)) and "confidence.flag_below" in names and "seed" in names
    assert len(names) <= 50, f"{len(names)} settings: {names}"


def test_unknown_keys_are_rejected():
    with pytest.raises(ValueError, match="unknown config key 'searchh'"):
        config_from_dict({"searchh": {}})
    with pytest.raises(ValueError, match=r"unknown keys \['angle_stepp_deg'\] in config section 'search'"):
        config_from_dict({"search": {"angle_stepp_deg": 5.0}})


def test_a_removed_setting_says_it_is_no_longer_one_and_where_it_went():
    expected = "search.refine_size_px is no longer a setting (a constant of fide/prealign/search.py, since issue 25)"
    with pytest.raises(ValueError, match=re.escape(expected)):
        config_from_dict({"search": {"refine_size_px": 256, "top_k": 2}})
    with pytest.raises(ValueError, match=r"fibres\.verify_below is no longer a setting .*fide/prealign/fibres\.py"):
        config_from_dict({"fibres": {"verify_below": 0.3}})
    assert config_from_dict({"search": {"top_k": 2}}).search.top_k == 2  # what remains still loads


def test_every_removed_setting_is_rejected_and_names_a_module_that_exists():
    sections = {f.name: f.default_factory for f in dataclasses.fields(FideConfig)}  # type: ignore[misc]
    for section, removed in config._REMOVED.items():
        current = {f.name for f in dataclasses.fields(sections[section])}
        for name, where in removed.items():
            assert name not in current, f"{section}.{name} is still a setting"
            for module in re.findall(r"fide/[\w/]+\.py", where):
                assert (REPO / module).is_file(), f"{section}.{name}: {module} does not exist"
            with pytest.raises(ValueError, match=rf"{section}\.{name} is no longer a setting"):
                config_from_dict({section: {name: None}})


def test_a_saved_config_loads_back(tmp_path):
    cfg = FideConfig(seed=3)
    cfg.search.mirror = "never"
    cfg.save(tmp_path / "cfg.json")
    loaded = config_from_dict(json.loads((tmp_path / "cfg.json").read_text()))
    assert loaded == cfg
