"""HDF5 and .keras, written with h5py alone (no TensorFlow, no Keras)."""

from __future__ import annotations

import base64
import io
import json
import struct
import zipfile
from collections.abc import Callable, Sequence

from hostile_corpus.common import NUMEL, SIZE, ZIP_DATE, Hostile
from hostile_corpus.pickles import NO_CANARY

# marshal.dumps of the code of ``lambda x: (open('canary', 'w').close(), x)[1]`` (compiled as
# "<hostile>") under CPython 3.11: what Keras stores for a Lambda layer (base64 of marshalled code),
# kept as a constant so the corpus is byte-identical whichever Python version regenerates it.
LAMBDA_CODE_MARSHAL = bytes.fromhex(
    "e30100000000000000000000000400000003000000f35600000097007401000000000000000000006401"
    "6402a6020000ab020000000000000000a0010000000000000000000000000000000000000000a6000000"
    "ab0000000000000000007c006602640319000000000000000000530029044eda0663616e617279da0177"
    "e9010000002902da046f70656eda05636c6f73652901da0178730100000020fa093c686f7374696c653e"
    "fa083c6c616d6264613e720900000001000000732600000080008d3490089823d10b1ed40b1ed70b24d2"
    "0b24d10b26d40b26a801d00a2aa831d40a2d8000f300000000"
)
LAMBDA_CODE_B64 = base64.encodebytes(LAMBDA_CODE_MARSHAL).decode("ascii")  # as keras' func_dump writes it


def h5_bytes(write: Callable[[object], None]) -> bytes:
    """An HDF5 file written by h5py into memory (no timestamps: h5py does not track times by default)."""
    import h5py

    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        write(f)
    return buf.getvalue()


def keras2_weights(dataset: Callable[[object, str], None]) -> Callable[[object], None]:
    """A Keras 2 weights file (``save_weights``) of one Dense layer whose kernel ``dataset`` makes."""

    def write(f: object) -> None:
        import numpy as np

        f.attrs["layer_names"] = [b"dense"]
        f.attrs["backend"] = "tensorflow"
        f.attrs["keras_version"] = "2.15.0"
        g = f.create_group("dense")
        g.attrs["weight_names"] = [b"dense/kernel:0", b"dense/bias:0"]
        dataset(g, "dense/kernel:0")
        g.create_dataset("dense/bias:0", data=np.zeros(SIZE[0], dtype="<f4"))

    return write


def huge_kernel(group: object, name: str) -> None:
    group.create_dataset(name, shape=(2**31, 2**31), dtype="<f4", chunks=(64, 64))  # never written: no bytes


def external_kernel(group: object, name: str) -> None:
    group.create_dataset(name, shape=SIZE, dtype="<f4", external=[("/etc/passwd", 0, 4 * NUMEL)])


def linked_kernel(group: object, name: str) -> None:
    import h5py

    group[name] = h5py.ExternalLink("/etc/passwd.h5", "/data")


def lambda_layer_keras2() -> dict[str, object]:
    return {
        "class_name": "Lambda",
        "config": {
            "name": "lambda",
            "trainable": True,
            "dtype": "float32",
            "function": [LAMBDA_CODE_B64, None, None],
            "function_type": "lambda",
            "module": "__main__",
            "output_shape": None,
            "output_shape_type": "raw",
            "output_shape_module": None,
            "arguments": {},
        },
    }


def keras2_full_model(f: object) -> None:
    """A Keras 2 ``model.save('m.h5')``: model_config with a Lambda layer, weights of a Dense layer."""
    import numpy as np

    config = {
        "class_name": "Sequential",
        "config": {
            "name": "sequential",
            "layers": [
                {
                    "class_name": "InputLayer",
                    "config": {"batch_input_shape": [None, SIZE[1]], "dtype": "float32", "name": "input"},
                },
                lambda_layer_keras2(),
                {"class_name": "Dense", "config": {"name": "dense", "units": SIZE[0], "activation": "linear", "use_bias": True}},
            ],
        },
    }
    f.attrs["model_config"] = json.dumps(config)
    f.attrs["keras_version"] = "2.15.0"
    f.attrs["backend"] = "tensorflow"
    weights = f.create_group("model_weights")
    weights.attrs["layer_names"] = [b"lambda", b"dense"]
    weights.attrs["backend"] = "tensorflow"
    weights.attrs["keras_version"] = "2.15.0"
    weights.create_group("lambda").attrs["weight_names"] = np.array([], dtype="S1")
    dense = weights.create_group("dense")
    dense.attrs["weight_names"] = [b"dense/kernel:0", b"dense/bias:0"]
    dense.create_dataset("dense/kernel:0", data=np.arange(NUMEL, dtype="<f4").reshape(SIZE[::-1]))
    dense.create_dataset("dense/bias:0", data=np.zeros(SIZE[0], dtype="<f4"))


