"""Many conversions as one job, the way a pipeline step runs them.

A job is plain data (`Job`), so it crosses process and machine boundaries unchanged; `run_job`
never raises, it reports. Executors (a local process pool, or Ray past one machine) only decide
where `run_job` runs; the report is the same whichever ran it.
"""

from __future__ import annotations

import glob
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from exporters.registry import READER_OPTIONS

from .contract import ReaderOptions
from .documents import check_schema, parse_json, read_toml
from .errors import EXIT_INTERRUPTED, ConvertError, SourceNotFoundError, UsageError, install_hint, missing_extra
from .hashing import ALGORITHMS, DEFAULT_ALGORITHM, file_digest
from .options import CONVERSION_OPTIONS

STATUSES = ("ok", "failed", "skipped")


@dataclass(frozen=True)
class Job:
    source: str
    output: str
    conversion: str = "auto"  # "auto" or a source kind / command name (pth-to-safetensors, ...)
    layout: str = "pytorch"
    layout_file: str | None = None
    dtype: str | None = None
    max_shard_size: str | None = None
    digest: str = DEFAULT_ALGORITHM
    cast_loss: str = "refuse"
    reader: ReaderOptions = field(default_factory=ReaderOptions)  # key, config, collections, ...: as the CLI takes them
    layout_options: dict[str, Any] = field(default_factory=dict)  # as --layout-option KEY=VALUE
    overwrite: bool = False  # reconvert even when the output is up to date
    dry_run: bool = False  # plan only: nothing is written
    follow_links: bool = False  # read sources that are symlinks or have several hard links
    to: str = "safetensors"  # the output format (convert.outputs.registry): safetensors or gguf
    output_options: dict[str, Any] = field(default_factory=dict)  # that format's own options (gguf: type, type_override)

    def request(self) -> dict[str, Any]:
        """What decides an output's content besides the source bytes (compared to skip done work);
        the output format and its options only when not the default, so SafeTensors outputs written
        before they existed are still up to date."""
        return {
            **({"to": self.to} if self.to != "safetensors" else {}),
            **({"output_options": self.output_options} if self.output_options else {}),
            "conversion": self.conversion,
            "layout": self.layout,
            "layout_file": self.layout_file,
            "layout_options": self.layout_options,
            "dtype": self.dtype,
            "max_shard_size": self.max_shard_size,
            "digest": self.digest,
            "cast_loss": self.cast_loss,
            "reader": self.reader.to_json(READER_OPTIONS),
        }

    @classmethod
    def from_request(cls, source: str, output: str, request: dict[str, Any]) -> Job:
        """The job a report's line describes (its `request`), to run it again."""
        known = {f for f in cls.__dataclass_fields__ if f not in ("source", "output", "reader")}
        options = {k: v for k, v in request.items() if k in known}
        return cls(source, output, reader=ReaderOptions.from_mapping(request.get("reader") or {}, READER_OPTIONS), **options)


@dataclass
class JobResult:
    source: str
    output: str
    status: str
    error: str | None = None
    exit_code: int = 0
    seconds: float = 0.0
    bytes: int = 0
    request: dict[str, Any] | None = None  # the job's options, so `--retry-failed REPORT` can rerun it alone

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BatchSummary:
    results: list[JobResult] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)  # made when the executor starts
    finished: float | None = None  # when the last result came in
    interrupted: bool = False  # Ctrl-C stopped the batch: `results` are the jobs that finished

    def counts(self) -> dict[str, int]:
        return {s: sum(r.status == s for r in self.results) for s in STATUSES}

    @property
    def ok(self) -> bool:
        return all(r.status != "failed" for r in self.results)

    def to_json(self) -> dict[str, Any]:
        return {
            "summary": {
                "jobs": len(self.results),
                **self.counts(),
                "bytes": sum(r.bytes for r in self.results),
                "seconds": round(sum(r.seconds for r in self.results), 3),
                "wall_seconds": round((self.finished or self.started) - self.started, 3),
                "interrupted": self.interrupted,
            }
        }


# --- planning ------------------------------------------------------------------------------------


def expand_sources(patterns: Iterable[str]) -> list[Path]:
    """Files, model folders and globs, in order, each once; a plain folder contributes the model
    files and model folders below it."""
    from exporters.registry import detect

    found: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern, recursive=True)) if glob.has_magic(pattern) else [pattern]
        if not matches:
            raise SourceNotFoundError(f"{pattern!r} matches nothing")
        for m in map(Path, matches):
            if m.is_dir():
                try:
                    detect(m)
                    found.append(m)
                except ConvertError:
                    found.extend(_model_files_below(m))
            else:
                found.append(m)  # a missing file becomes a failed job, not a failed batch
    unique: dict[Path, None] = dict.fromkeys(p.absolute() for p in found)
    return list(unique)


