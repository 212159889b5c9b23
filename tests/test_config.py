"""Config is validated at start: each mistake is one line naming the field, exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from sftp_gateway.cli import main
from sftp_gateway.config import ConfigError, load_settings, parse_size, settings_from_dict


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("storage: {bucket: abc, colour: blue}", "storage.colour: unknown key"),
        ("storage: {bucket: abc, part_size: 8 potatoes}", "storage.part_size"),
        ("storage: {bucket: abc, part_size: 1MiB}", "storage.part_size: must be between 5MiB"),
        ("server: {listen: nowhere}", "storage: required but missing"),
        ("storage: {bucket: abc}\nserver: {listen: nowhere}", "server.listen"),
        ("storage: [unclosed", "not valid YAML"),
        ("- a\n- list", "top level must be a mapping"),
    ],
)
def test_check_config_names_the_bad_field_and_exits_2(
    tmp_path: Path, text: str, expected: str
) -> None:
    result = CliRunner().invoke(main, ["check-config", "--config", str(write(tmp_path, text))])
    assert result.exit_code == 2
    assert expected in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["check-config", "--config", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert "not found" in result.output


def test_valid_config_and_env_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "storage: {bucket: acme-inbound, part_size: 8MiB}\n")
    monkeypatch.setenv("SFTP_GATEWAY__STORAGE__PART_SIZE", "16MiB")
    monkeypatch.setenv("SFTP_GATEWAY__UPLOADS__ALLOWED_EXTENSIONS", "[pdf, .TIFF]")
    settings = load_settings(path)
    assert settings.storage.part_size == 16 * 1024 * 1024
    assert settings.uploads.allowed_extensions == [".pdf", ".tiff"]


def test_env_var_for_unknown_key_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"storage\.bukket: unknown key"):
        settings_from_dict({"storage": {"bucket": "abc"}}, {"SFTP_GATEWAY__STORAGE__BUKKET": "x"})


def test_config_path_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "storage: {bucket: from-env}\n")
    monkeypatch.setenv("SFTP_GATEWAY_CONFIG", str(path))
    assert load_settings(None).storage.bucket == "from-env"


@pytest.mark.parametrize(
    ("text", "size"),
    [("8MiB", 8 * 1024**2), ("1GiB", 1024**3), ("500 KB", 500_000), (1234, 1234)],
)
def test_sizes_accept_units(text: object, size: int) -> None:
    assert parse_size(text) == size


def test_example_config_is_valid() -> None:
    example = Path(__file__).parent.parent / "config" / "gateway.example.yaml"
    if not example.exists():
        pytest.skip("example config not written yet")
    settings = load_settings(example)
    assert settings.storage.bucket
