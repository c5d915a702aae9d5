"""Who is acting: one rule for a patch's author, `registered_by` and alias moves."""

from __future__ import annotations

import getpass

from steerpatch.user import current_user


def test_the_override_then_the_callers_name_then_the_login_name(monkeypatch):
    monkeypatch.setenv("STEERPATCH_USER", "  grace ")
    assert current_user() == "grace" and current_user(default="steerpatch-demo") == "grace"
    monkeypatch.setenv("STEERPATCH_USER", "")
    assert current_user(default="steerpatch-demo") == "steerpatch-demo"
    monkeypatch.setenv("LOGNAME", "ada")  # getpass reads LOGNAME first
    assert current_user() == "ada" == getpass.getuser()


def test_a_system_that_cannot_say_gives_unknown(monkeypatch):
    def no_passwd_entry() -> str:
        raise KeyError("getpwuid(): uid not found: 12345")

    monkeypatch.delenv("STEERPATCH_USER", raising=False)
    monkeypatch.setattr(getpass, "getuser", no_passwd_entry)
    assert current_user() == "unknown"

