#!/usr/bin/env bash
# Everything the test suite needs on a new Debian/Ubuntu machine, then the suite: the README's
# test command, and what CI runs (.ci/run calls this script, so the two cannot drift apart).
#
#   scripts/test.sh                      set up, then run every test (python -m pytest -q)
#   scripts/test.sh -k demo -x           set up, then pytest with these arguments
#   PYTEST_ARGS="-k demo" scripts/test.sh   the same, arguments from the environment
#   scripts/test.sh --setup-only         set up, run nothing
#
# Idempotent: what is already there is left alone. Uses sudo only when not root (apt-get, and
# PostgreSQL's own admin commands). What it sets up:
#   - system packages: python3-venv, Debian's chromium (the web chat's browser tests drive
#     /usr/bin/chromium: Playwright's own download does not work everywhere), PostgreSQL,
#     netconfd + openssh-server (a real NETCONF device) and prometheus, for the NOC pack's tests;
#   - services: the PostgreSQL cluster, started when it does not answer on 127.0.0.1:5432; when
#     the tests' default server URL (postgres@127.0.0.1:5432/test, trust auth) is refused, a role
#     and database of their own (agentflow_test) and AGENTFLOW_TEST_PG pointing at them;
#   - .venv (kept if present) with both distributions: pip install -e ".[dev]" -e ./tools/noc.
set -euo pipefail
cd "$(dirname "$0")/.."

setup_only=0
args=()
for arg in "$@"; do
    if [ "$arg" = "--setup-only" ]; then setup_only=1; else args+=("$arg"); fi
done

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
say() { printf '[scripts/test.sh] %s\n' "$*" >&2; }

# -- system packages -------------------------------------------------------------------------
missing=()
python3 -c "import ensurepip, venv" 2>/dev/null || missing+=(python3-venv)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v pg_ctlcluster >/dev/null 2>&1 || missing+=(postgresql)
# The NOC pack's NETCONF tests: Debian's netconfd (yuma123) behind a private sshd on a loopback
# port; its KPI tests: Debian's prometheus scraping the RAN simulator's exporter.
command -v netconfd >/dev/null 2>&1 || missing+=(netconfd)
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
if [ "${#missing[@]}" -gt 0 ]; then
    say "installing ${missing[*]} (apt-get)"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! command -v prometheus >/dev/null 2>&1; then
    # Alone and without recommends: the package's recommends pull in exporters we do not want.
    say "installing prometheus (apt-get)"
    [ "${#missing[@]}" -gt 0 ] || $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

# -- PostgreSQL --------------------------------------------------------------------------------
# The PostgreSQL store's tests fail rather than skip under CI=true: the server must answer.
if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    version="$(ls /etc/postgresql 2>/dev/null | sort -V | tail -1 || true)"
    say "starting PostgreSQL $version"
    $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
fi
as_postgres() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else sudo -u postgres "$@"; fi; }
if [ -z "${AGENTFLOW_TEST_PG:-}" ] \
    && ! PGCONNECT_TIMEOUT=3 psql -w -q "postgresql://postgres@127.0.0.1:5432/test" -c "SELECT 1" >/dev/null 2>&1; then
    # A stock install asks TCP clients for a password: rather than change its pg_hba.conf, the
    # tests get a role of their own (it creates and drops a database per test).
    say "the default test server URL is refused: using role agentflow_test (AGENTFLOW_TEST_PG)"
    as_postgres psql -q -v ON_ERROR_STOP=1 <<'SQL' >/dev/null
SELECT 'CREATE ROLE agentflow_test LOGIN CREATEDB PASSWORD ''agentflow_test'''
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'agentflow_test') \gexec
SELECT 'CREATE DATABASE agentflow_test OWNER agentflow_test'
WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'agentflow_test') \gexec
SQL
    export AGENTFLOW_TEST_PG="postgresql://agentflow_test:agentflow_test@127.0.0.1:5432/agentflow_test"
    say "to run pytest yourself later: export AGENTFLOW_TEST_PG=$AGENTFLOW_TEST_PG"
fi

# -- Python ------------------------------------------------------------------------------------
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
    .venv/bin/pip install -q --upgrade pip
fi
. .venv/bin/activate
pip install -q -e ".[dev]" -e ./tools/noc

if [ "$setup_only" -eq 1 ]; then
    say "set up; run the tests with: scripts/test.sh"
    exit 0
fi
# PYTEST_ARGS is read with the shell's quoting, so PYTEST_ARGS="-k 'demo or readme'" works.
eval "extra=(${PYTEST_ARGS:-})"
exec python -m pytest -q "${extra[@]}" "${args[@]}"
