FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
# Hashed static files for production mode; the key only satisfies settings during the build.
RUN SECRET_KEY=collectstatic-only DEBUG=0 python manage.py collectstatic --noinput -v0
RUN useradd --system --uid 1000 cryptopay && chown -R cryptopay /app
USER cryptopay
EXPOSE 8000
# uvicorn with the body, header and timeout limits (cryptopay/server.py); WEB_CONCURRENCY workers
# (default: one per core).
CMD ["python", "manage.py", "serve", "--host", "0.0.0.0", "--port", "8000"]
