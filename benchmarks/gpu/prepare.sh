#!/usr/bin/env bash
# Prepare the GPU checks of docs/benchmarks.md#gpu for a lent GPU machine (python3 3.12 with torch, no network):
# .gpu/ (git-ignored) gets the py3.12 wheels the pipeline needs beyond torch, a SimpleITK stand-in (nnU-Net's 2D
# path only imports it; the real wheel is too large to carry), the scripts, and a small copy of a finished
# oasis-manual study (its exported set and label maps, three held-out heads with their manual labels).
#   bash benchmarks/gpu/prepare.sh /tmp/bench-oasis      # a study folder left by `bench real --workdir`
# then, through the device tool: run(command="bash .gpu/run.sh", carry=[".gpu"], timeout_s=590)
set -euo pipefail
cd "$(dirname "$0")/../.."
study=${1:?a finished study folder}
grep -qx "/.gpu/" .git/info/exclude || echo "/.gpu/" >> .git/info/exclude
mkdir -p .gpu/whl
wheels=(nnunetv2==2.8.1 acvl_utils==0.2.6 batchgenerators==0.25.5 batchgeneratorsv2==0.3.6 blosc2==4.14.1
        connected-components-3d==4.1.1 dynamic_network_architectures==0.4.4 lockfile==0.12.2 luigi==3.8.1
        ndindex==1.10.1 nibabel==5.4.2 numexpr==2.14.2 pydantic==2.14.4 pydantic_core==2.50.5 python-daemon==3.1.2
        tenacity==9.2.1 tornado==6.6.1 typing-inspection==0.4.5 annotated-types==0.8.0 yacs==0.1.8 graphviz==0.21)
platforms=()
for tag in manylinux_2_34 manylinux_2_31 manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
  platforms+=(--platform "${tag}_x86_64")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" \
  -d .gpu/whl "${wheels[@]}"
cp -r benchmarks/gpu/stub benchmarks/gpu/run.sh benchmarks/gpu/one_tile.py .gpu/
.venv/bin/python benchmarks/gpu/make_study.py "$study" .gpu/study
du -sh .gpu
