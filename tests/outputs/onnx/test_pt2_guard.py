"""A `.pt2` archive is looked through before torch's deserializer opens it: pickles, module imports
and native libraries in it are refused (exit 5), and nothing is written."""

from __future__ import annotations

import json
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="writes real torch.export archives")

from exporters.onnx_export.pt2_guard import check_pt2  # noqa: E402
from tests.support import assert_cli_error, assert_no_output, run_cli  # noqa: E402


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    net = torch.nn.Sequential(torch.nn.Linear(4, 3)).eval()
    ep = torch.export.export(net, (torch.randn(2, 4),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    path = tmp_path_factory.mktemp("pt2") / "net.pt2"
    torch.export.save(ep, path)
    return path


def rewrite(src: Path, dst: Path, change: Callable[[str, bytes], bytes], extra: dict[str, bytes] | None = None) -> Path:
    """Copy the archive, passing every member through `change`, adding `extra`."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, change(info.filename, zin.read(info.filename)))
        for name, data in (extra or {}).items():
            zout.writestr(name, data)
    return dst


def root_of(path: Path) -> str:
    with zipfile.ZipFile(path) as zf:
        return next(n for n in zf.namelist() if n.endswith("/archive_format")).rsplit("/", 1)[0]


def test_a_plain_program_passes(program: Path) -> None:
    check_pt2(program)


def test_pickled_weights_are_refused(program: Path, tmp_path: Path) -> None:
    def mark_pickled(name: str, data: bytes) -> bytes:
        if name.endswith("_weights_config.json"):
            config = json.loads(data)
            next(iter(config["config"].values()))["use_pickle"] = True
            return json.dumps(config).encode()
        return data

    bad = rewrite(program, tmp_path / "bad.pt2", mark_pickled)
    assert_cli_error(run_cli("to-onnx", bad, tmp_path / "out"), 5, "stored as a pickle")
    assert_no_output(tmp_path / "out")


def test_sample_inputs_that_call_a_function_are_refused(program: Path, tmp_path: Path) -> None:
    class Exploit:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            import os

            return (os.system, ("echo pwned > pwned.txt",))

    payload = tmp_path / "payload.pt"
    with zipfile.ZipFile(payload, "w") as zf:
        zf.writestr("payload/data.pkl", pickle.dumps(Exploit(), protocol=2))
    bad = rewrite(
        program, tmp_path / "bad.pt2", lambda name, data: payload.read_bytes() if "/data/sample_inputs/" in name else data
    )
    assert_cli_error(run_cli("to-onnx", bad, tmp_path / "out", cwd=tmp_path), 5, "posix.system")
    assert not (tmp_path / "pwned.txt").exists()
    assert_no_output(tmp_path / "out")


def test_native_code_is_refused(program: Path, tmp_path: Path) -> None:
    bad = rewrite(
        program,
        tmp_path / "bad.pt2",
        lambda name, data: data,
        {f"{root_of(program)}/data/aotinductor/model/model.so": b"\x7fELF"},
    )
    assert_cli_error(run_cli("to-onnx", bad, tmp_path / "out"), 5, "native code")


def test_specs_that_import_a_module_are_refused(program: Path, tmp_path: Path) -> None:
    def add_enum(name: str, data: bytes) -> bytes:
        return data.replace(b"{", b'{"__enum__": 1, ', 1) if "/models/" in name and name.endswith(".json") else data

    bad = rewrite(program, tmp_path / "bad.pt2", add_enum)
    assert_cli_error(run_cli("to-onnx", bad, tmp_path / "out"), 5, "import")


def test_legacy_archives_are_unsupported(tmp_path: Path) -> None:
    legacy = tmp_path / "old.pt2"
    with zipfile.ZipFile(legacy, "w") as zf:
        zf.writestr("version", "5.0")
        zf.writestr("serialized_exported_program.json", "{}")
    assert_cli_error(run_cli("to-onnx", legacy, tmp_path / "out", "--framework", "pytorch"), 4, "current format")