def _model_files_below(folder: Path) -> Iterator[Path]:
    """Model files below a plain folder; a model folder (e.g. Hugging Face) counts as one source."""
    from exporters.registry import detect, suffixes

    for path in sorted(folder.iterdir()):
        if path.is_dir():
            try:
                detect(path)
                yield path
            except ConvertError:
                yield from _model_files_below(path)
        elif path.suffix in suffixes():
            yield path


def output_names(sources: list[Path]) -> list[str]:
    """`<stem>` per source; clashing stems get their extension, then a number."""
    names: list[str] = []
    taken: set[str] = set()
    for src in sources:
        candidates = [
            src.stem or src.name,
            src.name.replace(".", "-"),
            *(f"{src.name.replace('.', '-')}-{i}" for i in range(2, len(sources) + 2)),
        ]
        name = next(c for c in candidates if c not in taken)
        taken.add(name)
        names.append(name)
    return names


def jobs_from_sources(patterns: Iterable[str], out_dir: str | Path, **options: Any) -> list[Job]:
    """One job per source found; `options` as Job's fields (`reader` a ReaderOptions)."""
    sources = expand_sources(patterns)
    return [
        Job(str(src), str(Path(out_dir).absolute() / name), **options)
        for src, name in zip(sources, output_names(sources), strict=True)
    ]


def jobs_from_file(path: str | Path, out_dir: str | Path | None = None, defaults: dict[str, Any] | None = None) -> list[Job]:
    """A TOML job file (schemas/batch.schema.json): `[defaults]` and `[[job]]` entries; `defaults`
    (the options given on the command line, as Job's fields and reader option names) come below
    the file's own."""
    job_file = Path(path)
    doc = read_toml(job_file, "job file")
    check_schema(doc, "batch.schema.json", f"job file {job_file}", UsageError)
    base = job_file.parent
    file_defaults = doc.get("defaults", {})
    relative = {k: v for k, v in file_defaults.items() if k in path_options() and v is not None}
    defaults = {
        **(defaults or {}),
        **file_defaults,
        **{k: str(v) if Path(v).is_absolute() else str(base / v) for k, v in relative.items()},
    }
    entries = doc.get("job", [])
    for entry in entries:
        for key in ("source", "output"):
            value = {**defaults, **entry}.get(key)
            if isinstance(value, str) and "\0" in value:
                raise UsageError(f"job file {job_file}: a job's {key} holds a NUL character; not a path")
    sources = [Path(e["source"]) if Path(e["source"]).is_absolute() else base / e["source"] for e in entries]
    default_names = output_names(sources)
    jobs = []
    for entry, src, name in zip(entries, sources, default_names, strict=True):
        merged = {**defaults, **entry}
        output = merged.pop("output", None)
        if output is None:
            if out_dir is None:
                raise UsageError(f"{job_file}: job for {entry['source']} has no output and no --out-dir was given")
            output = Path(out_dir) / name
        elif not Path(output).is_absolute():
            output = base / output
        merged.pop("source")
        for name in path_options():  # paths, relative to the job file as sources are
            if entry.get(name) is not None and not Path(entry[name]).is_absolute():
                merged[name] = str(base / entry[name])
        given = {o.name: merged.pop(o.name) for o in READER_OPTIONS if o.name in merged}
        reader = ReaderOptions.from_mapping(given, READER_OPTIONS)
        chosen = {k: merged.pop(k) for k in output_option_names() if k in merged}
        if chosen:
            merged["output_options"] = {k: tuple(v) if isinstance(v, list) else v for k, v in chosen.items()}
        jobs.append(Job(str(src), str(output), reader=reader, **merged))
    return jobs


def path_options() -> list[str]:
    """The options that name a file (a layout file, Keras's config): a job file's are relative to it."""
    return [o.name for o in (*CONVERSION_OPTIONS, *READER_OPTIONS) if o.file]


def output_option_names() -> list[str]:
    """The options output formats declare beyond the conversion options (gguf: type, type_override):
    job-file keys and batch flags, gathered into a job's `output_options`."""
    from .outputs.registry import OWN_OPTIONS

    return list(dict.fromkeys(o.name for own in OWN_OPTIONS.values() for o in own))


