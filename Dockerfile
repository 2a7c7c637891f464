# FIDE (SHG / BF registration) for the Learn2Reg COMULISglobe task.
#
# Build:  docker build -t fide .
# Run:    docker run --rm --gpus all -v IN:/input:ro -v OUT:/output fide
#         (IN holds one *_dataset.json with its images; one disp_XXXX_XXXX.nii.gz per pair lands in OUT)
#
# The defaults are right for a normal `docker build` anywhere: the public Python base, and PyPI's
# torch==2.13.0, which carries its own CUDA libraries (`--gpus all` supplies the driver).
# test/container/run.sh builds the same file without a registry: BASE_IMAGE names a local Debian bookworm
# base, and PIP_CERT / PIP_FIND_LINKS name files bind-mounted into the build (`buildah bud -v`); they are
# used by the pip step only and nothing from them stays in the image.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE}
# -l: no lastlog/faillog entries sized by the high UID (hadolint DL3046).
RUN useradd -l -r -u 10001 -g users -d /nonexistent -s /usr/sbin/nologin fide

ARG PIP_CERT=""
ARG PIP_FIND_LINKS=""
COPY requirements.txt /tmp/requirements.txt
# One layer: the virtual environment with the pinned requirements, and no pip cache (--no-cache-dir).
# Empty build arguments must not reach pip as empty settings, hence the unsets.
RUN if [ -z "$PIP_CERT" ]; then unset PIP_CERT; fi \
 && if [ -z "$PIP_FIND_LINKS" ]; then unset PIP_FIND_LINKS; fi \
 && python3 -m venv /opt/venv \
 && PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=180 \
    /opt/venv/bin/pip install --no-cache-dir -r /tmp/requirements.txt \
 && rm -f /tmp/requirements.txt

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONPATH=/opt/fide \
    MPLBACKEND=Agg \
    MPLCONFIGDIR=/tmp/matplotlib \
    HOME=/tmp
WORKDIR /opt/fide
# The package, the evaluator, the weights and the entrypoint: .dockerignore admits nothing else into the context
# (an empty weights/ is not in a clone, which a per-folder COPY would fail on). weights/ stays beside fide/, where
# fide.features.encoders looks for the shipped checkpoint.
COPY . ./
USER 10001:100
ENTRYPOINT ["/opt/venv/bin/python", "/opt/fide/entrypoint.py"]
CMD ["--input", "/input", "--output", "/output"]
