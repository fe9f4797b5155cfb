#!/bin/sh
# vigil-setup against a PostgreSQL of its own (skips, 77, when none is
# installed or not root): a role's password never reaches the server in
# clear, so no server log shows it, even with log_statement = 'all' or when
# the statement fails; the role still logs in with it over scram-sha-256.
: "${top_srcdir:=$(dirname "$0")/../..}"
[ "$(id -u)" -eq 0 ] || { echo "SKIP: vigil-setup runs as root"; exit 77; }
exec bash "$top_srcdir/tests/with-servers.sh" postgres -- sh -c '
set -eu
setup=$1
fail() { echo "FAIL: $*"; exit 1; }
log=$VIGIL_DEV_DIR/postgres.log
export PGHOST=$VIGIL_DEV_DIR/postgres/run PGPORT=$VIGIL_DEV_PG_PORT
admin() { runuser -u postgres -- psql -X -A -t -q -v ON_ERROR_STOP=1 -d postgres "$@"; }
admin -c "ALTER SYSTEM SET log_statement = '\''all'\''" -c "SELECT pg_reload_conf()" >/dev/null

creds=$(mktemp -d)
trap "rm -rf \"$creds\"" EXIT
export VIGIL_CREDENTIALS_DIR=$creds VIGIL_STATE_DIR=$creds/state VIGIL_SETUP_PG_WAIT=5
pw=$(od -An -tx1 -N24 /dev/urandom | tr -d " \n")
printf "%s" "$pw" >"$creds/postgres-password-auth"
chmod 600 "$creds/postgres-password-auth"
"$setup" database authd

# The server logged every statement, never the password...
grep -q "$pw" "$log" && fail "the password of vigil_auth is in the server log"
# ...(and it did log them: ALTER ROLE with the verifier).
grep -q "ALTER ROLE vigil_auth LOGIN PASSWORD .SCRAM-SHA-256" "$log" ||
	fail "no ALTER ROLE with a SCRAM verifier in the server log"
stored=$(admin -c "SELECT rolpassword FROM pg_authid WHERE rolname = '\''vigil_auth'\''")
case $stored in "SCRAM-SHA-256\$4096:"*) ;; *) fail "stored password is not a SCRAM verifier: $stored" ;; esac
PGPASSWORD=$pw psql -X -A -t -q -h 127.0.0.1 -p "$PGPORT" -U vigil_auth -d vigil -c "SELECT 1" |
	grep -qx 1 || fail "vigil_auth cannot log in with its password over scram-sha-256"
PGPASSWORD=wrong$pw psql -X -A -t -q -h 127.0.0.1 -p "$PGPORT" -U vigil_auth -d vigil -c "SELECT 1" \
	>/dev/null 2>&1 && fail "vigil_auth logs in with a wrong password"

# A second run with a new password (a rotated credential) replaces it.
pw2=$(od -An -tx1 -N24 /dev/urandom | tr -d " \n")
printf "%s" "$pw2" >"$creds/postgres-password-auth"
"$setup" database authd
grep -q "$pw2" "$log" && fail "the rotated password is in the server log"
PGPASSWORD=$pw2 psql -X -A -t -q -h 127.0.0.1 -p "$PGPORT" -U vigil_auth -d vigil -c "SELECT 1" |
	grep -qx 1 || fail "vigil_auth cannot log in with its rotated password"
echo "PASS: no password in the server log; vigil_auth logs in with SCRAM"
' sh "$top_srcdir/units/vigil-setup"
