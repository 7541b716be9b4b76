"""The CLI's own errors: one line, no traceback, the source named."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli.main import main


def test_a_port_out_of_range_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                        ) -> None:
    config = tmp_path / "tiergate.toml"
    config.write_text("")
    assert main(["serve", "--config", str(config), "--port", "99999"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tiergate: invalid serve options") and "port" in err
    assert "Traceback" not in err


def test_a_bad_environment_variable_is_not_blamed_on_the_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "my.toml"
    config.write_text("[server]\nport = 8000\n")
    monkeypatch.setenv("TIERGATE_SERVER__WORKERS", "zero")
    assert main(["models", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "TIERGATE_SERVER__WORKERS" in err and "workers" in err


def test_output_cut_short_by_a_closed_pipe_is_not_an_error(tmp_path: Path) -> None:
    config = tmp_path / "tiergate.toml"
    models = "".join(f'[models.m{i}]\nbackend = "http"\nbase_url = "http://127.0.0.1:9/v1"\n'
                     for i in range(200))
    config.write_text(models)
    # `tiergate models | head -1`: the reader leaves after one line
    cli = subprocess.Popen([sys.executable, "-m", "gateway", "models", "--config", str(config)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert cli.stdout is not None and cli.stderr is not None
    assert cli.stdout.readline()
    cli.stdout.close()
    stderr = cli.stderr.read().decode()
    cli.wait(timeout=60)
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr
