# Parley: one image for every role (ingress, worker, flower); the command picks the role.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Only what `pip install .` needs: never the work tree's .env (secrets) or caches.
COPY pyproject.toml README.md ./
COPY parley ./parley
COPY cache ./cache
COPY wire ./wire
COPY workers ./workers
COPY ingress ./ingress
RUN pip install . \
    && useradd --create-home --uid 10001 --shell /usr/sbin/nologin parley \
    && chown parley /app

USER parley

EXPOSE 8000
CMD ["parley", "ingress", "--port", "8000"]
