"""
C{epcat --help}, C{--version} and shell completion must not import Twisted,
pyOpenSSL, cryptography, rich or attrs: together they cost about a quarter
of a second, which these never need.  Each case runs in a fresh interpreter
(this test process has long imported them all).  No timing is asserted here;
benchmarks/startup.py measures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

HEAVY = ("twisted", "OpenSSL", "rich", "cryptography", "attr", "attrs", "service_identity")

# Runs the console script's main() with the given argv and environment, then
# reports on stderr, as JSON, the heavy modules that were imported.
PROBE = """
import json, sys
heavy = {heavy!r}
def report():
    found = sorted(m for m in sys.modules if m.split(".")[0] in heavy)
    sys.stderr.write("\\nHEAVY " + json.dumps(found) + "\\n")
argv = json.loads(sys.argv[1])
if argv is None:
    import epcat.cli
    report()
else:
    from epcat.cli import main
    try:
        main(argv)
    except SystemExit:
        pass
    finally:
        report()
"""


def probe(argv: list[str] | None, **env: str) -> tuple[list[str], str]:
    """
    Run the probe; return the heavy modules imported and the stdout.
    """
    full_env = dict(os.environ, **env)
    full_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT / "src"), full_env.get("PYTHONPATH", "")) if p
    )
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=HEAVY), json.dumps(argv)],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    marker = [line for line in done.stderr.splitlines() if line.startswith("HEAVY ")]
    assert marker, done.stderr
    return json.loads(marker[-1][len("HEAVY ") :]), done.stdout


def test_the_brief_one_liner() -> None:
    """
    The check as a person would type it.
    """
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import epcat.cli, sys; print(sorted(m for m in sys.modules "
            "if m.split('.')[0] in ('twisted', 'OpenSSL', 'rich', 'cryptography')))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.strip() == "[]"


def test_importing_the_cli() -> None:
    assert probe(None)[0] == []


@pytest.mark.parametrize("argv", [["--help"], ["-h"], ["--version"], ["listen", "--help"]])
def test_help_and_version(argv: list[str]) -> None:
    heavy, out = probe(argv)
    assert heavy == []
    assert "epcat" in out


@pytest.mark.parametrize(
    ("shell", "words", "cword", "expected"),
    [
        ("bash", "epcat listen t", "2", "plain,tcp:"),
        ("bash", "epcat listen tcp:8080:", "2", "plain,tcp:8080:interface="),
        ("bash", "epcat connect ", "2", "plain,tls:"),
        ("bash", "epcat connect unix:/", "2", "plain,unix:/tmp/"),
        ("bash", "epcat --", "1", "plain,--verbose"),
        ("zsh", "epcat listen t", "2", "tcp\\:"),
        ("fish", "epcat connect tlsx:h:1:", "tlsx:h:1:", "plain,tlsx:h:1:sni="),
    ],
)
def test_completion(shell: str, words: str, cword: str, expected: str) -> None:
    heavy, out = probe([], _EPCAT_COMPLETE=f"{shell}_complete", COMP_WORDS=words, COMP_CWORD=cword)
    assert expected in out.splitlines()
    assert heavy == []


def test_completion_scripts() -> None:
    for shell in ("bash", "zsh", "fish"):
        heavy, out = probe([], _EPCAT_COMPLETE=f"{shell}_source")
        assert "_epcat_completion" in out
        assert heavy == []


@pytest.mark.parametrize("option", ["--version", "-V"])
def test_version_alone_imports_nothing_but_epcat(option: str) -> None:
    """
    The console script answers C{--version} alone before importing click:
    the same line click prints, from a Python that imported only epcat.
    """
    code = (
        "import sys\n"
        "from epcat.entry import main\n"
        "try:\n"
        "    main([sys.argv[1]])\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0, e.code\n"
        "sys.stderr.write(repr(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('click', 'twisted', 'rich', 'OpenSSL'))))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    done = subprocess.run([sys.executable, "-c", code, option], env=env, capture_output=True,
                          text=True, timeout=60, check=True)
    assert done.stderr == "[]"
    from epcat import __version__

    assert done.stdout == f"epcat {__version__}\n"
    via_click = subprocess.run([sys.executable, "-m", "epcat", "--version", "--help"], env=env,
                               capture_output=True, text=True, timeout=60, check=True)
    assert via_click.stdout == done.stdout  # (click's own --version, among other options)


def test_a_relay_without_retries_leaves_twisted_application_alone() -> None:
    """
    What a relay imports (L{epcat.run}) leaves out C{twisted.application}:
    its C{ClientService} and C{backoffPolicy} (and the automat they bring,
    some 30 ms of start-up) are imported only when something is retried or
    reconnected.
    """
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import epcat.run, epcat.dial, sys; print(sorted(m for m in sys.modules "
            "if m.startswith('twisted.application') or m.split('.')[0] == 'automat'))",
        ],
        env=dict(os.environ, PYTHONPATH=str(ROOT / "src")),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.strip() == "[]"
