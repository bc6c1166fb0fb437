"""issue 8 (attack pass): a local user without rights on LEGION_HOME gets one line saying
whose the home is, from the commands that read its files directly (config, doctor, costs,
audit, models, vault, purge), never a traceback; commands that reach the host say so on
their own (tests/test_daemon_socket.py)."""

from __future__ import annotations

import contextlib
import io
import os
import sys
import traceback
from pathlib import Path

import pytest

from legion.store import Store

COMMANDS = [
    ["config", "check"],
    ["config", "init"],
    ["doctor", "--quick"],
    ["costs"],
    ["audit"],
    ["audit", "--verify"],
    ["models", "ls"],
    ["vault", "ls"],
    ["agents", "purge", "old"],
]


def as_nobody(home: Path, args: list[str]) -> tuple[int, str]:
    """`legion --home HOME ARGS` through the console entry point, as uid 65534."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code, err = 70, io.StringIO()
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            sys.argv = ["legion", "--home", str(home), *args]
            from legion.cli.main import main

            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                try:
                    main()
                    code = 0
                except SystemExit as exc:
                    code = int(exc.code or 0)
        except BaseException:  # a traceback is what this test looks for
            err.write("UNCAUGHT " + traceback.format_exc())
            code = 99
        finally:
            os.write(w, err.getvalue().encode())
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as pipe:
        stderr = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another uid")
def test_a_user_without_rights_on_the_home_gets_one_line(home: Path) -> None:
    (home / "legion.toml").write_text('[runtime]\nbackend = "none"\n\n[agents.scout]\n')
    Store(home / "host.db").close()
    home.chmod(0o700)
    # The child cannot read this checkout (or the interpreter's library) as another user:
    # import what the commands use now, as an installed legion would have it readable.
    import pwd  # noqa: F401
    import tarfile  # noqa: F401

    from legion.cli.main import COMMANDS as TABLE
    from legion.cli.main import load_command

    for name in TABLE:
        load_command(name)
    import legion.config_edit
    import legion.fleet.doctor
    import legion.gateway.llm.catalog
    import legion.gateway.vault
    import legion.mesh.audit  # noqa: F401

    before = sorted(p.name for p in home.iterdir())
    for args in COMMANDS:
        code, stderr = as_nobody(home, args)
        assert "UNCAUGHT" not in stderr and "Traceback" not in stderr, (args, stderr)
        assert code == 1, (args, code, stderr)
        assert "permission denied on" in stderr and "belongs to root" in stderr, (args, stderr)
        assert stderr.count("\n") == 1, (args, stderr)
    assert sorted(p.name for p in home.iterdir()) == before  # nothing changed
