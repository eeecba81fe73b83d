"""man/focusfuse.1 matches --help: every option of every command is documented."""

from __future__ import annotations

import pytest

from focusfuse import __version__
from focusfuse.cli import main

from conftest import REPO

MAN_PAGE = (REPO / "man" / "focusfuse.1").read_text()


@pytest.mark.parametrize("command", sorted(main.commands))
def test_every_option_is_in_the_man_page(command):
    for parameter in main.commands[command].params:
        for option in parameter.opts + parameter.secondary_opts:
            if option.startswith("-"):
                assert option.replace("-", r"\-") in MAN_PAGE, f"{command} {option} is missing from man/focusfuse.1"


def test_man_page_names_this_version():
    assert f'"focusfuse {__version__}"' in MAN_PAGE.splitlines()[0]