def retry_jobs(jobs: list[Job], report_path: str | Path) -> list[Job]:
    """Only the jobs that failed in a previous report."""
    failed = {r["source"] for r in read_report(report_path) if r.get("status") == "failed"}
    return [j for j in jobs if j.source in failed or str(Path(j.source).absolute()) in failed]


def jobs_from_report(report_path: str | Path, **options: Any) -> list[Job]:
    """The jobs that failed in a previous report, each with the options it recorded (a report
    written before reports recorded them: `options`, as Job's fields)."""
    jobs = []
    for row in read_report(report_path):
        if row.get("status") != "failed":
            continue
        if not isinstance(row.get("output"), str):
            raise UsageError(f"{report_path}: not a batch report (a failed job without its output)")
        request = row.get("request")
        jobs.append(
            Job.from_request(row["source"], row["output"], request)
            if isinstance(request, dict)
            else Job(row["source"], row["output"], **options)
        )
    return jobs


def read_report(path: str | Path) -> list[dict[str, Any]]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise SourceNotFoundError(f"report {path} does not exist") from None
    except (UnicodeDecodeError, IsADirectoryError) as exc:
        raise UsageError(f"{path}: not a batch report ({exc})") from None
    rows = []
    for number, line in enumerate(lines, 1):
        row = parse_json(line, f"{path}: not a batch report, a line", UsageError)
        if isinstance(row, dict) and "status" in row:
            if not isinstance(row.get("source"), str) or "\0" in row["source"]:
                raise UsageError(f"{path}: not a batch report (line {number} has no source path)")
            rows.append(row)
    return rows


# --- running one job -----------------------------------------------------------------------------


def run_job(job: Job) -> JobResult:
    """Convert one source; every failure becomes a result, never an exception."""
    started = time.perf_counter()

    def result(status: str, error: str | None = None, code: int = 0, written: int = 0) -> JobResult:
        return JobResult(job.source, job.output, status, error, code, time.perf_counter() - started, written, job.request())

    try:
        if not job.overwrite and is_done(job):
            return result("skipped")
        return result("ok", written=_convert(job))
    except ConvertError as exc:
        return result("failed", str(exc), exc.exit_code)
    except Exception as exc:  # an extra not installed here, or a bug in one job: neither stops the others
        missing = missing_extra(exc.name or "", "this source") if isinstance(exc, ModuleNotFoundError) else None
        if missing is not None:
            return result("failed", str(missing), missing.exit_code)
        return result("failed", f"internal error: {type(exc).__name__}: {exc}", 1)


def _convert(job: Job) -> int:
    """Convert one job (an earlier output of this tool is replaced: batch reruns what is not done);
    the bytes written, or that a dry run would write."""
    from .api import conversion_options, convert_opened, open_path

    declared = {o.name: getattr(job, o.name) for o in CONVERSION_OPTIONS}
    chosen = {"overwrite": True, "request": job.request(), "output_options": job.output_options}
    options = conversion_options({**declared, **chosen}, job.to)
    with open_path(job.source, job.conversion, job.reader, job.follow_links) as opened:
        return convert_opened(opened, job.output, options, target=job.to).bytes


def is_done(job: Job) -> bool:
    """An existing output made from the same source bytes with the same request is done."""
    out = Path(job.output)
    manifests = _output_manifests(out)
    return bool(manifests) and all(_manifest_done(doc, folder, job) for folder, doc in manifests)


def _output_manifests(out: Path) -> list[tuple[Path, dict[str, Any]]]:
    """The manifest of an output folder, or one per model for a NeuralForecast output (models.json)."""
    from . import manifest as manifest_mod
    from .bundle_index import BUNDLE_INDEX, read_bundle_index

    folders = [out]
    if not (out / manifest_mod.MANIFEST_FILE).is_file() and (out / BUNDLE_INDEX).is_file():
        try:
            index = read_bundle_index(out)
        except ConvertError:  # a folder name that leaves the output: not a finished output
            return []
        if index is None:
            return []
        folders = [out / name for name in index.folders]
    try:
        return [(folder, manifest_mod.load(folder)) for folder in folders]
    except ConvertError:
        return []


