"""The globals a weight file has no reason to name: one list, kept as data, that refuses a pickle as
an attack (exit 5) wherever in the file the name sits.

The restricted unpickler never imports or calls a global it does not know (it becomes an inert
record), so this list is not what keeps code from running; it is what tells an attack from a
checkpoint. A pickle that names `os.system` or `builtins.eval` was written to run them, and the
file is refused naming the global instead of being converted around it.

Sources: the globals the public pickle scanners flag as dangerous (picklescan's unsafe-globals
table, modelscan's unsafe-globals settings, fickling's unsafe imports), the payloads in this
project's hostile corpus (fixtures/hostile, scripts/make_hostile.py), and the Python 2 module names
that `torch.save`'s protocol 2 still writes (`__builtin__`, `commands`, `posix`, `nt`, `copy_reg`,
`cPickle`). Names are matched as pickles spell them: a module and a name, the name possibly dotted
(protocol 4 qualified names), and a module reached as an attribute of another
(`GLOBAL 'torch.serialization os'`) counts as that module.
"""

from __future__ import annotations

ANY = None  # every name of the module
_BUILTINS = frozenset(
    {
        "eval",
        "exec",
        "execfile",
        "compile",
        "open",
        "__import__",
        "breakpoint",
        "input",
        "raw_input",
        "globals",
        "locals",
        "vars",
        "setattr",
        "delattr",
        "apply",
        "reload",
        "file",
        "exit",
        "quit",
        "help",
    }
)
_PICKLE_LOADS = frozenset({"load", "loads", "Unpickler", "_load", "_loads", "find_class"})

# module -> the names refused in it (ANY: every name, and every submodule's names).
DENIED: dict[str, frozenset[str] | None] = {
    # processes, shells and the OS (os under its C names posix/nt; Python 2's commands/popen2)
    "os": ANY,
    "posix": ANY,
    "nt": ANY,
    "subprocess": ANY,
    "_posixsubprocess": ANY,
    "commands": ANY,
    "popen2": ANY,
    "pty": ANY,
    "platform": frozenset({"popen"}),
    "multiprocessing": ANY,
    "asyncio": ANY,
    # code from text, bytes or files
    "builtins": _BUILTINS,
    "__builtin__": _BUILTINS,
    "runpy": ANY,
    "code": ANY,
    "codeop": ANY,
    "marshal": ANY,
    "types": frozenset({"CodeType", "FunctionType", "LambdaType", "MethodType", "ModuleType"}),
    "importlib": ANY,
    "imp": ANY,
    "zipimport": ANY,
    "pkgutil": ANY,
    "ctypes": ANY,
    "_ctypes": ANY,
    "sys": ANY,
    "pdb": ANY,
    "bdb": ANY,
    "pydoc": ANY,
    "timeit": ANY,
    "cProfile": ANY,
    "profile": ANY,
    "trace": ANY,
    "venv": ANY,
    "pip": ANY,
    "setuptools": ANY,
    "distutils": ANY,
    "numpy.testing._private.utils": frozenset({"runstring"}),
    # attribute and call gadgets (builtins.getattr is served by a stand-in that never looks a name up)
    "operator": frozenset({"attrgetter", "methodcaller"}),
    "_operator": frozenset({"attrgetter", "methodcaller"}),
    "copyreg": frozenset({"add_extension", "remove_extension", "clear_extension_cache"}),
    "copy_reg": frozenset({"add_extension", "remove_extension", "clear_extension_cache"}),
    # files, network and the browser
    "shutil": ANY,
    "io": frozenset({"open", "open_code", "FileIO"}),
    "_io": frozenset({"open", "open_code", "FileIO"}),
    "tempfile": ANY,
    "socket": ANY,
    "_socket": ANY,
    "ssl": ANY,
    "http.client": ANY,
    "httplib": ANY,
    "urllib.request": ANY,
    "urllib2": ANY,
    "requests": ANY,
    "aiohttp": ANY,
    "ftplib": ANY,
    "smtplib": ANY,
    "telnetlib": ANY,
    "webbrowser": ANY,
    # other pickles, loaded by the deserializer itself
    "pickle": _PICKLE_LOADS,
    "_pickle": _PICKLE_LOADS,
    "cPickle": _PICKLE_LOADS,
    "dill": ANY,
    "joblib": ANY,
    "cloudpickle": ANY,
    "shelve": ANY,
    "torch": frozenset({"load"}),
    "torch.serialization": frozenset({"load", "_load"}),
    "torch.storage": frozenset({"_load_from_bytes"}),
    "torch.jit": frozenset({"load", "_load_for_lite_interpreter"}),
    "torch.hub": ANY,
    "torch.package": ANY,
    "numpy": frozenset({"load"}),
    "numpy.lib.npyio": frozenset({"load"}),
    "pandas": frozenset({"read_pickle"}),
}

# Modules refused even when reached as an attribute of another module (`torch.serialization os`).
AS_ATTRIBUTE = frozenset(
    {
        "os",
        "posix",
        "nt",
        "subprocess",
        "commands",
        "pty",
        "sys",
        "builtins",
        "__builtin__",
        "__builtins__",
        "runpy",
        "importlib",
        "ctypes",
        "marshal",
        "socket",
        "shutil",
        "webbrowser",
        "pickle",
        "dill",
        "joblib",
        "cloudpickle",
    }
)


def denied(module: str, name: str) -> bool:
    """Whether the global `module`.`name`, as a pickle spells it, is on the list."""
    parts = f"{module}.{name}".split(".")
    for cut in range(1, len(parts)):
        names = DENIED.get(".".join(parts[:cut]), frozenset())
        if names is None or parts[cut] in names:
            return True
    return any(part in AS_ATTRIBUTE for part in name.split("."))
