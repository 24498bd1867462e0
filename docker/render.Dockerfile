# Kiln's render worker (`kiln/render`) as a container image: Blender as a Python module (bpy),
# PyAV, fsspec/s3fs, with `kiln-render` as the entrypoint, so the job definition that runs on
# Kiln's local executor runs unchanged on the Docker executor and on AWS Batch.
#
# Built by docker/build-render-image.sh FROM two Debian bookworm bases made without a registry
# (docker/debian-rootfs.sh: debootstrap + `docker import`): BUILDER_BASE has pip, RUNTIME_BASE only
# what a render and a stitch load. The packages are installed in the `deps` stage and copied into
# the runtime stage, so pip, its wheels, the build's CA bundle and every download stay behind.
ARG BUILDER_BASE=kiln/debian-builder:bookworm
ARG RUNTIME_BASE=kiln/debian-runtime:bookworm

# The render stack, pinned by the lock file: a cached stage while only Kiln's code changes.
# pip runs from its own venv (/opt/pip) and installs into /opt/kiln (`--python`), which therefore
# never holds pip or setuptools. Only what `kiln-render` imports is installed: not Kiln's server
# dependencies (SQLAlchemy, uvicorn, ...), so the image has `kiln-render` and no `kiln` command.
# Removed after the install: Cython (a dependency bpy declares but never imports), zstandard's
# second (cffi) backend, numpy's tests, headers and build helpers. bpy stays whole.
# docker/.build-ca.crt: the CA bundle the building host trusts (build-render-image.sh copies it),
# for networks whose HTTPS goes through a proxy with its own CA; used by pip in this stage only.
FROM ${BUILDER_BASE} AS deps
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
COPY requirements/lock.txt /src/requirements/lock.txt
COPY docker/.build-ca.crt /tmp/build-ca.crt
RUN if [ -s /tmp/build-ca.crt ]; then export PIP_CERT=/tmp/build-ca.crt; fi \
 && python3 -m venv /opt/pip \
 && python3 -m venv --without-pip /opt/kiln \
 && /opt/pip/bin/pip --python /opt/kiln/bin/python install --quiet -c /src/requirements/lock.txt \
      av blender-asset-tracer bpy botocore fsspec numpy s3fs zstandard \
 && site=/opt/kiln/lib/python3.11/site-packages \
 && /opt/pip/bin/pip --python /opt/kiln/bin/python uninstall --quiet --yes Cython \
 && rm -f $site/zstandard/_cffi.*.so \
 && rm -rf $site/numpy/*/tests $site/numpy/tests $site/numpy/core/include $site/numpy/distutils \
           $site/numpy/f2py $site/numpy/_pyinstaller /opt/kiln/bin/f2py \
 && /opt/kiln/bin/python -c "import bpy, av, fsspec, s3fs, numpy, zstandard; print('bpy', bpy.app.version_string)"

# Kiln itself (its render worker and the modules that imports), built into /stage.
FROM deps AS kiln
COPY pyproject.toml setup.py README.md /src/
COPY kiln /src/kiln
RUN if [ -s /tmp/build-ca.crt ]; then export PIP_CERT=/tmp/build-ca.crt; fi \
 && /opt/pip/bin/pip --python /opt/kiln/bin/python install --quiet --no-deps --root /stage /src \
 && rm /stage/opt/kiln/bin/kiln \
 && PYTHONPATH=/stage/opt/kiln/lib/python3.11/site-packages /opt/kiln/bin/python -c "import kiln.render.cli"

FROM ${RUNTIME_BASE}
ENV PATH=/opt/kiln/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1
# The user the worker runs as unless the job definition's `user` says otherwise (uid/gid 1000).
# HOME is where Kiln caches scene packs and Blender keeps its settings.
RUN groupadd --gid 1000 kiln && useradd --uid 1000 --gid kiln --create-home --shell /bin/sh kiln
COPY --from=deps /opt/kiln /opt/kiln
COPY --from=kiln /stage/ /
USER 1000:1000
WORKDIR /home/kiln
ENTRYPOINT ["kiln-render"]