def keras3_archive(layers: list[dict[str, object]], weights: Callable[[object], None]) -> bytes:
    """A Keras 3 ``.keras`` zip: config.json, metadata.json, model.weights.h5 (fixed timestamps)."""
    config = {
        "module": "keras",
        "class_name": "Sequential",
        "config": {"name": "sequential", "layers": layers},
        "registered_name": None,
    }
    entries = [
        ("metadata.json", json.dumps({"keras_version": "3.6.0", "date_saved": "2024-01-01@00:00:00"}).encode()),
        ("config.json", json.dumps(config).encode()),
        ("model.weights.h5", h5_bytes(weights)),
    ]
    return stored_zip(entries)


def stored_zip(members: Sequence[tuple[str, bytes]]) -> bytes:
    """A zip of stored members under fixed timestamps: a .keras file's layout, and np.savez's."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
            info.create_system = 0
            zf.writestr(info, data)
    return buf.getvalue()


def dense3(units: int = SIZE[0]) -> dict[str, object]:
    return {
        "module": "keras.layers",
        "class_name": "Dense",
        "registered_name": None,
        "config": {"name": "dense", "units": units, "activation": "linear", "use_bias": True},
    }


def keras3_dense_weights(kernel: Callable[[object, str], None]) -> Callable[[object], None]:
    def write(f: object) -> None:
        import numpy as np

        kernel(f, "layers/dense/vars/0")
        f.create_dataset("layers/dense/vars/1", data=np.zeros(SIZE[0], dtype="<f4"))

    return write


def plain_kernel(group: object, name: str) -> None:
    import numpy as np

    group.create_dataset(name, data=np.arange(NUMEL, dtype="<f4").reshape(SIZE[::-1]))


def global_heap_loop(data: bytes) -> bytes:
    """The file with its global heap's free-space object (index 0) resized to 0 bytes.

    libhdf5 walks a collection object by object, stepping by a free-space object's size alone, so it
    never moves again: reading any variable-length string attribute hangs the process inside C.
    """
    out = bytearray(data)
    pos = out.index(b"GCOL\x01") + 16  # signature, version, reserved, collection size (8 bytes)
    while struct.unpack_from("<H", out, pos)[0] != 0:  # index, references, reserved, size (8 bytes)
        (size,) = struct.unpack_from("<Q", out, pos + 8)
        pos += 16 + size + (-size % 8)
    struct.pack_into("<Q", out, pos + 8, 0)
    return bytes(out)


def h5_files() -> list[Hostile]:
    """Needs h5py (the Keras extra); without it these files are not generated."""
    lambda3 = {
        "module": "keras.layers",
        "class_name": "Lambda",
        "registered_name": None,
        "config": {
            "name": "lambda",
            "trainable": True,
            "dtype": "float32",
            "arguments": {},
            "function": {"class_name": "__lambda__", "config": {"code": LAMBDA_CODE_B64, "defaults": None, "closure": None}},
        },
    }
    return [
        Hostile(
            "h5_huge_shape.h5",
            "hdf5",
            "Keras 2 weights whose kernel declares shape (2**31, 2**31) and holds no bytes" + NO_CANARY,
            False,
            h5_bytes(keras2_weights(huge_kernel)),
        ),
        Hostile(
            "h5_external_storage.h5",
            "hdf5",
            "kernel stored in an external raw file: /etc/passwd" + NO_CANARY,
            False,
            h5_bytes(keras2_weights(external_kernel)),
        ),
        Hostile(
            "h5_external_link.h5",
            "hdf5",
            "kernel is an external link to /etc/passwd.h5" + NO_CANARY,
            False,
            h5_bytes(keras2_weights(linked_kernel)),
        ),
        Hostile(
            "h5_global_heap_loop.h5",
            "hdf5",
            "Keras 2 weights whose global heap free-space object has size 0: "
            "libhdf5 loops forever reading its string attributes" + NO_CANARY,
            False,
            global_heap_loop(h5_bytes(keras2_weights(plain_kernel))),
        ),
        Hostile(
            "h5_lambda_layer.h5",
            "hdf5",
            "Keras 2 full model whose Lambda layer is marshalled code that creates "
            "canary when a Keras loader rebuilds and calls it",
            False,
            h5_bytes(keras2_full_model),
            "inert",
        ),
        Hostile(
            "keras_lambda_layer.keras",
            "keras",
            "Keras 3 archive whose Lambda layer is marshalled code that creates "
            "canary when Keras loads it with safe_mode=False and calls it",
            False,
            keras3_archive([lambda3, dense3()], keras3_dense_weights(plain_kernel)),
            "inert",
        ),
        Hostile(
            "keras_external_storage.keras",
            "keras",
            "model.weights.h5 inside the archive keeps its kernel in /etc/passwd (external raw storage)" + NO_CANARY,
            False,
            keras3_archive([dense3()], keras3_dense_weights(external_kernel)),
        ),
        Hostile(
            "keras_huge_shape.keras",
            "keras",
            "model.weights.h5 kernel declares (2**31, 2**31) and holds no bytes" + NO_CANARY,
            False,
            keras3_archive([dense3()], keras3_dense_weights(huge_kernel)),
        ),
    ]
