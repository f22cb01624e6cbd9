import re

import pytest

from {{ cookiecutter.package_name }}.config import ConfigError, load_params

from conftest import PARAMS


def test_params_yaml_is_valid_and_complete():
    params = load_params(PARAMS)
    flat = params.flat()
    for key in ("model.base", "model.method", "train.max_steps", "checkpoint.dir", "checkpoint.every_steps",
                "checkpoint.every_minutes", "checkpoint.keep", "budget.max_run_usd", "cost.hourly_usd"):
        assert key in flat
    # The method the file names (the project's own choice, not necessarily the template's default).
    named = re.search(r"^  method: (\w+)", PARAMS.read_text(), re.M).group(1)
    assert params.model.method == named


def test_overrides_are_parsed_as_yaml_values():
    params = load_params(PARAMS, ["train.max_steps=7", "lora.target_modules=[q_proj, v_proj]", "compute.spot=false"])
    assert params.train.max_steps == 7
    assert params.lora.target_modules == ["q_proj", "v_proj"]
    assert params.compute.spot is False


def test_unknown_key_is_refused_naming_it():
    # The section's keys follow, the closest first.
    with pytest.raises(ConfigError, match=r"unknown key 'train.max_stepz' \(did you mean 'train.max_steps'\?\); known: max_steps, "):
        load_params(PARAMS, ["train.max_stepz=5"])
    with pytest.raises(ConfigError, match=r"unknown key 'trian' \(did you mean 'train'\?\); known: train, "):
        load_params(PARAMS, ["trian.max_steps=5"])


def test_bad_value_from_override_names_key_and_source():
    with pytest.raises(ConfigError) as err:
        load_params(PARAMS, ["train.max_steps=-1"])
    assert "--set: train.max_steps" in str(err.value)
    assert "-1" in str(err.value)


def test_bad_value_in_file_names_file_line_and_key(tmp_path):
    bad = tmp_path / "params.yaml"
    text = re.sub(r"^  method: \w+", "  method: full", PARAMS.read_text(), count=1, flags=re.M)
    bad.write_text(text)
    line = next(i for i, row in enumerate(text.splitlines(), 1) if row.strip().startswith("method: full"))
    with pytest.raises(ConfigError, match=rf"params.yaml:{line}: model.method"):
        load_params(bad)


def test_unknown_key_in_file_names_file_line_and_the_closest_known_key(tmp_path):
    bad = tmp_path / "params.yaml"
    text = PARAMS.read_text().replace("  max_steps:", "  max_stepz:")
    bad.write_text(text)
    line = next(i for i, row in enumerate(text.splitlines(), 1) if row.startswith("  max_stepz:"))
    with pytest.raises(ConfigError) as err:
        load_params(bad)
    message = str(err.value)
    assert message.startswith(f"{bad}:{line}: unknown key 'train.max_stepz' (did you mean 'train.max_steps'?); known: max_steps, ")
    assert "warmup_steps" in message and "\n" not in message  # every key of the section, on one line


def test_misspelt_section_in_file_is_one_line_naming_the_sections(tmp_path):
    bad = tmp_path / "params.yaml"
    text = re.sub(r"^train:", "trian:", PARAMS.read_text(), count=1, flags=re.M)
    bad.write_text(text)
    line = text.splitlines().index("trian:") + 1
    with pytest.raises(ConfigError) as err:
        load_params(bad)
    message = str(err.value)
    assert message.startswith(f"{bad}:{line}: unknown key 'trian' (did you mean 'train'?); known: train, ")
    assert "max_steps" not in message and "\n" not in message  # not the section's content


def test_yaml_syntax_error_names_line(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("model:\n  base: x\ntrain: [unclosed\n")
    with pytest.raises(ConfigError, match=r"params.yaml:\d+: not valid YAML"):
        load_params(bad)


def test_global_batch_must_be_a_multiple_of_micro_batch():
    with pytest.raises(ConfigError, match="global_batch .* multiple of micro_batch") as err:
        load_params(PARAMS, ["train.micro_batch=3", "train.global_batch=16"])
    assert "{" not in str(err.value)  # the message, not the whole train section as the value


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_params(tmp_path / "nope.yaml")
