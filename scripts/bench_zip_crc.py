"""What checking torch zip storages against their CRC-32 costs (issue 35 item 4).

The PyTorch reader reads every stored storage once at open to check its CRC-32. This measures, on one
`torch.save` checkpoint, the CPU time of that check beside one BLAKE3 pass over the same file (the
contract's floor is a copy plus three of those) and of opening the checkpoint as `convert` does.

    .venv/bin/python scripts/bench_zip_crc.py [--mib 512]
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(fn: object) -> tuple[float, float]:
    start_cpu, start_wall = cpu(), time.perf_counter()
    fn()  # type: ignore[operator]
    return cpu() - start_cpu, time.perf_counter() - start_wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=512, help="checkpoint size (MiB of float32 tensors)")
    args = parser.parse_args()
    import torch

    from convert.hashing import file_digest
    from convert.zip_members import check_stored_crc, member_offset, open_zip
    from exporters.registry import open_source

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.pt"
        per = 16 << 20
        torch.save({f"t{i}": torch.rand(per // 4) for i in range(max(1, (args.mib << 20) // per))}, path)
        file_digest(path, "blake3")  # warm the page cache: the timings are CPU, not the disk

        def crc_only() -> None:
            with open_zip(path) as zf:
                for info in zf.infolist():
                    if "/data/" in info.filename:
                        check_stored_crc(path, info, member_offset(path, info))

        def open_convert() -> None:
            open_source(path).close()

        rows = {
            "CRC-32 of every storage": timed(crc_only),
            "one BLAKE3 pass over the file": timed(lambda: file_digest(path, "blake3")),
            "open as convert does (CRC included)": timed(open_convert),
        }
        size = os.path.getsize(path)
        print(f"{size / 2**20:.0f} MiB torch.save checkpoint")
        for what, (cpu_s, wall_s) in rows.items():
            print(f"  {what:<40} cpu {cpu_s:6.3f} s  wall {wall_s:6.3f} s  ({size / 2**30 / max(cpu_s, 1e-9):.2f} GiB/s cpu)")


if __name__ == "__main__":
    main()
