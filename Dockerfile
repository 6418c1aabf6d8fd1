# Parley: one image for every role (ingress, worker, flower); the command picks the role.
# An exact tag, not a moving one: bump it on purpose (and rebuild) for Python's fixes.
FROM python:3.11.14-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Only what `pip install .` needs: never the work tree's .env (secrets) or caches.
COPY pyproject.toml README.md constraints.txt ./
COPY parley ./parley
COPY cache ./cache
COPY wire ./wire
COPY workers ./workers
COPY ingress ./ingress
# -c: the dependency versions the tests ran with and pip-audit checked (constraints.txt)
RUN pip install -c constraints.txt . \
    && useradd --create-home --uid 10001 --shell /usr/sbin/nologin parley \
    && mkdir /srv/app && chown parley /app /srv/app

USER parley

# Your app's folder: every command runs here, so `parley worker --app myapp:app` finds
# /srv/app/myapp.py. Mount your folder here (compose: PARLEY_APP_DIR) or build an image
# FROM this one that copies it in (app/Dockerfile).
WORKDIR /srv/app

EXPOSE 8000
CMD ["parley", "ingress", "--port", "8000"]
