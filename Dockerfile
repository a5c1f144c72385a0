FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY dispatch ./dispatch
COPY providers ./providers
COPY templates ./templates
RUN pip install --no-cache-dir . && useradd --system dispatch
USER dispatch
EXPOSE 8000
CMD ["dispatch", "api", "--host", "0.0.0.0", "--port", "8000"]
