"""--inductor-config NAME=VALUE for the benchmark scripts (bench_hf.py, compile_time.py): Inductor settings by their
full names (dotted for groups: cpp.enable_concat_linear), values as Python literals of the setting's type."""
from __future__ import annotations

import argparse
import ast


def add_inductor_config_option(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("--inductor-config", nargs="+", default=[], metavar="NAME=VALUE", help=help)


def parse_inductor_settings(parser: argparse.ArgumentParser, items: list) -> dict:
    """{name: value} of the items; parser.error (exit 2) for a name that is not a setting or a wrong value."""
    import torch._inductor.config

    known = torch._inductor.config.get_config_copy()  # every setting by its full name ("cpp.enable_concat_linear")
    settings = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in known:
            parser.error(f"--inductor-config: {item!r} is not NAME=VALUE with NAME an Inductor setting")
        try:
            settings[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parser.error(f"--inductor-config: the value of {name} ({value!r}) is not a Python literal")
        # The setting's current value tells its type (settings whose value is None take any literal).
        current, given = known[name], settings[name]
        wrong_type = not isinstance(given, type(current)) and not (isinstance(current, float) and type(given) is int)
        if current is not None and (wrong_type or (isinstance(given, bool) and not isinstance(current, bool))):
            parser.error(f"--inductor-config: {name} takes a {type(current).__name__}, got {value!r}")
    return settings


def settings_in_effect(settings: dict) -> str:
    """The settings as Inductor's config reads them under a patch of them ("name=value, ...")."""
    import torch._inductor.config

    with torch._inductor.config.patch(settings):
        in_effect = torch._inductor.config.get_config_copy()
    return ", ".join(f"{key}={in_effect[key]!r}" for key in settings)
