"""``fleetgrid agent`` argument handling: bad settings end with exit code 2 and a message, before any network."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from fleetgrid import errors
from fleetgrid.agent.cli import agent_command, parse_hours

app = typer.Typer()
app.command()(agent_command)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--hours", "25-3"], "allowed_hours"),
        (["--min-soc", "1.5"], "min_soc"),
        (["--bus", "carrier-pigeon"], "vehicle bus spec"),
        (["--hardware", "hw9"], "unknown hardware profile"),
        (["--coordinator", "grid.example"], "must start with http"),
        (["--clock-speed", "0", "--clock-start", "0"], "clock speed must be > 0"),
    ],
)
def test_bad_settings_exit_2_with_a_message(tmp_path, args, message):
    result = CliRunner().invoke(app, ["--state-dir", str(tmp_path), *args])
    assert result.exit_code == 2 and message in result.output


def test_hours_parse_as_start_dash_end():
    assert parse_hours("22-7") == (22, 7)
    with pytest.raises(errors.InvalidInput, match="START-END"):
        parse_hours("night")
