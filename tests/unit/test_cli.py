"""
Tier 3 tests for L{epcat.cli}: the click chain turned into a L{Plan}, with
the C{go()} seam patched so that no reactor ever starts.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from click.testing import CliRunner

import epcat.cli
from epcat import __version__
from epcat.cli import cli, main
from epcat.plan import CONNECT, LISTEN, RELAY, TUNNEL


@pytest.fixture
def plans(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """
    Every plan the CLI would have run, in order.
    """
    captured: list[Any] = []
    monkeypatch.setattr(epcat.cli, "go", captured.append)
    return captured


def invoke(args: list[str]) -> Any:
    return CliRunner().invoke(cli, args, prog_name="epcat", catch_exceptions=False)


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """
    Run the console script's C{main}; return (exit status, stdout, stderr).
    """
    with pytest.raises(SystemExit) as raised:
        main(argv)
    out, err = capsys.readouterr()
    code = raised.value.code
    return (0 if code is None else int(code)), out, err


def assert_one_line_usage_error(err: str) -> None:
    assert err.endswith("\n")
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("epcat: error:")
    assert "Traceback" not in err


# -- plans


def test_listen_connect_is_a_relay(plans: list[Any]) -> None:
    result = invoke(["listen", "tcp:8080", "connect", "tcp:127.0.0.1:80"])
    assert result.exit_code == 0, result.output
    [plan] = plans
    assert plan.mode == RELAY
    assert plan.listen == "tcp:8080"
    assert plan.connect == ("tcp:127.0.0.1:80",)
    assert plan.verbosity == 0
    assert plan.log_format == "text"


def test_connect_alone_joins_stdio(plans: list[Any]) -> None:
    result = invoke(["connect", "tls:example.com:443"])
    assert result.exit_code == 0, result.output
    [plan] = plans
    assert plan.mode == CONNECT
    assert plan.listen is None
    assert plan.connect == ("tls:example.com:443",)


def test_listen_alone_joins_stdio(plans: list[Any]) -> None:
    result = invoke(["listen", "unix:/tmp/app.sock"])
    assert result.exit_code == 0, result.output
    [plan] = plans
    assert plan.mode == LISTEN
    assert plan.listen == "unix:/tmp/app.sock"
    assert plan.connect == ()


def test_connect_connect_is_a_tunnel(plans: list[Any]) -> None:
    result = invoke(["connect", "tcp:relay.example:9000", "connect", "tcp:127.0.0.1:22"])
    assert result.exit_code == 0, result.output
    [plan] = plans
    assert plan.mode == TUNNEL
    assert plan.listen is None
    assert plan.connect == ("tcp:relay.example:9000", "tcp:127.0.0.1:22")


def test_descriptions_are_passed_through_verbatim(plans: list[Any]) -> None:
    description = "tcp6:8080:interface=\\:\\:1"
    result = invoke(["listen", description, "connect", "unix:/run/a\\:b.sock"])
    assert result.exit_code == 0, result.output
    assert plans[0].listen == description
    assert plans[0].connect == ("unix:/run/a\\:b.sock",)


@pytest.mark.parametrize(
    ("options", "verbosity"),
    [
        ([], 0),
        (["-v"], 1),
        (["-vv"], 2),
        (["-v", "-v"], 2),
        (["-vvv"], 2),
        (["--verbose"], 1),
        (["-q"], -1),
        (["--quiet"], -1),
        (["-q", "-v"], -1),
    ],
)
def test_verbosity(plans: list[Any], options: list[str], verbosity: int) -> None:
    result = invoke([*options, "connect", "tcp:h:1"])
    assert result.exit_code == 0, result.output
    assert plans[0].verbosity == verbosity


@pytest.mark.parametrize("options", [["--log-format", "json"], ["--log-format=json"]])
def test_log_format_json(plans: list[Any], options: list[str]) -> None:
    result = invoke([*options, "connect", "tcp:h:1"])
    assert result.exit_code == 0, result.output
    assert plans[0].log_format == "json"


def test_main_builds_the_plan_and_exits_0(
    plans: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run_main(["-v", "listen", "tcp:0", "connect", "tcp:h:1"], capsys)
    assert status == 0
    assert (out, err) == ("", "")
    [plan] = plans
    assert (plan.mode, plan.verbosity) == (RELAY, 1)


# -- usage errors through the console script


@pytest.mark.parametrize(
    "argv",
    [
        ["connect", "tcp:h:1", "listen", "tcp:0"],
        ["listen", "tcp:1", "listen", "tcp:2"],
        ["connect", "tcp:h:1", "connect", "tcp:h:2", "connect", "tcp:h:3"],
        ["listen", "tcp:1", "connect", "tcp:h:1", "connect", "tcp:h:2"],
    ],
)
def test_bad_orders_are_one_line_usage_errors(
    plans: list[Any], capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    status, out, err = run_main(argv, capsys)
    assert status == 2
    assert out == ""
    assert_one_line_usage_error(err)
    assert "cannot run" in err
    assert plans == []


@pytest.mark.parametrize(
    "argv",
    [
        ["lisen", "tcp:80"],
        ["listen"],
        ["connect"],
        ["-Z", "listen", "tcp:0"],
        ["--log-format", "xml", "listen", "tcp:0"],
        ["connect", "tcp:h:1", "endpoints"],
        ["endpoints", "no-such-type"],
    ],
)
def test_other_usage_errors_are_one_line(
    plans: list[Any], capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    status, out, err = run_main(argv, capsys)
    assert status == 2
    assert out == ""
    assert_one_line_usage_error(err)
    assert plans == []


@pytest.mark.parametrize(
    ("argv", "given_in", "belongs", "example"),
    [
        (
            ["listen", "tcp:0", "connect", "tcp:h:1", "--workers", "2"],
            "connect",
            "listen",
            "epcat listen SERVER --workers N connect CLIENT",
        ),
        (
            ["listen", "tcp:0", "--proxy-header", "v2", "connect", "tcp:h:1"],
            "listen",
            "connect",
            "epcat listen SERVER connect CLIENT --proxy-header v1|v2",
        ),
        (
            ["listen", "tcp:0", "connect", "tcp:h:1", "-vv"],
            "connect",
            "",
            "epcat -v listen SERVER connect CLIENT",
        ),
        (
            ["--retry", "3", "connect", "tcp:h:1"],
            "",
            "connect",
            "epcat connect CLIENT --retry N",
        ),
        (
            ["connect", "tcp:h:1", "--idle-timeout=5"],
            "connect",
            "",
            "epcat --idle-timeout SECONDS listen SERVER connect CLIENT",
        ),
        (
            ["--max-connections", "3", "listen", "tcp:0", "connect", "tcp:h:1"],
            "",
            "listen",
            "epcat listen SERVER --max-connections N connect CLIENT",
        ),
    ],
)
def test_a_misplaced_option_is_told_where_it_goes(
    plans: list[Any],
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    given_in: str,
    belongs: str,
    example: str,
) -> None:
    """
    An option given in the wrong part of the command line (global options
    go before the first subcommand, listen's and connect's after their own
    description) is a one-line usage error that names the part it belongs
    to and shows where to write it, with that part's --help.
    """
    status, out, err = run_main(argv, capsys)
    assert status == 2
    assert out == ""
    assert_one_line_usage_error(err)
    assert err.startswith(f"epcat: error: {given_in}: " if given_in else "epcat: error: -")
    assert ("a global option" if not belongs else f"an option of {belongs}") in err
    assert example in err
    assert (f"(see 'epcat {belongs} --help')" if belongs else "(see 'epcat --help')") in err
    assert plans == []


def test_an_option_no_part_has_is_still_unknown(
    plans: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, err = run_main(["listen", "tcp:0", "connect", "tcp:h:1", "--no-such"], capsys)
    assert status == 2
    assert_one_line_usage_error(err)
    assert "no such option '--no-such'" in err


def test_missing_argument_names_the_subcommand(
    plans: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, err = run_main(["listen"], capsys)
    assert status == 2
    assert err.startswith("epcat: error: listen: ")
    assert "SERVER" in err
    assert "epcat listen --help" in err


def test_usage_error_as_json(plans: list[Any], capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run_main(["--log-format", "json", "connect", "x", "listen", "y"], capsys)
    assert status == 2
    assert out == ""
    [line] = err.splitlines()
    record = json.loads(line)
    assert record["level"] == "error"
    assert record["event"] == "usage"
    assert "cannot run connect listen" in record["message"]


def test_click_usage_error_as_json(plans: list[Any], capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run_main(["--log-format=json", "lisen", "tcp:80"], capsys)
    assert status == 2
    [line] = err.splitlines()
    record = json.loads(line)
    assert (record["level"], record["event"]) == ("error", "usage")
    assert "lisen" in record["message"]


def test_no_arguments_prints_help_on_stderr(
    plans: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run_main([], capsys)
    assert status == 2
    assert out == ""  # stdout may be the data channel
    assert "listen" in err and "connect" in err
    assert "Traceback" not in err


# -- version, help, endpoints


@pytest.mark.parametrize("option", ["--version", "-V"])
def test_version(plans: list[Any], capsys: pytest.CaptureFixture[str], option: str) -> None:
    status, out, err = run_main([option], capsys)
    assert status == 0
    assert out == f"epcat {__version__}\n"
    assert err == ""
    assert plans == []


def test_version_through_click_runner() -> None:
    result = invoke(["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"epcat {__version__}"


def test_help_lists_the_subcommands(plans: list[Any]) -> None:
    result = invoke(["--help"])
    assert result.exit_code == 0
    for word in ("listen", "connect", "endpoints", "Exit status"):
        assert word in result.stdout
    assert plans == []


def test_endpoints_lists_the_types(plans: list[Any]) -> None:
    result = invoke(["endpoints"])
    assert result.exit_code == 0, result.output
    for prefix in ("tcp:", "unix:", "ssl:", "tls:", "haproxy:", "systemd:"):
        assert prefix in result.stdout
    assert plans == []


def test_endpoints_shows_one_type(plans: list[Any]) -> None:
    result = invoke(["endpoints", "haproxy"])
    assert result.exit_code == 0, result.output
    assert "haproxy:" in result.stdout
    assert "tcp6:" not in result.stdout
    assert "half-close:" in result.stdout


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "1e999"])
@pytest.mark.parametrize(
    "argv",
    [
        ["--idle-timeout", "{}", "listen", "tcp:0", "connect", "tcp:127.0.0.1:1"],
        ["--half-close-timeout", "{}", "listen", "tcp:0", "connect", "tcp:127.0.0.1:1"],
        ["listen", "tcp:0", "--drain-timeout", "{}", "connect", "tcp:127.0.0.1:1"],
        ["connect", "tcp:127.0.0.1:1", "--connect-timeout", "{}"],
        ["connect", "tcp:127.0.0.1:1", "--retry", "2", "--backoff-initial", "{}"],
        ["connect", "tcp:127.0.0.1:1", "--retry", "2", "--backoff-factor", "{}"],
    ],
    ids=["idle", "half-close", "drain", "connect", "backoff-initial", "backoff-factor"],
)
def test_seconds_that_are_not_finite_are_usage_errors(
    plans: list[Any], capsys: pytest.CaptureFixture[str], argv: list[str], value: str
) -> None:
    """
    float() takes nan and inf, and no range check catches nan: every option
    of seconds (and the backoff factor) refuses both, with one usage line.
    """
    status, out, err = run_main([a.format(value) for a in argv], capsys)
    assert status == 2
    assert out == ""
    assert_one_line_usage_error(err)
    assert "is not a finite number" in err or "is not in the range" in err
    assert plans == []


def test_help_shows_the_lifecycle_examples(plans: list[Any]) -> None:
    """
    Issue 3: --help has a persistent reverse tunnel and a guarded forwarder.
    """
    result = invoke(["--help"])
    assert result.exit_code == 0
    assert "connect tcp:127.0.0.1:22 --reconnect" in result.stdout
    assert "--max-connections 100 --allow" in result.stdout


def test_listen_stdio_connect_is_connect(plans: list[Any]) -> None:
    """
    Twisted's stdio: server never stops "listening": 'listen stdio: connect
    X' runs as 'connect X', which ends with its connection.
    """
    result = invoke(["listen", "stdio:", "connect", "tcp:127.0.0.1:1"])
    assert result.exit_code == 0, result.output
    [plan] = plans
    assert plan.mode == "connect"
    assert plan.listen is None
    assert plan.connect == ("tcp:127.0.0.1:1",)


def test_listen_stdio_alone_is_a_usage_error(
    plans: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run_main(["listen", "stdio:"], capsys)
    assert status == 2
    assert_one_line_usage_error(err)
    assert "listen stdio:" in err
    assert plans == []


@pytest.mark.parametrize(
    "argv, named",
    [
        (["listen", ""], "listen: empty server endpoint description"),
        (["connect", " "], "connect: empty client endpoint description"),
        (["listen", "tcp:0", "connect", ""], "connect: empty client endpoint description"),
    ],
)
def test_empty_description_is_a_usage_error(
    plans: list[Any], capsys: pytest.CaptureFixture[str], argv: list[str], named: str
) -> None:
    status, out, err = run_main(argv, capsys)
    assert status == 2
    assert_one_line_usage_error(err)
    assert named in err
    assert plans == []


def test_fail_after_on_the_other_leg_of_a_persistent_tunnel(plans: list[Any]) -> None:
    """
    In a tunnel, --reconnect after either leg makes both persistent, and
    --fail-after after either leg goes with it.
    """
    result = invoke(["connect", "tcp:127.0.0.1:1", "--reconnect",
                     "connect", "tcp:127.0.0.1:2", "--fail-after", "3"])
    assert result.exit_code == 0, result.output
    [plan] = plans
    assert plan.options_for(0).fail_after == 3
    assert plan.options_for(1).reconnect


def test_a_tunnel_option_given_twice_differently_is_a_usage_error(
    plans: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run_main(["connect", "tcp:127.0.0.1:1", "--reconnect", "--backoff-max", "3",
                                 "connect", "tcp:127.0.0.1:2", "--backoff-max", "5"], capsys)
    assert status == 2
    assert_one_line_usage_error(err)
    assert "--backoff-max is given twice with different values (3.0, 5.0)" in err
    assert plans == []


def test_plugin_summaries_are_one_sentence() -> None:
    """
    A plugin's summary is its docstring's first sentence, even when that
    runs over several lines (txtorcon's does), and never over 100
    characters.
    """
    from epcat.catalog import SUMMARY_MAX, _summary

    class Plugin:
        """
        This provides a twisted IPlugin and
        a parser for clientFromString.  More text that is not the summary.

        And a second paragraph.
        """

    assert _summary(Plugin()) == (
        "This provides a twisted IPlugin and a parser for clientFromString."
    )

    class Long:
        pass

    Long.__doc__ = "word " * 60
    assert len(_summary(Long())) == SUMMARY_MAX
    assert _summary(Long()).endswith("...")


def test_endpoints_describe_the_extras_plugins(plans: list[Any]) -> None:
    """
    epcat's extras' plugins (autobahn, txtorcon), where installed, are
    listed with their arguments and a summary of epcat's, not a fragment
    of their docstrings.
    """
    result = invoke(["endpoints", "tor"])  # (txtorcon: a test dependency)
    assert result.exit_code == 0, result.output
    assert "HOST PORT [socksPort=N]" in result.stdout
    assert "This provides" not in result.stdout


def test_proxy_header_timeout_without_a_haproxy_listener_is_a_usage_error(
    plans: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run_main(["listen", "tcp:0", "--proxy-header-timeout", "2",
                                 "connect", "tcp:127.0.0.1:1"], capsys)
    assert status == 2
    assert_one_line_usage_error(err)
    assert "--proxy-header-timeout applies to haproxy: listeners only" in err
    assert plans == []


@pytest.mark.parametrize("option", ["--keylog", "--dump", "--pcap"])
def test_an_empty_file_name_is_a_usage_error(
    plans: list[Any], capsys: pytest.CaptureFixture[str], option: str
) -> None:
    """
    An empty file name used to read as the option not given: no key log,
    dump or capture, and nothing said.
    """
    status, out, err = run_main([option, "", "connect", "tcp:127.0.0.1:1"], capsys)
    assert status == 2
    assert_one_line_usage_error(err)
    assert f"'{option}': give a file name" in err
    assert plans == []
