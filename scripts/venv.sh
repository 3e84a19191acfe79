# Sourced by up.sh and test.sh: creates .venv and installs the project (with test extras) into it
# when pyproject.toml changed since the last install.
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=".venv/.dvic-installed"
want="$(cat pyproject.toml lib/python/pyproject.toml scripts/venv.sh | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    # "compat" editable installs are a plain path in a .pth file; the default ("lenient") imports
    # an import-hook module at every interpreter start, about 12 ms of every `dvic` command.
    # setuptools calls compat transitional: fall back to the default once it is gone.
    .venv/bin/python -m pip install --quiet -e '.[test,web]' -e lib/python \
        --config-settings editable_mode=compat 2>/dev/null \
        || .venv/bin/python -m pip install --quiet -e '.[test,web]' -e lib/python
    echo "$want" > "$stamp"
fi
