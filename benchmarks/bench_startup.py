"""Start-up cost of a whole ``medvit predict`` process against ``python -c 'import monai'`` in the same
environment (MONAI's import is most of any medical-imaging tool's start-up).

Trains the quick start's smoke run (``medvit run quickstart --smoke``: a real engine-written 3D package),
writes a small CT-like NIfTI volume, then runs, interleaved, ``import monai`` and
``medvit predict -m PKG -i ct.nii.gz -o OUT`` as separate processes and prints the minimum wall time of
each and their ratio. Run it with the interpreter of the environment to measure (``make quickstart``'s has no
test-only packages):

    .venv/bin/python benchmarks/bench_startup.py --repeats 5
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from medvit.engine import run_pipeline


def _timed(cmd: list[str], cwd: Path) -> float:
    t = time.perf_counter()
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {out.stderr[-2000:]}")
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="medvit-startup-"))
    try:
        smoke = ["tracking.enabled=false", "trainer.progress=none", f"output.dir={work / 'runs'}"]
        package = run_pipeline("quickstart", smoke, smoke=True, echo=lambda _: None).package
        rng = np.random.default_rng(0)
        ct = rng.normal(40, 20, (64, 64, 48)).astype(np.int16)
        nib.save(nib.Nifti1Image(ct, np.diag([1.5, 1.5, 2.0, 1.0])), work / "ct.nii.gz")
        medvit = str(Path(sys.executable).parent / "medvit")
        monai_s, predict_s = [], []
        for i in range(args.repeats):
            monai_s.append(_timed([sys.executable, "-c", "import monai"], work))
            out = work / f"out{i}"
            predict_s.append(
                _timed([medvit, "predict", "-m", str(package), "-i", "ct.nii.gz", "-o", str(out)], work)
            )
        a, b = min(monai_s), min(predict_s)
        print(f"python -c 'import monai'        {a:6.2f} s  (min of {args.repeats})")
        print(f"medvit predict (small CT, 3D)    {b:6.2f} s  (min of {args.repeats})")
        print(f"ratio predict / import monai     {b / a:6.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
