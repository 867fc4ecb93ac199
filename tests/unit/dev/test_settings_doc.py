"""The configuration reference rendered from the settings classes, and README.md kept in step with it."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from bailu.common.settings import ServiceSettings
from bailu.dev import settings_doc
from bailu.dev.settings_doc import BEGIN, END, SETTINGS_CLASSES, MarkersError, render, replace_section

README = Path(__file__).resolve().parents[3] / "README.md"

FIELDS = [(cls, name) for cls in SETTINGS_CLASSES for name in cls.model_fields]


def env_name(cls: type[ServiceSettings], name: str) -> str:
    return f"{cls.model_config['env_prefix']}{name}".upper()


def table_row(section: str, variable: str) -> list[str]:
    """The cells of the row documenting `variable`."""
    (line,) = [line for line in section.splitlines() if line.startswith(f"| `{variable}` |")]
    return [cell.strip() for cell in line.strip("|").split(" | ")]


def test_every_service_is_listed() -> None:
    prefixes = {cls.model_config["env_prefix"] for cls in SETTINGS_CLASSES}
    assert {"BAILU_GATEWAY_", "BAILU_WORKER_"} <= prefixes
    assert len(prefixes) == len(SETTINGS_CLASSES)


@pytest.mark.parametrize(("cls", "name"), FIELDS, ids=[f"{c.__name__}.{n}" for c, n in FIELDS])
def test_every_field_has_a_description(cls: type[ServiceSettings], name: str) -> None:
    description = cls.model_fields[name].description
    assert description, f"{cls.__name__}.{name} needs Field(description=...)"
    assert description.strip()


def test_rendering_lists_every_variable_once() -> None:
    section = render()
    for cls, name in FIELDS:
        assert section.count(f"`{env_name(cls, name)}`") == 1, env_name(cls, name)


def test_inherited_fields_are_documented_for_each_service() -> None:
    section = render()
    assert "`BAILU_GATEWAY_LOG_LEVEL`" in section
    assert "`BAILU_WORKER_LOG_LEVEL`" in section


def test_one_table_per_service() -> None:
    section = render()
    assert section.count("| Variable | Type | Default | Description |") == len(SETTINGS_CLASSES)
    assert "### Gateway" in section
    assert "### Worker" in section


@pytest.mark.parametrize(
    ("variable", "cells"),
    [
        ("BAILU_GATEWAY_PORT", ["integer, ≥ 0, ≤ 65535", "`8000`", "HTTP port."]),
        ("BAILU_GATEWAY_WORKERS", ["comma-separated strings", "*empty*"]),
        ("BAILU_GATEWAY_API_KEYS_FILE", ["path", "*unset*"]),
        ("BAILU_GATEWAY_LOAD_POLL_INTERVAL_S", ["number, > 0", "`0.5`"]),
        (
            "BAILU_WORKER_ENGINE",
            ["one of `transformers`, `sim`, `vllm`, `sglang`, `lmdeploy`, `swift`", "`transformers`"],
        ),
        ("BAILU_WORKER_ADAPTERS", ["JSON object (string to path)", "*empty*"]),
        ("BAILU_WORKER_WARMUP", ["boolean", "`true`"]),
        ("BAILU_WORKER_MODEL_NAME", ["string, non-empty", "`smollm2-135m-instruct`"]),
    ],
)
def test_type_and_default_cells(variable: str, cells: list[str]) -> None:
    row = table_row(render(), variable)
    assert row[1 : 1 + len(cells)] == cells


def test_required_fields_and_pipes_in_descriptions() -> None:
    class DemoSettings(ServiceSettings):
        model_config = SettingsConfigDict(env_prefix="BAILU_DEMO_", frozen=True)

        mode: str = Field(description="Either a|b.")
        token: str = Field("", description="A secret\n   spanning lines.")

    section = render((DemoSettings,))
    assert "### Demo" in section
    assert table_row(section, "BAILU_DEMO_MODE") == ["`BAILU_DEMO_MODE`", "string", "*required*", "Either a\\|b."]
    assert table_row(section, "BAILU_DEMO_TOKEN")[3] == "A secret spanning lines."


def test_replace_section_keeps_the_rest_of_the_file() -> None:
    text = f"# Title\n\nIntro.\n\n{BEGIN}\nstale text\n{END}\n\n## Next\n"
    replaced = replace_section(text, "fresh text\n")
    assert replaced == f"# Title\n\nIntro.\n\n{BEGIN}\nfresh text\n{END}\n\n## Next\n"
    assert replace_section(replaced, "fresh text\n") == replaced


@pytest.mark.parametrize(
    "text",
    ["no markers", f"{BEGIN} only", f"{END} only", f"{END}\n{BEGIN}", f"{BEGIN}{END}{BEGIN}{END}"],
    ids=["none", "begin-only", "end-only", "reversed", "twice"],
)
def test_replace_section_needs_one_ordered_pair_of_markers(text: str) -> None:
    with pytest.raises(MarkersError):
        replace_section(text, "x")


def test_write_then_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = tmp_path / "README.md"
    doc.write_text(f"# Bailu\n\n## Configuration\n\n{BEGIN}\nold\n{END}\n\nMore.\n")
    assert settings_doc.main(["--check", str(doc)]) == 1
    assert "out of date" in capsys.readouterr().err
    assert settings_doc.main(["--write", str(doc)]) == 0
    text = doc.read_text()
    assert text.startswith("# Bailu\n\n## Configuration\n\n")
    assert text.endswith(f"{END}\n\nMore.\n")
    assert "`BAILU_WORKER_ENGINE`" in text
    assert settings_doc.main(["--check", str(doc)]) == 0


def test_check_without_markers_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = tmp_path / "README.md"
    doc.write_text("# Bailu\n")
    assert settings_doc.main(["--check", str(doc)]) == 1
    assert settings_doc.main(["--write", str(doc)]) == 1
    assert doc.read_text() == "# Bailu\n"
    assert BEGIN in capsys.readouterr().err


def test_missing_file_fails(tmp_path: Path) -> None:
    assert settings_doc.main(["--check", str(tmp_path / "absent.md")]) == 1


def test_print_without_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert settings_doc.main([]) == 0
    assert capsys.readouterr().out == render()


def test_readme_is_up_to_date() -> None:
    text = README.read_text(encoding="utf-8") if README.is_file() else ""
    if BEGIN not in text and END not in text:
        pytest.skip(
            f"{README.name} has no settings markers yet ({BEGIN} ... {END}); add them, then run "
            "`python -m bailu.dev.settings_doc --write README.md`"
        )
    assert replace_section(text, render()) == text, (
        "README.md's configuration reference is out of date: run `python -m bailu.dev.settings_doc --write README.md`"
    )
