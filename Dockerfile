# One image for every process of docker-compose.yml (web, worker, beat, flower).
#
# Stage 1 builds the wheel; stage 2 installs only that wheel. No source tree is left in
# the working folder: `celery -A ...` and `python -m ...` put it first on sys.path, where
# it would shadow what was installed.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY dispatch ./dispatch
COPY providers ./providers
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
COPY --from=build /wheels /wheels
# The dependencies at the versions the tests passed with (scripts/lock.py writes the file).
COPY constraints.txt /wheels/
# A home of its own: `dispatch up` records its embedded Redis in ~/.cache for the other
# commands (`docker exec ... dispatch providers add ...`) to find.
RUN pip install --no-cache-dir -c /wheels/constraints.txt /wheels/*.whl \
    && rm -rf /wheels \
    && useradd --system --create-home --home-dir /home/dispatch --shell /usr/sbin/nologin dispatch
WORKDIR /home/dispatch
# The example files, for `dispatch providers add templates/examples/...` in a container.
COPY templates ./templates
USER dispatch
EXPOSE 8000
CMD ["dispatch", "api", "--host", "0.0.0.0", "--port", "8000"]
