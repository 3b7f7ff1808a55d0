"""``pollinid train``'s flags come from :class:`training.config.TrainConfig`: one flag per field, same defaults."""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path

import pytest

from training.config import FLAG, TrainConfig, add_arguments, config_values, flag_name


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    add_arguments(parser)
    return parser


def test_every_field_has_a_flag_and_its_help() -> None:
    parser = _parser()
    by_dest = {a.dest: a for a in parser._actions if a.option_strings}
    for f in fields(TrainConfig):
        assert FLAG in f.metadata, f"{f.name} has no flag metadata"
        assert f.name in by_dest, f"{f.name} has no flag"
        assert flag_name(f) in by_dest[f.name].option_strings
        assert by_dest[f.name].help, f"{f.name} has no help text"


def test_parsed_defaults_are_the_dataclass_defaults() -> None:
    args = _parser().parse_args(["--data", "photos.csv"])
    assert TrainConfig.from_dict(config_values(args)) == TrainConfig(data="photos.csv")


def test_the_flags_the_readme_uses() -> None:
    argv = [
        "--data", "a", "--data", "b", "--out", "runs/x", "--cache-dir", "c", "--backbone", "tiny_cnn",
        "--mode", "linear", "--trainable-stages", "1", "--views", "3", "--clean-view",
        "--augment", '{"zoom_out": 0.3}', "--epochs", "4", "--patience", "2", "--batch-size", "16",
        "--lr", "0.01", "--weight-decay", "0.1", "--label-smoothing", "0.05", "--taxonomy-smoothing",
        "--balanced-finetune-epochs", "1", "--holdout", "0.2", "--resize-mode", "shorter", "--workers", "0",
        "--threads", "1", "--no-progress", "--answer-epochs", "2", "--no-fit-answers", "--name", "n",
        "--version", "v", "--export-dir", "e", "--fp16", "--int8", "--no-pretrained", "--no-cache", "--no-amp",
        "--mean", "0.4,0.5,0.6",
    ]  # fmt: skip
    config = TrainConfig.from_dict(config_values(_parser().parse_args(argv)))
    assert config.data == ["a", "b"] and config.data_sources == [Path("a"), Path("b")]
    assert config.augment == {"zoom_out": 0.3} and config.mean == [0.4, 0.5, 0.6]
    assert (config.mode, config.trainable_stages, config.views, config.epochs) == ("linear", 1, 3, 4)
    assert (config.lr, config.resize_mode, config.answer_epochs) == (0.01, "shorter", 2)
    assert config.clean_view and config.taxonomy_smoothing and config.export_fp16 and config.export_int8
    assert not (config.progress or config.fit_answers or config.pretrained or config.cache or config.amp)


def test_flags_override_the_config_file_and_unset_flags_keep_it(tmp_path: Path) -> None:
    path = tmp_path / "options.json"
    path.write_text(json.dumps({"data": "from-file", "out": "runs/file", "epochs": 7, "fit_answers": False}))
    args = _parser().parse_args(["--config", str(path), "--data", "given", "--epochs", "2"])
    config = TrainConfig.from_dict(config_values(args))
    assert (config.data, config.out, config.epochs, config.fit_answers) == ("given", "runs/file", 2, False)


def test_a_bad_choice_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(["--data", "x", "--mode", "half"])
    assert "invalid choice" in capsys.readouterr().err
