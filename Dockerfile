# The web and worker image (compose.yml). Same code, different command.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
RUN useradd --system --create-home --uid 10001 sophia

# Dependencies first so code changes don't reinstall them.
COPY pyproject.toml ./
RUN pip install .

COPY . .
# Build-time steps need no database or secret: settings fall back to the embedded default.
RUN python scripts/i18n.py compile \
    && python manage.py collectstatic --noinput \
    && mkdir -p var/metrics \
    && chown -R sophia:sophia var

USER sophia
EXPOSE 8000
CMD ["daphne", "-b", "0.0.0.0", "-p", "8000", "--proxy-headers", "sophia_web.asgi:application"]
