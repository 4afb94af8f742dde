"""``magihuman serve`` settings: refused before anything starts, with one line naming the option."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from magihuman.cli.app import app
from magihuman.serve.cli import default_devices
from magihuman.serve.config import ConfigError, ServeConfig, default_data_dir, is_loopback


@pytest.mark.parametrize(("args", "needle"), [
    (["--host", "0.0.0.0"], "--api-key"),
    (["--host", "192.168.1.5", "--port", "9000"], "MAGIHUMAN_API_KEY"),
    (["--lease-seconds", "5", "--heartbeat-seconds", "4"], "--lease-seconds"),
    (["--model", "sora-2"], "unknown --model 'sora-2'"),
    (["--queue-limit", "0"], "--queue-limit"),
    (["--port", "70000"], "--port"),
    (["--max-seconds", "-1"], "--max-seconds"),
    (["--database-url", "mysql://x/y"], "--database-url"),
    (["--pipeline-factory", "nocolon"], "module:function"),
    (["--no-api", "--devices", "none"], "runs nothing"),
])
def test_bad_settings_exit_2_before_starting(args, needle, tmp_path, monkeypatch):
    monkeypatch.delenv("MAGIHUMAN_API_KEY", raising=False)
    result = CliRunner().invoke(app, ["serve", "--data-dir", str(tmp_path / "data"), "--devices", "cpu", *args])
    assert result.exit_code == 2, result.output
    assert needle in result.output
    assert not (tmp_path / "data").exists()  # nothing was created


def test_loopback_and_defaults(monkeypatch, tmp_path):
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1") and is_loopback("127.8.0.1")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.1") and not is_loopback("example.com")
    monkeypatch.setenv("MAGIHUMAN_DATA_DIR", str(tmp_path / "d"))
    assert default_data_dir() == tmp_path / "d"
    monkeypatch.delenv("MAGIHUMAN_DATA_DIR")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_data_dir() == tmp_path / "xdg" / "magihuman" / "serve"
    assert default_devices() == ("cpu",)  # no GPU here: one CPU worker


def test_config_round_trips_to_workers_and_keys_public_hosts(tmp_path):
    config = ServeConfig(host="0.0.0.0", api_key="k", data_dir=tmp_path, devices=("cuda:0", "cuda:1"),
                         runtime={"fp8": True}, max_seconds=5.0)
    config.check()
    again = ServeConfig.from_json(config.to_json())
    assert again == config and again.data_dir == tmp_path and again.devices == ("cuda:0", "cuda:1")
    assert again.url == f"sqlite:///{tmp_path / 'jobs.sqlite3'}"
    with pytest.raises(ConfigError, match="API key"):
        ServeConfig(host="0.0.0.0", data_dir=tmp_path).check()
    ServeConfig(host="0.0.0.0", data_dir=tmp_path, api=False).check()  # workers only: nothing listens
