#include "notifyd-notifications.h"

#include <assert.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "json-util.h"

#define EVENT_MAX_DEPTH 4

static const struct pg_migration migrations[] = {
        PG_MIGRATION(1, "processed messages and notifications",
                     "CREATE TABLE notify.processed_messages ("
                     "  message_id text PRIMARY KEY"
                     "    CHECK (length(message_id) BETWEEN 1 AND 255),"
                     "  processed_at timestamptz NOT NULL DEFAULT now()"
                     ");"
                     "CREATE TABLE notify.notifications ("
                     "  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
                     "  message_id text NOT NULL UNIQUE"
                     "    REFERENCES notify.processed_messages (message_id),"
                     "  payment_id bigint NOT NULL CHECK (payment_id > 0),"
                     "  user_id bigint NOT NULL CHECK (user_id > 0),"
                     "  amount_cents bigint NOT NULL CHECK (amount_cents > 0),"
                     "  status text NOT NULL,"
                     "  channel text NOT NULL,"
                     "  created_at timestamptz NOT NULL,"
                     "  notified_at timestamptz NOT NULL DEFAULT now(),"
                     "  trace_id text CHECK (trace_id ~ '^[0-9a-f]{32}$')"
                     ");"
                     "CREATE INDEX notifications_payment_id ON notify.notifications (payment_id)"),
};
const struct pg_schema notifyd_schema = PG_SCHEMA(NOTIFYD_SCHEMA, migrations);

static bool digits(const char *s, size_t n, int min, int max, int *ret)
{
        int v = 0;

        for (size_t i = 0; i < n; i++) {
                if (s[i] < '0' || s[i] > '9')
                        return false;
                v = v * 10 + (s[i] - '0');
        }
        if (v < min || v > max)
                return false;
        if (ret)
                *ret = v;
        return true;
}

static bool is_leap_year(int year)
{
        return year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
}

bool notifications_timestamp_is_valid(const char *s)
{
        static const int days_in_month[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
        int year, month, day;
        size_t i = 19;

        /* YYYY-MM-DDTHH:MM:SS */
        if (strlen(s) < 20 || s[4] != '-' || s[7] != '-' || (s[10] != 'T' && s[10] != 't') ||
            s[13] != ':' || s[16] != ':')
                return false;
        if (!digits(s, 4, 1, 9999, &year) || !digits(s + 5, 2, 1, 12, &month) ||
            !digits(s + 8, 2, 1, 31, &day) || !digits(s + 11, 2, 0, 23, NULL) ||
            !digits(s + 14, 2, 0, 59, NULL) || !digits(s + 17, 2, 0, 60, NULL))
                return false;
        /* PostgreSQL refuses 2026-02-31: poison now, not after the retries. */
        if (day > days_in_month[month - 1] + (month == 2 && is_leap_year(year)))
                return false;
        if (s[i] == '.') {
                size_t start = ++i;

                while (s[i] >= '0' && s[i] <= '9' && i - start < 9)
                        i++;
                if (i == start)
                        return false;
        }
        if (s[i] == 'Z' || s[i] == 'z')
                return s[i + 1] == '\0';
        if (s[i] != '+' && s[i] != '-')
                return false;
        return strlen(s + i) == 6 && s[i + 3] == ':' && digits(s + i + 1, 2, 0, 23, NULL) &&
               digits(s + i + 4, 2, 0, 59, NULL);
}

int notifications_parse_event(const void *body, size_t size, struct payment_event *ret)
{
        _cleanup_(json_object_putp) struct json_object *obj = NULL;
        struct payment_event e = {0};
        const char *code, *status, *created_at;
        int r;

        if (!body)
                return -EBADMSG;
        r = json_parse_object(body, size, EVENT_MAX_DEPTH, &obj, &code);
        if (r < 0)
                return r == -ENOMEM ? r : -EBADMSG;

        r = json_get_int64(obj, "payment_id", 1, INT64_MAX, &e.payment_id);
        if (r >= 0)
                r = json_get_int64(obj, "user_id", 1, INT64_MAX, &e.user_id);
        if (r >= 0)
                r = json_get_int64(obj, "amount_cents", 1, INT64_MAX, &e.amount_cents);
        if (r >= 0)
                r = json_get_string(obj, "status", 1, PAYMENT_STATUS_MAX_LENGTH, &status);
        if (r >= 0)
                r = json_get_string(obj, "created_at", 20, PAYMENT_CREATED_AT_MAX_LENGTH,
                                    &created_at);
        if (r == -ENOENT)
                return -EINVAL;
        if (r < 0)
                return r;
        if (!notifications_timestamp_is_valid(created_at))
                return -EINVAL;
        snprintf(e.status, sizeof(e.status), "%s", status);
        snprintf(e.created_at, sizeof(e.created_at), "%s", created_at);
        *ret = e;
        return 0;
}

int notifications_record(struct pg_pool *pool, const char *message_id,
                         const struct payment_event *e, const char *channel, const char *trace_id,
                         notifications_send_fn send, void *userdata, bool *ret_duplicate)
{
        _cleanup_(pg_pool_releasep) struct pg_conn *conn = NULL;
        _cleanup_(PQclearp) PGresult *claim = NULL;
        char payment_id[32], user_id[32], amount[32];
        int r;

        assert(pool);
        assert(message_id);
        assert(e);

        r = pg_pool_acquire(pool, &conn);
        if (r < 0)
                return r;
        r = pg_begin(conn);
        if (r < 0)
                return r;
        r = pg_exec(conn,
                    "INSERT INTO notify.processed_messages (message_id) VALUES ($1) "
                    "ON CONFLICT (message_id) DO NOTHING",
                    1, (const char *const[]){message_id}, &claim);
        if (r < 0)
                return r;
        if (strcmp(PQcmdTuples(claim), "0") == 0) {
                r = pg_commit(conn);
                if (r < 0)
                        return r;
                *ret_duplicate = true;
                return 0;
        }

        if (send) {
                r = send(e, userdata);
                if (r < 0)
                        return r; /* rolled back on release */
        }

        snprintf(payment_id, sizeof(payment_id), "%" PRId64, e->payment_id);
        snprintf(user_id, sizeof(user_id), "%" PRId64, e->user_id);
        snprintf(amount, sizeof(amount), "%" PRId64, e->amount_cents);
        r = pg_exec(conn,
                    "INSERT INTO notify.notifications (message_id, payment_id, user_id, "
                    "amount_cents, status, channel, created_at, trace_id) "
                    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                    8,
                    (const char *const[]){message_id, payment_id, user_id, amount, e->status,
                                          channel, e->created_at, trace_id},
                    NULL);
        if (r < 0)
                return r;
        r = pg_commit(conn);
        if (r < 0)
                return r;
        *ret_duplicate = false;
        return 0;
}
