# Sourced by up.sh and test.sh: creates .venv and installs the project (with test extras) into it
# when pyproject.toml changed since the last install.
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=".venv/.dvic-installed"
want="$(cat pyproject.toml lib/python/pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e '.[test,web]' -e lib/python
    echo "$want" > "$stamp"
fi