def _manifest_done(doc: dict[str, Any], out: Path, job: Job) -> bool:
    if doc.get("target", {}).get("request") != job.request() or doc.get("digest_algorithm") not in ALGORITHMS:
        return False
    files = doc.get("source", {}).get("files", [])
    if not files or not all(isinstance(f, dict) and "path" in f for f in files):
        return False
    root = Path(job.source).absolute()
    for f in files:
        path = Path(f["path"])
        if path != root and root not in path.parents:
            return False  # the output was made from another source
        if (
            not path.is_file()
            or path.stat().st_size != f.get("bytes")
            or file_digest(path, doc["digest_algorithm"]) != f.get("digest")
        ):
            return False
    return all((out / f["path"]).is_file() and (out / f["path"]).stat().st_size == f["bytes"] for f in doc.get("files", []))


# --- executors -----------------------------------------------------------------------------------

OnResult = Callable[[JobResult], None]


def run_local(jobs: list[Job], workers: int, on_result: OnResult, on_stop: Callable[[], None] | None = None) -> BatchSummary:
    """A process pool: whole files per worker; a worker imports a framework only when a job needs it.

    Ctrl-C stops the batch at once: `on_stop` is called (the CLI says so and ignores a second
    Ctrl-C from then on), the jobs not finished are cancelled (a running one is ended and removes its
    staging folder), and the summary says it was interrupted."""
    from concurrent.futures import ProcessPoolExecutor, as_completed

    summary = BatchSummary()
    pool: ProcessPoolExecutor | None = None
    try:
        if workers <= 1 or len(jobs) <= 1:
            for job in jobs:
                _collect(summary, run_job(job), on_result)
            return summary
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=_pool_context(), initializer=_worker_signals)
        futures = [pool.submit(_pool_job, job) for job in jobs]
        for future in as_completed(futures):
            _collect(summary, future.result(), on_result)
    except KeyboardInterrupt:
        if on_stop:
            on_stop()
        summary.interrupted = True
        if pool is not None:
            for process in list(pool._processes.values()):  # the executor has no public way to end running work
                process.terminate()
            pool.shutdown(wait=True, cancel_futures=True)
        return summary
    if pool is not None:
        pool.shutdown(wait=True)
    return summary


class _Ended(BaseException):
    """SIGTERM in a worker, raised so the running conversion removes its staging folder."""


_running = False  # in a worker: whether a job is running


def _pool_job(job: Job) -> JobResult:
    global _running
    _running = True
    try:
        return run_job(job)
    except _Ended:  # the job's staging folder is gone by now
        os._exit(EXIT_INTERRUPTED)
    finally:
        _running = False


def _end_job(signum: int, frame: Any) -> None:
    if not _running:
        os._exit(EXIT_INTERRUPTED)  # an idle worker has nothing to clean up
    # The executor terminates every worker again once one has exited: a second SIGTERM in the middle
    # of removing the staging folder would leave part of it behind.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise _Ended()


def _worker_signals() -> None:
    """Ctrl-C reaches the whole process group: only the main process decides what it means."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _end_job)


WORKER_IMPORTS = ("convert.batch", "convert.api", "exporters.registry", "exporters.pytorch.reader")  # what nearly every job needs


def _pool_context() -> Any:
    """fork (on Linux) while this process runs no other thread: workers start at once and inherit the imports.
    With another thread running (a progress display), forking could copy a lock that thread holds,
    so workers then come from a forkserver that has made the same imports."""
    import importlib
    import multiprocessing
    import threading

    if sys.platform == "linux" and threading.active_count() == 1:  # fork is unsafe on macOS
        for name in WORKER_IMPORTS:
            importlib.import_module(name)
        return multiprocessing.get_context("fork")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(WORKER_IMPORTS))
    return context


def run_ray(jobs: list[Job], address: str | None, on_result: OnResult, num_cpus: int | None = None) -> BatchSummary:
    """The same jobs as Ray tasks, on a cluster at `address` or a local Ray started here."""
    try:
        import ray
    except ImportError:
        raise UsageError(f"--executor ray needs Ray: {install_hint('ray')}") from None
    summary = BatchSummary()
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(
            address=address,
            num_cpus=num_cpus if address is None else None,
            include_dashboard=False,
            log_to_driver=False,
            ignore_reinit_error=True,
        )
    remote = ray.remote(num_cpus=1, max_retries=0)(run_job)
    try:
        pending = [remote.remote(job) for job in jobs]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            _collect(summary, ray.get(done[0]), on_result)
    finally:
        if started_here:
            ray.shutdown()
    return summary


def _collect(summary: BatchSummary, result: JobResult, on_result: OnResult) -> None:
    summary.results.append(result)
    summary.finished = time.perf_counter()
    on_result(result)
