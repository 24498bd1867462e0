# Kiln's render worker (`kiln/render`) as a container image: Blender as a Python module (bpy),
# PyAV, fsspec/s3fs, with `kiln-render` as the entrypoint, so the job definition that runs on
# Kiln's local executor runs unchanged on the Docker executor and on AWS Batch.
#
# Built by docker/build-render-image.sh FROM a Debian base made without a registry (debootstrap +
# `docker import`); any Debian bookworm image (Python 3.11, which bpy 4.5 needs) works as BASE.
ARG BASE=kiln/debian-base:bookworm
FROM ${BASE}

ENV PATH=/opt/kiln/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The render stack first, pinned by the lock file (a cached layer while only Kiln's code changes),
# then Kiln itself, every dependency still constrained to requirements/lock.txt.
# docker/.build-ca.crt: the CA bundle the building host trusts (build-render-image.sh copies it),
# for networks whose HTTPS goes through a proxy with its own CA; used by pip only, then deleted.
COPY requirements/lock.txt /opt/kiln-src/requirements/lock.txt
COPY docker/.build-ca.crt /tmp/build-ca.crt
RUN python3 -m venv /opt/kiln \
 && if [ -s /tmp/build-ca.crt ]; then export PIP_CERT=/tmp/build-ca.crt; fi \
 && /opt/kiln/bin/pip install --no-cache-dir -c /opt/kiln-src/requirements/lock.txt \
      av bpy fsspec numpy s3fs zstandard
COPY pyproject.toml README.md /opt/kiln-src/
COPY kiln /opt/kiln-src/kiln
RUN if [ -s /tmp/build-ca.crt ]; then export PIP_CERT=/tmp/build-ca.crt; fi \
 && /opt/kiln/bin/pip install --no-cache-dir -c /opt/kiln-src/requirements/lock.txt "/opt/kiln-src[render]" \
 && rm /tmp/build-ca.crt \
 && /opt/kiln/bin/python -c "import bpy, av, fsspec, s3fs; print('bpy', bpy.app.version_string)"

WORKDIR /tmp
ENTRYPOINT ["kiln-render"]
