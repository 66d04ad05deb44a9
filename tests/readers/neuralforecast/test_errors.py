"""NeuralForecast folders a user gets wrong or an attacker writes: each is one error line with its
documented exit code, nothing from the files runs, and no output is left behind."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from tests.support import assert_cli_error, assert_no_output, run_cli
from tests.support.nf_models import FIXTURES, copy_fixture, hyper_parameters, rewrite_metadata


class _Boom:
    """Pickles as a call of os.system: what a hostile pickle does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os

        return os.system, (f"touch {self.marker}",)


def test_config_that_disagrees_with_the_weights_is_refused(tmp_path: Path) -> None:
    folder = copy_fixture("3.3.0", tmp_path)
    model = folder / "MLP_0.safetensors"
    hparams = hyper_parameters(model)
    hparams["hidden_size"] = 16
    rewrite_metadata(model, {"hyper_parameters": json.dumps(hparams)})
    out = tmp_path / "out"
    assert_cli_error(
        run_cli("nf-to-safetensors", folder, out), 6, "MLP_0.safetensors", "mlp.0.weight is [8, 24]", "config implies [16, 24]"
    )
    assert_no_output(out)


def test_a_layer_the_config_implies_but_the_weights_lack_is_refused(tmp_path: Path) -> None:
    folder = copy_fixture("3.3.0", tmp_path)
    model = folder / "MLPQ_0.safetensors"
    hparams = hyper_parameters(model)
    hparams["num_layers"] = 3
    rewrite_metadata(model, {"hyper_parameters": json.dumps(hparams)})
    out = tmp_path / "out"
    assert_cli_error(run_cli("nf-to-safetensors", folder, out), 6, "the config implies mlp.2.weight [8, 8]")
    assert_no_output(out)


def test_a_tie_to_a_missing_tensor_is_refused(tmp_path: Path) -> None:
    folder = copy_fixture("3.3.0", tmp_path)
    rewrite_metadata(folder / "TCN_0.safetensors", {"shared": json.dumps({"nope.weight": ["also.weight"]})})
    out = tmp_path / "out"
    assert_cli_error(run_cli("nf-to-safetensors", folder, out), 6, "TCN_0.safetensors", "nope.weight")
    assert_no_output(out)


def test_hostile_checkpoint_is_refused_and_never_run(tmp_path: Path) -> None:
    folder = copy_fixture("3.2.2", tmp_path)
    marker = tmp_path / "ran"
    with open(folder / "MLP_0.ckpt", "wb") as fh:
        pickle.dump({"state_dict": {}, "hyper_parameters": _Boom(marker)}, fh, protocol=2)
    out = tmp_path / "out"
    assert_cli_error(run_cli("nf-to-safetensors", folder, out), 5, "system")
    assert not marker.exists()
    assert_no_output(out)


def test_hostile_alias_map_is_refused_and_never_run(tmp_path: Path) -> None:
    folder = copy_fixture("3.2.2", tmp_path)
    marker = tmp_path / "ran"
    (folder / "alias_to_model.pkl").write_bytes(pickle.dumps({"MLP": _Boom(marker)}))
    out = tmp_path / "out"
    assert_cli_error(run_cli("nf-to-safetensors", folder, out), 5, "alias_to_model.pkl")
    assert not marker.exists()
    assert_no_output(out)


def test_hostile_configuration_is_refused_and_never_run(tmp_path: Path) -> None:
    folder = copy_fixture("3.2.2", tmp_path)
    marker = tmp_path / "ran"
    (folder / "configuration.pkl").write_bytes(pickle.dumps({"h": 12, "freq": _Boom(marker)}))
    out = tmp_path / "out"
    assert_cli_error(run_cli("nf-to-safetensors", folder, out), 5, "configuration.pkl", "system")
    assert not marker.exists()
    assert_no_output(out)


def test_configuration_values_that_cannot_be_read_are_reported(tmp_path: Path) -> None:
    folder = copy_fixture("3.2.2", tmp_path)
    import numpy as np

    odd = np.array([{"not": "plain"}], dtype=object)
    (folder / "configuration.pkl").write_bytes(pickle.dumps({"h": 12, "freq": "ME", "uids": odd}))
    out = tmp_path / "out"
    assert run_cli("nf-to-safetensors", folder, out, "-q")[0] == 0
    index = json.loads((out / "models.json").read_text())
    assert index["forecaster"]["freq"] == "ME"
    assert "configuration.pkl: uids" in index["skipped"] and index["forecaster"]["series"]["ids"]["__skipped__"]


def test_unknown_model_class_is_unsupported(tmp_path: Path) -> None:
    folder = copy_fixture("3.2.2", tmp_path)
    aliases = {p.name.rsplit("_", 1)[0]: "mystery" for p in folder.glob("*.ckpt")}
    (folder / "alias_to_model.pkl").write_bytes(pickle.dumps(aliases))
    out = tmp_path / "out"
    assert_cli_error(run_cli("nf-to-safetensors", folder, out), 4, "mystery")
    assert_no_output(out)


@pytest.mark.parametrize("case", ["missing", "file", "empty"])
def test_paths_that_are_no_neuralforecast_folder(tmp_path: Path, case: str) -> None:
    src = tmp_path / "src"
    if case == "file":
        src.write_bytes(b"not a folder")
    elif case == "empty":
        src.mkdir()
    code = {"missing": 3, "file": 3, "empty": 4}[case]
    out = tmp_path / "out"
    assert_cli_error(run_cli("nf-to-safetensors", src, out), code, "src")
    assert_no_output(out)


def test_folder_with_configuration_but_no_models_is_corrupt(tmp_path: Path) -> None:
    folder = copy_fixture("3.3.0", tmp_path)
    for model in folder.glob("*_0.safetensors"):
        model.unlink()
    assert_cli_error(run_cli("nf-to-safetensors", folder, tmp_path / "out"), 6, "model file")


def test_existing_output_is_kept_without_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    for flags in ((), ("--overwrite",)):  # not an earlier output: never replaced
        assert_cli_error(run_cli("nf-to-safetensors", FIXTURES / "3.3.0" / "folder", out, *flags), 9, "keep.txt")
    assert (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()
    assert run_cli("nf-to-safetensors", FIXTURES / "3.3.0" / "folder", out, "-q")[0] == 0
    assert_cli_error(run_cli("nf-to-safetensors", FIXTURES / "3.3.0" / "folder", out), 9, "--overwrite")
    assert run_cli("nf-to-safetensors", FIXTURES / "3.3.0" / "folder", out, "--overwrite", "-q")[0] == 0
    assert (out / "models.json").is_file()


def test_output_inside_the_source_folder_is_refused(tmp_path: Path) -> None:
    folder = copy_fixture("3.3.0", tmp_path)
    assert_cli_error(run_cli("nf-to-safetensors", folder, folder, "--overwrite"), 2, "holds the source")
    assert (folder / "MLP_0.safetensors").is_file()


@pytest.mark.parametrize("edit", [{"h": "twelve"}, {"loss": "MAE"}, {"input_size": [1]}])
def test_malformed_hyper_parameters_are_corrupt(tmp_path: Path, edit: dict[str, object]) -> None:
    folder = copy_fixture("3.3.0", tmp_path)
    model = folder / "NLinear_0.safetensors"
    hparams = hyper_parameters(model)
    rewrite_metadata(model, {"hyper_parameters": json.dumps({**hparams, **edit})})
    out = tmp_path / "out"
    assert_cli_error(run_cli("nf-to-safetensors", folder, out), 6, "NLinear_0.safetensors")
    assert_no_output(out)
